"""Verifying Better Auth JWTs against the keys its JWKS endpoint publishes.

Framework-free: `JWKSVerifier.verify(token)` returns a `Principal` or raises `InvalidToken`
(the caller answers 401) or `KeySetUnavailable` (503). Messages never contain the token.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import httpx
import jwt

logger = logging.getLogger(__name__)

# Better Auth signs with EdDSA by default and can be set to RSA, RSA-PSS or ECDSA.
# Symmetric algorithms would let anyone holding a public key forge tokens.
ALLOWED_ALGORITHMS = frozenset(
    {"EdDSA", "ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}
)
MAX_TOKEN_LENGTH = 16_384
# A subject becomes a worker id, so it must be one: models.WORKER_ID_PATTERN accepts the same ids.
SUBJECT_PATTERN = re.compile(r"^[A-Za-z0-9@._:|+-]{1,128}$")
# An OAuth client id is stored in audit rows: printable, no spaces, bounded.
CLIENT_ID_PATTERN = re.compile(r"^[\x21-\x7e]{1,255}$")
LEEWAY_SECONDS = 5
# Verified tokens remembered at once; each costs about 200 bytes.
TOKEN_CACHE_SIZE = 10_000


class InvalidToken(Exception):
    """The token cannot be trusted; the message is safe to show the client."""


class KeySetUnavailable(Exception):
    """No usable signing key could be had from the JWKS endpoint."""


@dataclass(frozen=True)
class Resource:
    """A second audience the verifier accepts tokens for: an OAuth resource (the MCP endpoint) and its issuer."""

    audience: str
    issuer: str


@dataclass(frozen=True)
class Principal:
    id: str
    email: str | None = None
    name: str | None = None
    role: str = "user"
    # "api": a token for the REST API, carrying its subject's whole authority. "mcp": an OAuth
    # access token issued for the MCP resource, to `client_id`, limited to `scopes`.
    audience: Literal["api", "mcp"] = "api"
    client_id: str | None = None
    scopes: frozenset[str] = frozenset()

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def parse_key_set(document: Any) -> dict[str | None, jwt.PyJWK]:
    """The usable keys of a JWKS document by `kid`; anything else in it is skipped."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document")
    keys: dict[str | None, jwt.PyJWK] = {}
    for data in document["keys"]:
        if not isinstance(data, dict) or data.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(data)
        except (jwt.PyJWTError, TypeError, ValueError):
            # One malformed key must not take the good ones down with it.
            continue
        if key.algorithm_name in ALLOWED_ALGORITHMS:
            kid = data.get("kid")
            keys[kid if isinstance(kid, str) else None] = key
    return keys


class JWKSVerifier:
    """Checks tokens against a cached copy of a JWKS, shared by every request thread.

    The copy is trusted for `cache_ttl` seconds. A token naming an unknown `kid` (the
    signer rotated its key) triggers a refetch, at most once per `refetch_interval`, so
    a flood of made-up kids cannot turn into a flood of requests to the auth server.

    A verified token is remembered until its `exp`, never past it, so a client reusing its
    token is not verified again; every change of the key set forgets them all, and so does
    the key set growing stale, so a withdrawn key stops working when it would have uncached.
    """

    def __init__(
        self,
        jwks_url: str,
        *,
        issuer: str,
        audience: str,
        resource: Resource | None = None,
        cache_ttl: float = 3600,
        refetch_interval: float = 30,
        static_keys: Mapping[str, jwt.PyJWK] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.jwks_url = jwks_url
        self.issuer = issuer
        self.audience = audience
        self.resource = resource
        self.cache_ttl = cache_ttl
        self.refetch_interval = refetch_interval
        self._static_keys = dict(static_keys or {})
        self._clock = clock
        self._http = httpx.Client(timeout=5.0)
        self._lock = threading.Lock()
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._failed_at: float | None = None
        self._unknown_kid_refetch_at: float | None = None
        self._verified_lock = threading.Lock()
        self._verified: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()
        self._wall_clock: Callable[[], float] = time.time
        self._key_generation = 0
        self.fetch_count = 0

    def close(self) -> None:
        self._http.close()

    def cached(self, token: str) -> Principal | None:
        """The principal of a token verified before and not yet expired, or None: no I/O, no signature check."""
        if self._fetched_at is not None and self._stale():
            return None
        digest = hashlib.sha256(token.encode()).digest()
        with self._verified_lock:
            entry = self._verified.get(digest)
            if entry is None:
                return None
            principal, expires_at = entry
            if self._wall_clock() >= expires_at:
                del self._verified[digest]
                return None
            self._verified.move_to_end(digest)
            return principal

    def verify(self, token: str) -> Principal:
        principal = self.cached(token)
        if principal is not None:
            return principal
        principal, expires_at, generation = self._verify(token)
        with self._verified_lock:
            if generation != self._key_generation:
                return principal  # the keys changed while this token was checked: remember nothing
            self._verified[hashlib.sha256(token.encode()).digest()] = (principal, expires_at)
            if len(self._verified) > TOKEN_CACHE_SIZE:
                self._verified.popitem(last=False)
        return principal

    def _verify(self, token: str) -> tuple[Principal, float, int]:
        """The principal, its `exp`, and which key set it was checked against."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("Malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("Malformed token") from None
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in ALLOWED_ALGORITHMS:
            raise InvalidToken("Token algorithm is not accepted")
        key = self._key_for(header.get("kid"))
        generation = self._key_generation
        if key.algorithm_name != algorithm:
            raise InvalidToken("Token algorithm does not match its signing key")
        audiences, issuers = [self.audience], [self.issuer]
        if self.resource is not None:
            audiences.append(self.resource.audience)
            issuers.append(self.resource.issuer)
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=audiences,
                issuer=issuers,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("Token has expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("Token is not yet valid") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("Token is not for this audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("Token is from an untrusted issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"Token lacks the '{exc.claim}' claim") from None
        except jwt.PyJWTError:
            raise InvalidToken("Invalid token") from None
        expires_at = claims["exp"]
        if not isinstance(expires_at, int | float):
            raise InvalidToken("Token has an invalid 'exp' claim")
        return self._principal(claims), float(expires_at), generation

    def _principal(self, claims: dict[str, Any]) -> Principal:
        """The principal of verified claims, for the audience whose issuer signed them.

        PyJWT accepted any listed audience and any listed issuer: the pair must belong together,
        or an API token could pass for a resource token (or the reverse) by mixing the two.
        """
        audience = claims["aud"]
        audiences = {audience} if isinstance(audience, str) else set(audience)
        resource = self.resource
        if resource is not None and resource.audience in audiences and claims["iss"] == resource.issuer:
            return _principal(claims, "mcp")
        if self.audience in audiences and claims["iss"] == self.issuer:
            return _principal(claims, "api")
        raise InvalidToken("Token is not for this audience")

    def _key_for(self, kid: object) -> jwt.PyJWK:
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("Malformed token")
        if isinstance(kid, str) and kid in self._static_keys:
            return self._static_keys[kid]
        keys = self._fresh_keys()
        if not keys and not self._static_keys:
            raise KeySetUnavailable("No usable signing key is available to verify tokens")
        if kid is None:
            candidates = [*keys.values(), *self._static_keys.values()]
            if len(candidates) == 1:
                return candidates[0]
            raise InvalidToken("Token has no 'kid' and the key set has several keys")
        if kid in keys:
            return keys[kid]
        fetched = self._refetch_for_unknown_kid()
        if kid in self._keys:
            return self._keys[kid]
        if fetched is False:
            raise KeySetUnavailable("The signing keys cannot be fetched right now")
        raise InvalidToken("Token is signed by an unknown key")

    def _fresh_keys(self) -> dict[str | None, jwt.PyJWK]:
        if not self._stale():
            return self._keys
        asked_at = self._clock()
        with self._lock:
            # Another thread may have fetched while this one waited for the lock: take its
            # keys, or its failure, rather than asking again.
            failed_meanwhile = self._failed_at is not None and self._failed_at > asked_at
            if self._stale() and not failed_meanwhile:
                self._fetch()
            return self._keys

    def _stale(self) -> bool:
        now = self._clock()
        if self._fetched_at is None:
            # Nothing usable yet: keep trying, one request at a time, until the server answers.
            return True
        if now - self._fetched_at < self.cache_ttl:
            return False
        # Expired: refresh, but while the server is failing keep the cached keys for a while.
        return self._failed_at is None or now - self._failed_at >= self.refetch_interval

    def _refetch_for_unknown_kid(self) -> bool | None:
        """Refetch for a kid we do not know: whether it worked, or None if one ran too recently."""
        with self._lock:
            now = self._clock()
            last = self._unknown_kid_refetch_at
            if last is not None and now - last < self.refetch_interval:
                return None
            self._unknown_kid_refetch_at = now
            return self._fetch()

    def _fetch(self) -> bool:
        """Replace the cached keys from the JWKS endpoint; on failure keep the old ones."""
        self.fetch_count += 1
        try:
            response = self._http.get(self.jwks_url, headers={"Accept": "application/json"})
            response.raise_for_status()
            keys = parse_key_set(response.json())
        except (httpx.HTTPError, ValueError) as exc:
            self._failed_at = self._clock()
            logger.warning("Could not fetch signing keys from %s: %s", self.jwks_url, type(exc).__name__)
            return False
        # New keys may have withdrawn the one a remembered token was signed with.
        with self._verified_lock:
            self._verified.clear()
            self._key_generation += 1
        self._keys = keys
        self._fetched_at = self._clock()
        self._failed_at = None
        return True


def _principal(claims: dict[str, Any], audience: Literal["api", "mcp"]) -> Principal:
    subject = claims["sub"]
    if not isinstance(subject, str) or not SUBJECT_PATTERN.match(subject):
        raise InvalidToken("Token has an invalid 'sub' claim")
    role = claims.get("role")
    principal = Principal(
        id=subject,
        email=_text(claims.get("email")),
        name=_text(claims.get("name")),
        role=role if isinstance(role, str) and role else "user",
    )
    if audience == "api":
        return principal
    # RFC 9068 names the client `client_id`; OpenID Connect's `azp` says the same.
    client_id = claims.get("client_id", claims.get("azp"))
    if not isinstance(client_id, str) or not CLIENT_ID_PATTERN.match(client_id):
        raise InvalidToken("Token has no valid 'client_id' claim")
    # A role is the REST API's to grant: at /mcp a token's reach is its subject's own projects and
    # its scopes, whatever claims an authorization server adds for third-party clients.
    return replace(principal, role="user", audience="mcp", client_id=client_id, scopes=_scopes(claims))


def _scopes(claims: dict[str, Any]) -> frozenset[str]:
    """RFC 9068's space-separated `scope`, or the list some servers send as `scope` or `scp`."""
    granted = claims.get("scope", claims.get("scp"))
    if isinstance(granted, str):
        return frozenset(granted.split())
    if isinstance(granted, list) and all(isinstance(scope, str) for scope in granted):
        return frozenset(granted)
    return frozenset()


def _text(value: object) -> str | None:
    # Claims are stored and shown: a control character (PostgreSQL refuses NUL) drops the claim.
    return value if isinstance(value, str) and value.strip() and value.isprintable() else None
