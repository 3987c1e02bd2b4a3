"""The development token issuer: try the API without a Better Auth server.

    uv run python devtoken.py alice --role admin

creates a local Ed25519 key once (DEV_KEY_FILE, git-ignored) and prints a token signed
with it. The server trusts that key only when started with DEV_AUTH=true.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


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
    from config import load_settings

    parser = argparse.ArgumentParser(description="Print a development token (trusted only with DEV_AUTH=true).")
    parser.add_argument("subject", help="the user or agent id, e.g. alice or @claude-code")
    parser.add_argument("--role", default="user", choices=["user", "admin"])
    parser.add_argument("--name")
    parser.add_argument("--email")
    parser.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    args = parser.parse_args(argv)
    settings = load_settings()
    key = load_or_create_key(settings.dev_key_file)
    print(
        issue_token(
            key,
            subject=args.subject,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            role=args.role,
            name=args.name,
            email=args.email,
            ttl=args.ttl,
        )
    )


if __name__ == "__main__":
    main()
