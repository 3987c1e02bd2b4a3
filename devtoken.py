"""The development token issuer: try the API without a Better Auth server.

    uv run python devtoken.py alice --role admin

creates a local Ed25519 key once (DEV_KEY_FILE, git-ignored) and prints a token signed
with it. The server trusts that key only when started with DEV_AUTH=true (main.py imports
this module for the key), but this module imports no TaskFlow module: it finds the key file,
issuer and audience as `config.Settings` does, from the environment, else the `.env` file,
else the same defaults (tests/test_client_devtoken.py holds the two equal).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from dotenv import dotenv_values

# config.Settings' defaults and env file: the server reads the same variables.
DEFAULT_DEV_KEY_FILE = ".taskflow-dev-key.pem"
DEFAULT_AUTH_SERVER_URL = "http://localhost:3001"
ENV_FILE = ".env"


@dataclass(frozen=True)
class DevSettings:
    """Where the development key is, and the issuer and audience the server expects in a token."""

    key_file: str
    issuer: str
    audience: str


def load_dev_settings(environ: Mapping[str, str] | None = None, env_file: str | Path | None = ENV_FILE) -> DevSettings:
    """DEV_KEY_FILE, JWT_ISSUER and JWT_AUDIENCE read as the server reads them: the environment first
    (names in any case), then `env_file`, where an empty value means unset; the issuer and audience
    default to AUTH_SERVER_URL, without its trailing slash."""
    from_file = dotenv_values(env_file) if env_file is not None and Path(env_file).is_file() else {}
    from_environment = os.environ if environ is None else environ
    # The environment wins over the file; an empty value is no value (the server's env_ignore_empty).
    variables = {
        name.lower(): value for source in (from_file, from_environment) for name, value in source.items() if value
    }
    auth_server_url = variables.get("auth_server_url", DEFAULT_AUTH_SERVER_URL).rstrip("/")
    return DevSettings(
        key_file=variables.get("dev_key_file", DEFAULT_DEV_KEY_FILE),
        issuer=variables.get("jwt_issuer", auth_server_url),
        audience=variables.get("jwt_audience", auth_server_url),
    )


def load_or_create_key(path: str | Path) -> Ed25519PrivateKey:
    path = Path(path)
    if not path.exists():
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        # Exclusive create, readable by its owner only; a concurrent creator wins and we read its key.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as file:
                file.write(pem)
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise SystemExit(f"taskflow: {path} does not hold an Ed25519 private key")
    return key


def key_id(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "taskflow-dev-" + base64.urlsafe_b64encode(hashlib.sha256(raw).digest()[:12]).decode().rstrip("=")


def public_jwk(key: Ed25519PrivateKey) -> jwt.PyJWK:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    return jwt.PyJWK({"kty": "OKP", "crv": "Ed25519", "x": x, "alg": "EdDSA", "kid": key_id(key)})


def issue_token(
    key: Ed25519PrivateKey,
    *,
    subject: str,
    issuer: str,
    audience: str,
    role: str = "user",
    name: str | None = None,
    email: str | None = None,
    ttl: int = 3600,
) -> str:
    now = int(time.time())
    claims = {
        "sub": subject,
        "id": subject,
        "name": name or subject,
        "email": email or f"{subject.strip('@')}@example.test",
        "role": role,
        "iat": now,
        "exp": now + ttl,
        "iss": issuer,
        "aud": audience,
    }
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": key_id(key)})


def main(argv: list[str] | None = None) -> None:
    """Print a development token for the subject given on the command line."""
    parser = argparse.ArgumentParser(description="Print a development token (trusted only with DEV_AUTH=true).")
    parser.add_argument("subject", help="the user or agent id, e.g. alice or @claude-code")
    parser.add_argument("--role", default="user", choices=["user", "admin"])
    parser.add_argument("--name", help="display name in the token (default: the subject)")
    parser.add_argument("--email", help="email in the token (default: SUBJECT@example.test)")
    parser.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    args = parser.parse_args(argv)
    if args.ttl < 1:
        parser.error("--ttl must be at least 1 second")
    settings = load_dev_settings()
    key = load_or_create_key(settings.key_file)
    print(
        issue_token(
            key,
            subject=args.subject,
            issuer=settings.issuer,
            audience=settings.audience,
            role=args.role,
            name=args.name,
            email=args.email,
            ttl=args.ttl,
        )
    )


if __name__ == "__main__":
    main()
