"""Authentication for real: real keys, a real JWKS over HTTP, real signed tokens.

What a Better Auth server issues is accepted (EdDSA, ES256, RS256); everything weaker is a
401 with `WWW-Authenticate: Bearer`; keys come only from JWKS_URL, are fetched once and
shared, follow rotation, and survive the JWKS going down. `JWKSVerifier` is also tested on
its own, with a fake clock, where timing rules are clearer without the app around it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2
import jwt
import pytest
from conftest import AuthHeaders, JWKSServer, SigningKey, TokenFactory, serving_http
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlmodel import Session, select
from support import app_of, bearer

import devtoken
from auth import MAX_TOKEN_LENGTH, InvalidToken, JWKSVerifier, KeySetUnavailable, Principal
from config import Settings
from main import create_app
from models import AuditLog, Task, Worker

KEY_NAMES = ["EdDSA", "ES256", "RS256"]


# ---------------------------------------------------------------- local fixtures and helpers


@dataclass
class ScriptedServer:
    """An HTTP server answering every GET with `body`: a JWKS that is slow, or not JSON, or an attacker's."""

    body: bytes = b""
    status: int = 200
    delay: float = 0.0
    requests: int = 0
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def serve_jwks(self, jwks_keys: list[dict[str, Any]]) -> None:
        self.body = json.dumps({"keys": jwks_keys}).encode()


@pytest.fixture(scope="session")
def scripted_server() -> Iterator[ScriptedServer]:
    state = ScriptedServer()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with state.lock:
                state.requests += 1
            if state.delay:
                time.sleep(state.delay)
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(state.body)))
            self.end_headers()
            self.wfile.write(state.body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with serving_http(Handler) as url:
        state.url = f"{url}/keys"
        yield state


@pytest.fixture
def scripted(scripted_server: ScriptedServer) -> ScriptedServer:
    scripted_server.body = b""
    scripted_server.status = 200
    scripted_server.delay = 0.0
    scripted_server.requests = 0
    return scripted_server


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    """The app, answering an unexpected exception with the 500 a real client gets instead of raising it in the test."""
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def app_with(settings: Settings, **changes: Any) -> TestClient:
    """A TestClient (use it in `with`) of an app built from settings with `changes`."""
    return TestClient(create_app(settings.model_copy(update=changes)), raise_server_exceptions=False)


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_verifier(jwks: JWKSServer, clock: FakeClock) -> Iterator[Callable[..., JWKSVerifier]]:
    """`make_verifier(cache_ttl=..., jwks_url=...)`: a JWKSVerifier on the fake clock, closed after the test."""
    made: list[JWKSVerifier] = []

    def factory(**options: Any) -> JWKSVerifier:
        options.setdefault("clock", clock)
        verifier = JWKSVerifier(
            options.pop("jwks_url", jwks.jwks_url), issuer=jwks.base_url, audience=jwks.base_url, **options
        )
        made.append(verifier)
        return verifier

    yield factory
    for verifier in made:
        verifier.close()


def assert_unauthorized(response: httpx2.Response, token: str | None = None) -> None:
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["code"] == "unauthorized"
    assert body["status_code"] == 401
    assert isinstance(body["error"], str)
    assert body["error"]
    assert response.headers["WWW-Authenticate"] == "Bearer"
    if token and len(token) >= 16:
        assert token not in response.text


def assert_unavailable(response: httpx2.Response, token: str | None = None) -> None:
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["code"] == "service_unavailable"
    assert body["status_code"] == 503
    if token:
        assert token not in response.text


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def segment(value: Any) -> str:
    return b64url(json.dumps(value).encode())


def claims_of(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def sign(key: SigningKey, claims: dict[str, Any], **header: Any) -> str:
    """A token with exactly these claims and header fields, signed by `key` (no `typ`, like Better Auth)."""
    headers = {name: value for name, value in {"kid": key.kid, **header}.items() if value is not None}
    headers["typ"] = None  # None makes PyJWT leave "typ" out
    return jwt.encode(claims, key.private, algorithm=key.algorithm, headers=headers)


def new_private_key(algorithm: str) -> Any:
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def whoami(client: TestClient, headers: dict[str, str], sub: str) -> httpx2.Response:
    """An authenticated request whose answer shows who the app thinks the caller is."""
    return client.get(f"/api/workers/{sub}", headers=headers)


# ---------------------------------------------------------------- accepted tokens


@pytest.mark.parametrize("key", KEY_NAMES)
def test_better_auth_shaped_token_is_accepted(
    api: TestClient, make_token: TokenFactory, keys: dict[str, SigningKey], key: str
) -> None:
    sub = "4RzGLhtyYbTth5nsx5ulA8L3agUjpkSF"  # Better Auth ids: 32 alphanumerics
    token = make_token(sub, key=key, name="Ada Lovelace", image="https://example.com/ada.png")
    assert jwt.get_unverified_header(token) == {"alg": keys[key].algorithm, "kid": keys[key].kid}
    claims = claims_of(token)
    assert claims["exp"] - claims["iat"] == 900
    assert {"name", "email", "emailVerified", "createdAt", "updatedAt", "id", "sub", "iss", "aud"} <= claims.keys()

    response = whoami(api, bearer(token), sub)

    assert response.status_code == 200, response.text
    assert response.json()["id"] == sub
    assert response.json()["type"] == "human"
    assert response.json()["name"] == "Ada Lovelace"
    assert token not in response.text


@pytest.mark.parametrize("key", KEY_NAMES)
def test_admin_role_claim_lets_a_user_see_another_users_projectless_task(
    api: TestClient, auth: AuthHeaders, key: str
) -> None:
    created = api.post("/api/tasks", json={"title": "Alice's own"}, headers=auth("alice"))
    assert created.status_code == 201, created.text
    task_id = created.json()["id"]

    as_admin = api.get(f"/api/tasks/{task_id}", headers=auth("bob", role="admin", key=key))

    assert as_admin.status_code == 200, as_admin.text
    assert as_admin.json()["title"] == "Alice's own"


@pytest.mark.parametrize("role", [None, "user", "ADMIN", ""])
def test_without_the_admin_role_another_users_projectless_task_is_not_found(
    api: TestClient, auth: AuthHeaders, role: str | None
) -> None:
    created = api.post("/api/tasks", json={"title": "Alice's own"}, headers=auth("alice"))
    assert created.status_code == 201, created.text

    response = api.get(f"/api/tasks/{created.json()['id']}", headers=auth("bob", role=role))

    assert response.status_code == 404, response.text
    assert response.json()["code"] == "not_found"


def test_non_string_role_claim_means_user(api: TestClient, make_token: TokenFactory) -> None:
    created = api.post("/api/tasks", json={"title": "Alice's own"}, headers=bearer(make_token("alice")))
    assert created.status_code == 201, created.text

    response = api.get(f"/api/tasks/{created.json()['id']}", headers=bearer(make_token("bob", role=["admin"])))

    assert response.status_code == 404, response.text


def test_verifier_maps_better_auth_claims_to_a_principal(
    make_verifier: Callable[..., JWKSVerifier], make_token: TokenFactory
) -> None:
    verifier = make_verifier()

    assert verifier.verify(make_token("alice")) == Principal(
        id="alice", email="alice@example.com", name="Alice", role="user"
    )
    assert verifier.verify(make_token("bob", role="admin", key="RS256")).is_admin


def test_token_expired_within_the_leeway_is_accepted(api: TestClient, make_token: TokenFactory) -> None:
    now = int(time.time())
    token = make_token("alice", iat=now - 902, exp=now - 2)

    assert whoami(api, bearer(token), "alice").status_code == 200


def test_token_just_under_the_size_limit_is_accepted(api: TestClient, make_token: TokenFactory) -> None:
    token = make_token("alice", padding="x" * 10_000)
    assert len(token) < MAX_TOKEN_LENGTH

    assert whoami(api, bearer(token), "alice").status_code == 200


@pytest.mark.parametrize("sub", ["a" * 128, "@claude-code", "user:42"])
def test_subject_of_up_to_128_printable_characters_is_accepted(
    api: TestClient, make_token: TokenFactory, sub: str
) -> None:
    response = whoami(api, bearer(make_token(sub)), sub)

    assert response.status_code == 200, response.text
    assert response.json()["id"] == sub


# ---------------------------------------------------------------- 401: no usable credentials


def test_missing_authorization_header_returns_401(api: TestClient) -> None:
    assert_unauthorized(api.get("/api/tasks"))


@pytest.mark.parametrize(
    "authorization",
    ["Basic YWxpY2U6c2VjcmV0", "Bearer", "Bearer ", "Token abc.def.ghi", "bearer-ish abc"],
)
def test_authorization_header_without_a_bearer_token_returns_401(api: TestClient, authorization: str) -> None:
    assert_unauthorized(api.get("/api/tasks", headers={"Authorization": authorization}))


def test_basic_scheme_carrying_a_valid_jwt_returns_401(api: TestClient, make_token: TokenFactory) -> None:
    token = make_token("alice")

    assert_unauthorized(api.get("/api/tasks", headers={"Authorization": f"Basic {token}"}), token)


@pytest.mark.parametrize(
    "token",
    [
        "not-a-jwt-at-all-just-garbage",
        "aaaaaaaaaaaa.bbbbbbbbbbbbbb.cccccccccccc",
        "..",
        "e30.e30.",  # {} . {} . no signature
        segment({"alg": "EdDSA", "kid": "ed25519-key-1"}) + ".!!!not-base64!!!.sig",
        segment({"alg": "EdDSA", "kid": "ed25519-key-1"}) + "." + b64url(b"not json") + ".c2ln",
        b64url(b"[1, 2, 3]") + ".e30.c2ln",
    ],
)
def test_garbage_token_returns_401(api: TestClient, token: str) -> None:
    assert_unauthorized(api.get("/api/tasks", headers=bearer(token)), token)


@pytest.mark.parametrize("alg", [["EdDSA"], {"name": "EdDSA"}, None, 256])
def test_token_with_a_non_string_alg_header_returns_401(api: TestClient, make_token: TokenFactory, alg: Any) -> None:
    payload = segment(claims_of(make_token("mallory")))
    token = f"{segment({'alg': alg, 'kid': 'ed25519-key-1'})}.{payload}.{b64url(b'x' * 64)}"

    assert_unauthorized(api.get("/api/tasks", headers=bearer(token)), token)


@pytest.mark.parametrize("kid", [123, ["ed25519-key-1"], {"id": "ed25519-key-1"}])
def test_token_with_a_non_string_kid_returns_401(api: TestClient, make_token: TokenFactory, kid: Any) -> None:
    payload = segment(claims_of(make_token("mallory")))
    token = f"{segment({'alg': 'EdDSA', 'kid': kid})}.{payload}.{b64url(b'x' * 64)}"

    assert_unauthorized(api.get("/api/tasks", headers=bearer(token)), token)


# ---------------------------------------------------------------- 401: algorithms


@pytest.mark.parametrize(("key", "alg"), [*[(key, "none") for key in KEY_NAMES], ("EdDSA", "None"), ("ES256", "NONE")])
def test_unsigned_alg_none_token_returns_401(
    api: TestClient, make_token: TokenFactory, keys: dict[str, SigningKey], key: str, alg: str
) -> None:
    claims = claims_of(make_token("mallory", role="admin", key=key))
    token = f"{segment({'alg': alg, 'kid': keys[key].kid})}.{segment(claims)}."

    assert_unauthorized(api.get("/api/tasks", headers=bearer(token)), token)


@pytest.mark.parametrize(
    ("key", "hs"), [*[(key, "HS256") for key in KEY_NAMES], ("ES256", "HS384"), ("RS256", "HS512")]
)
def test_hmac_token_signed_with_the_public_key_as_secret_returns_401(
    api: TestClient, make_token: TokenFactory, keys: dict[str, SigningKey], key: str, hs: str
) -> None:
    # Algorithm confusion: the public key is public, so an HMAC over it proves nothing.
    public_pem = (
        keys[key]
        .private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    claims = claims_of(make_token("mallory", role="admin", key=key))
    signing_input = f"{segment({'alg': hs, 'kid': keys[key].kid})}.{segment(claims)}"
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[hs]
    token = f"{signing_input}.{b64url(hmac.new(public_pem, signing_input.encode(), digest).digest())}"

    assert_unauthorized(api.get("/api/tasks", headers=bearer(token)), token)


@pytest.mark.parametrize(
    ("kid_of", "signer", "algorithm"),
    [
        ("RS256", "RS256", "PS256"),  # the right RSA key, but RSA-PSS instead of the key's RS256
        ("RS256", "RS256", "RS512"),  # the right RSA key, another hash
        ("EdDSA", "ES256", "ES256"),
        ("ES256", "RS256", "RS256"),
        ("RS256", "EdDSA", "EdDSA"),
    ],
)
def test_alg_other_than_the_keys_alg_returns_401(
    api: TestClient,
    make_token: TokenFactory,
    keys: dict[str, SigningKey],
    kid_of: str,
    signer: str,
    algorithm: str,
) -> None:
    mismatched = SigningKey(keys[kid_of].kid, algorithm, keys[signer].private)
    token = make_token("mallory", key=mismatched)
    assert jwt.get_unverified_header(token) == {"alg": algorithm, "kid": keys[kid_of].kid}

    assert_unauthorized(api.get("/api/tasks", headers=bearer(token)), token)


# ---------------------------------------------------------------- 401: kid and keys


@pytest.mark.parametrize("key", KEY_NAMES)
def test_token_without_kid_returns_401_when_the_jwks_has_several_keys(
    api: TestClient, make_token: TokenFactory, jwks: JWKSServer, key: str
) -> None:
    assert len(jwks.keys) == 3
    token = make_token("alice", key=key, headers={"kid": None})
    assert "kid" not in jwt.get_unverified_header(token)

    assert_unauthorized(api.get("/api/tasks", headers=bearer(token)), token)


@pytest.mark.parametrize("key", KEY_NAMES)
def test_token_without_kid_is_accepted_when_the_jwks_has_exactly_one_key(
    api: TestClient, make_token: TokenFactory, jwks: JWKSServer, keys: dict[str, SigningKey], key: str
) -> None:
    jwks.keys = [keys[key].public_jwk()]

    response = whoami(api, bearer(make_token("alice", key=key, headers={"kid": None})), "alice")

    assert response.status_code == 200, response.text


def test_token_without_kid_signed_by_another_key_returns_401_when_the_jwks_has_one_key(
    api: TestClient, make_token: TokenFactory, jwks: JWKSServer, keys: dict[str, SigningKey]
) -> None:
    jwks.keys = [keys["EdDSA"].public_jwk()]
    forged = SigningKey("unused", "EdDSA", ed25519.Ed25519PrivateKey.generate())
    token = make_token("mallory", key=forged, headers={"kid": None})

    assert_unauthorized(api.get("/api/tasks", headers=bearer(token)), token)


@pytest.mark.parametrize("key", KEY_NAMES)
def test_token_signed_by_a_key_not_in_the_jwks_under_a_known_kid_returns_401(
    api: TestClient, make_token: TokenFactory, keys: dict[str, SigningKey], key: str
) -> None:
    forged = SigningKey(keys[key].kid, keys[key].algorithm, new_private_key(key))
    token = make_token("mallory", role="admin", key=forged)

    assert_unauthorized(api.get("/api/tasks", headers=bearer(token)), token)


@pytest.mark.parametrize("key", KEY_NAMES)
def test_token_with_a_tampered_payload_returns_401(api: TestClient, make_token: TokenFactory, key: str) -> None:
    header, _payload, signature = make_token("mallory", key=key).split(".")
    token = f"{header}.{segment(claims_of(make_token('mallory', role='admin')))}.{signature}"

    assert_unauthorized(api.get("/api/tasks", headers=bearer(token)), token)


def test_token_with_an_unknown_kid_returns_401_after_one_refetch(
    api: TestClient, make_token: TokenFactory, jwks: JWKSServer
) -> None:
    assert whoami(api, bearer(make_token("alice")), "alice").status_code == 200
    assert jwks.requests == 1
    unknown = make_token("mallory", headers={"kid": "no-such-key"})

    assert_unauthorized(api.get("/api/tasks", headers=bearer(unknown)), unknown)
    assert jwks.requests == 2
    # Made-up kids do not turn into a flood of requests to the auth server.
    for attempt in range(5):
        another = make_token("mallory", headers={"kid": f"made-up-{attempt}"})
        assert_unauthorized(api.get("/api/tasks", headers=bearer(another)), another)
    assert jwks.requests == 2


def test_token_with_an_unknown_kid_as_the_first_request_returns_401(
    api: TestClient, make_token: TokenFactory, jwks: JWKSServer
) -> None:
    token = make_token("mallory", headers={"kid": "no-such-key"})

    assert_unauthorized(api.get("/api/tasks", headers=bearer(token)), token)
    assert whoami(api, bearer(make_token("alice")), "alice").status_code == 200
    assert jwks.requests <= 2


@pytest.mark.parametrize("header", ["jku", "x5u"])
@pytest.mark.parametrize("kid", ["attacker-key-1", "ed25519-key-1"])
def test_token_pointing_to_an_attacker_key_url_returns_401_and_the_url_is_never_fetched(
    api: TestClient, make_token: TokenFactory, scripted: ScriptedServer, header: str, kid: str
) -> None:
    attacker = SigningKey(kid, "EdDSA", ed25519.Ed25519PrivateKey.generate())
    scripted.serve_jwks([attacker.public_jwk()])
    token = make_token("mallory", role="admin", key=attacker, headers={header: scripted.url})

    assert_unauthorized(api.get("/api/tasks", headers=bearer(token)), token)
    assert scripted.requests == 0


@pytest.mark.parametrize("kid", ["attacker-key-1", "ed25519-key-1", None])
@pytest.mark.parametrize("algorithm", ["EdDSA", "ES256", "RS256"])
def test_token_with_an_embedded_jwk_of_the_attacker_key_returns_401(
    api: TestClient, make_token: TokenFactory, kid: str | None, algorithm: str
) -> None:
    attacker = SigningKey(kid or "attacker-key-1", algorithm, new_private_key(algorithm))
    token = make_token("mallory", role="admin", key=attacker, headers={"kid": kid, "jwk": attacker.public_jwk()})

    assert_unauthorized(api.get("/api/tasks", headers=bearer(token)), token)


def test_token_with_an_embedded_jwk_returns_401_even_when_the_jwks_has_one_key(
    api: TestClient, make_token: TokenFactory, jwks: JWKSServer, keys: dict[str, SigningKey]
) -> None:
    jwks.keys = [keys["EdDSA"].public_jwk()]
    attacker = SigningKey("attacker-key-1", "EdDSA", ed25519.Ed25519PrivateKey.generate())
    token = make_token("mallory", key=attacker, headers={"kid": None, "jwk": attacker.public_jwk()})

    assert_unauthorized(api.get("/api/tasks", headers=bearer(token)), token)


# ---------------------------------------------------------------- 401: claims


def _now() -> int:
    return int(time.time())


TIME_CLAIMS = {"iat", "exp", "nbf"}


@pytest.mark.parametrize(
    ("overrides", "omit"),
    [
        pytest.param({}, ["exp"], id="missing-exp"),
        pytest.param({"iat": -3600, "exp": -60}, [], id="expired"),
        pytest.param({"nbf": 3600}, [], id="nbf-in-the-future"),
        pytest.param({"nbf": 60}, [], id="nbf-beyond-the-leeway"),
        pytest.param({"iat": 3600, "exp": 4500}, [], id="iat-far-in-the-future"),
        pytest.param({"iss": "https://evil.example"}, [], id="wrong-iss"),
        pytest.param({"iss": "{base}/"}, [], id="iss-with-trailing-slash"),
        pytest.param({"aud": "https://other-api.example"}, [], id="wrong-aud"),
        pytest.param({"aud": ["https://other-api.example"]}, [], id="aud-list-without-us"),
        pytest.param({}, ["sub"], id="missing-sub"),
        pytest.param({}, ["iss"], id="missing-iss"),
        pytest.param({}, ["aud"], id="missing-aud"),
        pytest.param({}, ["iss", "aud"], id="missing-iss-and-aud"),
        pytest.param({"exp": "tomorrow"}, [], id="non-numeric-exp"),
    ],
)
@pytest.mark.parametrize("key", KEY_NAMES)
def test_token_with_bad_claims_returns_401(
    api: TestClient,
    make_token: TokenFactory,
    jwks: JWKSServer,
    key: str,
    overrides: dict[str, Any],
    omit: list[str],
) -> None:
    now = _now()
    claims: dict[str, Any] = {}
    for name, value in overrides.items():
        if name in TIME_CLAIMS and isinstance(value, int):
            value = now + value  # an offset from now
        elif isinstance(value, str):
            value = value.format(base=jwks.base_url)
        claims[name] = value
    token = make_token("alice", key=key, omit=omit, **claims)

    assert_unauthorized(api.get("/api/tasks", headers=bearer(token)), token)


INVALID_SUBJECTS = {
    "int": 123,
    "null": None,
    "list": ["alice"],
    "object": {"id": "alice"},
    "bool": True,
    "empty": "",
    "129-chars": "a" * 129,
    "nul": "alice\x00",
    "newline": "ali\nce",
    "zero-width-space": "alice\u200b",
}


# The sub check follows the signature check, so each case runs with one key, the keys taking turns.
@pytest.mark.parametrize(
    ("key", "sub"),
    [
        pytest.param(KEY_NAMES[number % 3], sub, id=f"{KEY_NAMES[number % 3]}-{name}")
        for number, (name, sub) in enumerate(INVALID_SUBJECTS.items())
    ],
)
def test_token_with_an_invalid_sub_returns_401(
    api: TestClient, make_token: TokenFactory, keys: dict[str, SigningKey], key: str, sub: Any
) -> None:
    claims = claims_of(make_token("alice", key=key))
    token = sign(keys[key], {**claims, "sub": sub})

    assert_unauthorized(api.get("/api/tasks", headers=bearer(token)), token)


def test_token_over_16_kb_returns_401(api: TestClient, make_token: TokenFactory) -> None:
    token = make_token("alice", padding="x" * 17_000)
    assert len(token) > MAX_TOKEN_LENGTH

    assert_unauthorized(api.get("/api/tasks", headers=bearer(token)), token)


def test_oversized_token_is_refused_before_anything_is_fetched(
    api: TestClient, make_token: TokenFactory, jwks: JWKSServer
) -> None:
    token = make_token("alice", padding="x" * 17_000)

    assert_unauthorized(api.get("/api/tasks", headers=bearer(token)), token)
    assert jwks.requests == 0


def test_refused_tokens_leave_no_trace_in_the_database(api: TestClient, make_token: TokenFactory, db: Engine) -> None:
    expired = make_token("mallory", iat=_now() - 3600, exp=_now() - 60)
    forged = make_token("eve", key=SigningKey("ed25519-key-1", "EdDSA", ed25519.Ed25519PrivateKey.generate()))
    for token in [expired, forged]:
        assert_unauthorized(api.post("/api/tasks", json={"title": "Sneaky"}, headers=bearer(token)), token)
    assert whoami(api, bearer(make_token("alice")), "alice").status_code == 200

    with Session(db) as session:
        assert session.exec(select(Worker.id).order_by(Worker.id)).all() == ["alice"]
        assert session.exec(select(Task)).all() == []
        assert session.exec(select(AuditLog.actor_id)).all() == ["alice"]


def test_verifier_errors_never_contain_the_token(
    make_verifier: Callable[..., JWKSVerifier], make_token: TokenFactory
) -> None:
    verifier = make_verifier()
    bad_tokens = [
        make_token("alice", iss="https://evil.example"),
        make_token("alice", omit=["exp"]),
        make_token("alice", headers={"kid": "no-such-key"}),
        make_token("alice", iat=_now() - 3600, exp=_now() - 60),
    ]
    for token in bad_tokens:
        with pytest.raises(InvalidToken) as excinfo:
            verifier.verify(token)
        assert token not in str(excinfo.value)
        for part in token.split("."):
            assert part not in str(excinfo.value)


# ---------------------------------------------------------------- key rotation


def test_rotated_key_is_accepted_without_restart_and_the_retired_kid_is_refused(
    api: TestClient, make_token: TokenFactory, jwks: JWKSServer
) -> None:
    old_token = make_token("alice", key="EdDSA")
    assert whoami(api, bearer(old_token), "alice").status_code == 200
    rotated = SigningKey("ed25519-key-2", "EdDSA", ed25519.Ed25519PrivateKey.generate())
    jwks.keys = [rotated.public_jwk()]

    response = whoami(api, bearer(make_token("alice", key=rotated)), "alice")

    assert response.status_code == 200, response.text
    assert jwks.requests == 2
    assert_unauthorized(api.get("/api/tasks", headers=bearer(old_token)), old_token)
    assert_unauthorized(api.get("/api/tasks", headers=bearer(make_token("bob", key="ES256"))))


def test_both_keys_work_during_a_rotation_grace_period(
    api: TestClient, make_token: TokenFactory, jwks: JWKSServer, keys: dict[str, SigningKey]
) -> None:
    jwks.keys = [keys["EdDSA"].public_jwk()]
    assert whoami(api, bearer(make_token("alice")), "alice").status_code == 200
    rotated = SigningKey("ed25519-key-2", "EdDSA", ed25519.Ed25519PrivateKey.generate())
    jwks.keys = [rotated.public_jwk(), keys["EdDSA"].public_jwk()]

    assert whoami(api, bearer(make_token("alice", key=rotated)), "alice").status_code == 200
    assert whoami(api, bearer(make_token("alice")), "alice").status_code == 200
    assert jwks.requests == 2


def test_repeated_rotations_are_each_picked_up(settings: Settings, make_token: TokenFactory, jwks: JWKSServer) -> None:
    with app_with(settings) as client:
        # Each rotation needs its own unknown-kid refetch; the 30 s rate limit (tested on its
        # own below, with a fake clock) would refuse the second one within this fast test.
        app_of(client).state.verifier.refetch_interval = 0
        previous: str | None = None
        for generation in range(1, 4):
            rotated = SigningKey(f"ed25519-gen-{generation}", "EdDSA", ed25519.Ed25519PrivateKey.generate())
            jwks.keys = [rotated.public_jwk()]
            token = make_token("alice", key=rotated)

            assert whoami(client, bearer(token), "alice").status_code == 200
            if previous is not None:
                assert_unauthorized(client.get("/api/tasks", headers=bearer(previous)), previous)
            previous = token


def test_unknown_kid_refetch_runs_at_most_once_per_refetch_interval(
    make_verifier: Callable[..., JWKSVerifier], make_token: TokenFactory, jwks: JWKSServer, clock: FakeClock
) -> None:
    verifier = make_verifier(refetch_interval=30)
    assert verifier.verify(make_token("alice")).id == "alice"
    assert jwks.requests == 1

    with pytest.raises(InvalidToken):
        verifier.verify(make_token("mallory", headers={"kid": "made-up-1"}))
    assert jwks.requests == 2

    # The signer rotates 10 s later: the refetch slot is used up, so its new kid waits.
    clock.advance(10)
    rotated = SigningKey("ed25519-key-2", "EdDSA", ed25519.Ed25519PrivateKey.generate())
    jwks.keys = [*jwks.keys, rotated.public_jwk()]
    new_token = make_token("alice", key=rotated)
    with pytest.raises(InvalidToken):
        verifier.verify(new_token)
    with pytest.raises(InvalidToken):
        verifier.verify(make_token("mallory", headers={"kid": "made-up-2"}))
    assert jwks.requests == 2

    clock.advance(20)  # 30 s after the last unknown-kid refetch
    assert verifier.verify(new_token).id == "alice"
    assert jwks.requests == 3
    assert verifier.verify(make_token("bob", key="RS256")).id == "bob"
    assert jwks.requests == 3


def test_cached_keys_are_refreshed_after_the_cache_ttl(
    make_verifier: Callable[..., JWKSVerifier], make_token: TokenFactory, jwks: JWKSServer, clock: FakeClock
) -> None:
    verifier = make_verifier(cache_ttl=60)
    assert verifier.verify(make_token("alice")).id == "alice"
    clock.advance(59)
    assert verifier.verify(make_token("alice")).id == "alice"
    assert jwks.requests == 1
    # The key was withdrawn: once the TTL runs out the withdrawal is seen.
    jwks.keys = [key for key in jwks.keys if key["kid"] != "ed25519-key-1"]

    clock.advance(2)
    assert verifier.verify(make_token("bob", key="ES256")).id == "bob"
    assert jwks.requests == 2
    with pytest.raises(InvalidToken):
        verifier.verify(make_token("alice"))


# ---------------------------------------------------------------- the JWKS is down


def test_jwks_down_before_any_key_is_cached_returns_503_then_recovers(
    api: TestClient, make_token: TokenFactory, jwks: JWKSServer
) -> None:
    jwks.failing = True
    token = make_token("alice")

    for _ in range(2):
        response = api.get("/api/tasks", headers=bearer(token))
        assert_unavailable(response, token)
        assert "WWW-Authenticate" not in response.headers

    jwks.failing = False
    response = whoami(api, bearer(token), "alice")
    assert response.status_code == 200, response.text


def test_jwks_unreachable_returns_503(settings: Settings, make_token: TokenFactory) -> None:
    closed = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    url = f"http://127.0.0.1:{closed.server_address[1]}/api/auth/jwks"
    closed.server_close()  # nothing listens there any more: connection refused
    token = make_token("alice")

    with app_with(settings, jwks_url=url) as client:
        assert_unavailable(client.get("/api/tasks", headers=bearer(token)), token)


def test_jwks_down_after_keys_were_cached_keeps_the_cached_keys_working(
    settings: Settings, make_token: TokenFactory, jwks: JWKSServer
) -> None:
    with app_with(settings, jwks_cache_ttl=0) as client:
        assert whoami(client, bearer(make_token("alice")), "alice").status_code == 200
        assert jwks.requests == 1
        jwks.failing = True

        for name, key in [("alice", "EdDSA"), ("bob", "ES256"), ("carol", "RS256")]:
            response = whoami(client, bearer(make_token(name, key=key)), name)
            assert response.status_code == 200, response.text

        # One failed refresh, then the cached keys carry on without hammering the server.
        assert jwks.requests == 2


def test_verifier_backs_off_while_the_jwks_fails_and_refreshes_when_it_is_back(
    make_verifier: Callable[..., JWKSVerifier],
    make_token: TokenFactory,
    jwks: JWKSServer,
    keys: dict[str, SigningKey],
    clock: FakeClock,
) -> None:
    verifier = make_verifier(cache_ttl=60, refetch_interval=30)
    assert verifier.verify(make_token("alice")).id == "alice"
    jwks.failing = True

    clock.advance(61)
    assert verifier.verify(make_token("alice")).id == "alice"
    assert jwks.requests == 2
    clock.advance(29)
    assert verifier.verify(make_token("alice")).id == "alice"
    assert jwks.requests == 2
    clock.advance(1)
    assert verifier.verify(make_token("alice")).id == "alice"
    assert jwks.requests == 3

    jwks.failing = False
    jwks.keys = [keys["ES256"].public_jwk()]
    clock.advance(30)
    assert verifier.verify(make_token("bob", key="ES256")).id == "bob"
    assert jwks.requests == 4
    with pytest.raises(InvalidToken):
        verifier.verify(make_token("alice"))


def test_verifier_without_cached_keys_raises_key_set_unavailable(
    make_verifier: Callable[..., JWKSVerifier], make_token: TokenFactory, jwks: JWKSServer
) -> None:
    verifier = make_verifier()
    jwks.failing = True
    token = make_token("alice")

    with pytest.raises(KeySetUnavailable) as excinfo:
        verifier.verify(token)
    assert token not in str(excinfo.value)

    jwks.failing = False
    assert verifier.verify(token).id == "alice"


# ---------------------------------------------------------------- how often the JWKS is fetched


def test_many_requests_across_users_and_keys_fetch_the_jwks_once(
    api: TestClient, auth: AuthHeaders, jwks: JWKSServer
) -> None:
    users = ["alice", "bob", "carol", "dave", "erin"]
    for number in range(20):
        user = users[number % len(users)]
        response = api.get("/api/tasks", headers=auth(user, key=KEY_NAMES[number % 3]))
        assert response.status_code == 200, response.text

    assert jwks.requests == 1


def test_concurrent_first_requests_fetch_the_jwks_once(api: TestClient, auth: AuthHeaders, jwks: JWKSServer) -> None:
    headers = [auth(f"user-{number}", key=KEY_NAMES[number % 3]) for number in range(8)]
    start = threading.Barrier(8)

    def request(header: dict[str, str]) -> int:
        start.wait(timeout=10)
        return api.get("/api/tasks", headers=header).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(request, headers))

    assert statuses == [200] * 8
    assert jwks.requests == 1


def test_concurrent_first_verifications_against_a_slow_jwks_fetch_once(
    make_verifier: Callable[..., JWKSVerifier],
    make_token: TokenFactory,
    scripted: ScriptedServer,
    keys: dict[str, SigningKey],
) -> None:
    scripted.serve_jwks([key.public_jwk() for key in keys.values()])
    scripted.delay = 0.05  # a slow auth server widens the window a stampede would need
    verifier = make_verifier(jwks_url=scripted.url, clock=time.monotonic)
    tokens = [make_token(f"user-{number}", key=KEY_NAMES[number % 3]) for number in range(8)]
    start = threading.Barrier(8)

    def verify(token: str) -> str:
        start.wait(timeout=10)
        return verifier.verify(token).id

    with ThreadPoolExecutor(max_workers=8) as pool:
        subjects = list(pool.map(verify, tokens))

    assert subjects == [f"user-{number}" for number in range(8)]
    assert scripted.requests == 1
    assert verifier.fetch_count == 1


# ---------------------------------------------------------------- JWKS documents with junk in them


def test_junk_keys_in_the_jwks_are_skipped_and_the_good_key_still_works(
    api: TestClient, make_token: TokenFactory, jwks: JWKSServer, keys: dict[str, SigningKey]
) -> None:
    secret = b"a-shared-secret-nobody-should-trust"
    enc_key = SigningKey("es256-enc", "ES256", ec.generate_private_key(ec.SECP256R1()))
    published: list[Any] = [
        {"kty": "oct", "kid": "hmac-key", "alg": "HS256", "k": b64url(secret)},
        {**enc_key.public_jwk(), "use": "enc"},
        {"kty": "RSA", "kid": "broken-rsa", "alg": "RS256"},  # no modulus or exponent
        {"kty": "EC", "kid": "broken-ec", "crv": "P-256", "x": "AAAA", "y": "AAAA"},  # not on the curve
        {"kty": "OKP", "kid": "x25519", "crv": "X25519", "x": b64url(b"\x09" * 32)},  # a key-agreement curve
        {"kid": "no-kty"},
        "not-an-object",
        keys["EdDSA"].public_jwk(),
    ]
    jwks.keys = published

    response = whoami(api, bearer(make_token("alice")), "alice")
    assert response.status_code == 200, response.text

    hmac_token = jwt.encode(claims_of(make_token("mallory")), secret, algorithm="HS256", headers={"kid": "hmac-key"})
    assert_unauthorized(api.get("/api/tasks", headers=bearer(hmac_token)), hmac_token)
    enc_token = make_token("mallory", key=enc_key)
    assert_unauthorized(api.get("/api/tasks", headers=bearer(enc_token)), enc_token)
    assert jwks.requests <= 2


@pytest.mark.parametrize(
    "junk",
    [
        {"kty": "RSA", "kid": "junk", "alg": ["RS256"], "n": "AQAB", "e": "AQAB"},
        {"kty": "RSA", "kid": "junk", "alg": {"name": "RS256"}, "n": "AQAB", "e": "AQAB"},
        {"kty": "EC", "kid": "junk", "crv": 5, "x": "AAAA", "y": "AAAA"},
        {"kty": "OKP", "kid": "junk", "crv": "Ed25519", "x": 5},
        {"kty": "RSA", "kid": "junk", "n": 5, "e": 5},
        {"kty": 5, "kid": "junk"},
        {"kty": "EC", "kid": ["junk"], "crv": "P-256"},
        {"kty": "RSA", "kid": "junk", "use": ["sig"]},
    ],
    ids=["alg-list", "alg-object", "crv-int", "x-int", "n-int", "kty-int", "kid-list", "use-list"],
)
def test_a_malformed_key_with_wrong_json_types_is_skipped(
    api: TestClient, make_token: TokenFactory, jwks: JWKSServer, keys: dict[str, SigningKey], junk: dict[str, Any]
) -> None:
    jwks.keys = [junk, keys["ES256"].public_jwk()]

    response = whoami(api, bearer(make_token("alice", key="ES256")), "alice")

    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "body",
    [b"<html>Bad gateway</html>", b"", b'{"keys": ', b"[]", b'{"keys": "none"}', b'{"no_keys": []}', b"null"],
    ids=["html", "empty", "truncated", "array", "keys-not-list", "no-keys", "null"],
)
def test_jwks_that_is_not_a_json_key_set_returns_503(
    settings: Settings, make_token: TokenFactory, scripted: ScriptedServer, body: bytes
) -> None:
    scripted.body = body
    token = make_token("alice")

    with app_with(settings, jwks_url=scripted.url) as client:
        assert_unavailable(client.get("/api/tasks", headers=bearer(token)), token)


def test_jwks_turning_into_junk_keeps_the_cached_keys_working(
    settings: Settings, make_token: TokenFactory, scripted: ScriptedServer, keys: dict[str, SigningKey]
) -> None:
    scripted.serve_jwks([keys["EdDSA"].public_jwk()])

    with app_with(settings, jwks_url=scripted.url, jwks_cache_ttl=0) as client:
        assert whoami(client, bearer(make_token("alice")), "alice").status_code == 200
        scripted.body = b"<html>maintenance</html>"

        response = whoami(client, bearer(make_token("alice")), "alice")

    assert response.status_code == 200, response.text
    assert scripted.requests == 2


def test_jwks_answering_an_error_status_with_a_key_set_returns_503(
    settings: Settings, make_token: TokenFactory, scripted: ScriptedServer, keys: dict[str, SigningKey]
) -> None:
    scripted.serve_jwks([keys["EdDSA"].public_jwk()])
    scripted.status = 500
    token = make_token("alice")

    with app_with(settings, jwks_url=scripted.url) as client:
        assert_unavailable(client.get("/api/tasks", headers=bearer(token)), token)


# ---------------------------------------------------------------- the development issuer


def dev_token(settings: Settings, subject: str = "alice", **options: Any) -> str:
    return devtoken.issue_token(
        devtoken.load_or_create_key(settings.dev_key_file),
        subject=subject,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        **options,
    )


def test_dev_token_is_accepted_with_dev_auth_on(settings: Settings, make_token: TokenFactory) -> None:
    token = dev_token(settings, "alice", name="Alice Dev")

    with app_with(settings, dev_auth=True) as client:
        response = whoami(client, bearer(token), "alice")
        jwks_token_still_works = whoami(client, bearer(make_token("bob")), "bob")

    assert response.status_code == 200, response.text
    assert response.json()["name"] == "Alice Dev"
    assert jwks_token_still_works.status_code == 200, jwks_token_still_works.text


def test_dev_token_is_refused_with_dev_auth_off(settings: Settings) -> None:
    assert settings.dev_auth is False
    token = dev_token(settings)

    with app_with(settings) as client:
        assert_unauthorized(client.get("/api/tasks", headers=bearer(token)), token)


def test_dev_token_from_another_dev_key_is_refused(settings: Settings, tmp_path: Any) -> None:
    other = settings.model_copy(update={"dev_key_file": str(tmp_path / "someone-elses-key.pem")})
    token = dev_token(other)

    with app_with(settings, dev_auth=True) as client:
        assert_unauthorized(client.get("/api/tasks", headers=bearer(token)), token)


def test_dev_token_with_admin_role_makes_an_admin(settings: Settings, make_token: TokenFactory) -> None:
    with app_with(settings, dev_auth=True) as client:
        created = client.post("/api/tasks", json={"title": "Alice's own"}, headers=bearer(make_token("alice")))
        assert created.status_code == 201, created.text
        task_url = f"/api/tasks/{created.json()['id']}"

        as_admin = client.get(task_url, headers=bearer(dev_token(settings, "root", role="admin")))
        as_user = client.get(task_url, headers=bearer(dev_token(settings, "bob")))

    assert as_admin.status_code == 200, as_admin.text
    assert as_user.status_code == 404, as_user.text


def test_dev_token_works_while_the_jwks_is_down(settings: Settings, jwks: JWKSServer) -> None:
    jwks.failing = True
    token = dev_token(settings)

    with app_with(settings, dev_auth=True) as client:
        response = whoami(client, bearer(token), "alice")

    assert response.status_code == 200, response.text


def test_expired_dev_token_is_refused(settings: Settings) -> None:
    token = dev_token(settings, ttl=-60)

    with app_with(settings, dev_auth=True) as client:
        assert_unauthorized(client.get("/api/tasks", headers=bearer(token)), token)


def test_dev_key_file_is_created_once_and_readable_by_its_owner_only(settings: Settings) -> None:
    first = devtoken.load_or_create_key(settings.dev_key_file)
    second = devtoken.load_or_create_key(settings.dev_key_file)

    assert devtoken.key_id(first) == devtoken.key_id(second)
    assert stat.S_IMODE(os.stat(settings.dev_key_file).st_mode) == 0o600


def test_devtoken_command_prints_a_token_the_dev_server_accepts(
    settings: Settings,
    jwks: JWKSServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Any,
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env file is read
    for name in ["JWKS_URL", "JWT_ISSUER", "JWT_AUDIENCE", "DATABASE_URL", "DEV_AUTH"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AUTH_SERVER_URL", jwks.base_url)
    monkeypatch.setenv("DEV_KEY_FILE", settings.dev_key_file)

    devtoken.main(["carol", "--role", "admin", "--name", "Carol"])
    token = capsys.readouterr().out.strip()

    assert claims_of(token)["role"] == "admin"
    with app_with(settings, dev_auth=True) as client:
        response = whoami(client, bearer(token), "carol")
    assert response.status_code == 200, response.text
    assert response.json()["name"] == "Carol"


def test_a_jwks_without_a_single_usable_key_answers_503(
    api: TestClient, make_token: TokenFactory, jwks: JWKSServer
) -> None:
    secret = b"a-shared-secret-nobody-should-trust"
    jwks.keys = [{"kty": "oct", "kid": "hmac-key", "alg": "HS256", "k": b64url(secret)}]

    response = api.get("/api/tasks", headers=bearer(make_token("alice")))

    assert response.status_code == 503, response.text
    assert response.json()["code"] == "service_unavailable"
