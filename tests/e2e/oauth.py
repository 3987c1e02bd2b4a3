"""OAuth 2.1 flows against the Better Auth test server, scripted with httpx: no browser.

The server is a `BetterAuthServer` started with `mcp_resource` (MCP_RESOURCE): Better Auth with
the @better-auth/mcp plugin, which is @better-auth/oauth-provider configured for one MCP resource.
What these helpers rely on, read from the plugin (see better_auth/server.mjs):

- Its issuer is `{base_url}/api/auth`; the RFC 8414 metadata is at
  `/.well-known/oauth-authorization-server/api/auth` (and the OIDC document at
  `/api/auth/.well-known/openid-configuration`).
- Clients register themselves at `/api/auth/oauth2/register` (RFC 7591, no session). A client
  may use the client_credentials grant only once an admin has given it scopes for it, so
  `create_agent_client` signs in as the admin and calls the server's test-only admin route.
- `/api/auth/oauth2/authorize` with a session cookie redirects to the consent page,
  `/consent?<signed query>`, until the user has consented to those scopes and resource;
  consent is given by POSTing that query to `/api/auth/oauth2/consent`, which answers with
  the redirect to the client's `redirect_uri` carrying `code`, `state` and `iss`.
- An access token is a JWT (signed with the keys at `/api/auth/jwks`) only when the token
  request names a `resource` (RFC 8707); its `aud` is then the resource, plus the userinfo
  endpoint when `openid` was granted. Without `resource` the access token is opaque.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import jwt

from e2e.harness import ADMIN_EMAIL, PASSWORD, BetterAuthServer

AUTH_BASE_PATH = "/api/auth"
# The stub pages server.mjs serves for the plugin's loginPage and consentPage.
LOGIN_PAGE = "/login"
CONSENT_PAGE = "/consent"
TIMEOUT = 10


class OAuthError(Exception):
    """An OAuth error answer: from the token or registration endpoint, or in a redirect."""

    def __init__(self, status_code: int | None, error: str, description: str | None = None) -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.status_code = status_code
        self.error = error
        self.description = description

    @classmethod
    def from_response(cls, response: httpx.Response) -> OAuthError:
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        error = body.get("error") or body.get("code") or f"HTTP {response.status_code}"
        return cls(response.status_code, str(error), body.get("error_description") or body.get("message"))


@dataclass(frozen=True)
class OAuthClient:
    """A registered client; `registration` is the server's whole answer."""

    client_id: str
    client_secret: str | None
    token_endpoint_auth_method: str
    redirect_uris: tuple[str, ...]
    registration: dict[str, Any] = field(repr=False)

    @property
    def confidential(self) -> bool:
        return self.client_secret is not None

    @classmethod
    def from_registration(cls, body: dict[str, Any]) -> OAuthClient:
        return cls(
            client_id=body["client_id"],
            client_secret=body.get("client_secret"),
            token_endpoint_auth_method=body.get("token_endpoint_auth_method", "client_secret_basic"),
            redirect_uris=tuple(body.get("redirect_uris") or ()),
            registration=body,
        )


@dataclass(frozen=True)
class TokenSet:
    """A token endpoint's answer."""

    access_token: str
    token_type: str
    expires_in: int
    scope: str
    refresh_token: str | None
    id_token: str | None
    response: dict[str, Any] = field(repr=False)

    @property
    def scopes(self) -> list[str]:
        return self.scope.split()

    @classmethod
    def from_response(cls, body: dict[str, Any]) -> TokenSet:
        return cls(
            access_token=body["access_token"],
            token_type=body["token_type"],
            expires_in=int(body["expires_in"]),
            scope=body.get("scope", ""),
            refresh_token=body.get("refresh_token"),
            id_token=body.get("id_token"),
            response=body,
        )


@dataclass(frozen=True)
class Authorization:
    """What the redirect to the client's `redirect_uri` carried, and whether consent was asked for."""

    code: str
    state: str | None
    iss: str | None
    consent_asked: bool


# ---------------------------------------------------------------- discovery


def issuer(server: BetterAuthServer) -> str:
    """The issuer the plugin advertises and puts in `iss`: the base URL with Better Auth's base path."""
    return f"{server.base_url}{AUTH_BASE_PATH}"


def metadata_url(server: BetterAuthServer) -> str:
    """Where an MCP client looks for the authorization server metadata (RFC 8414 path insertion)."""
    return f"{server.base_url}/.well-known/oauth-authorization-server{AUTH_BASE_PATH}"


def discover(server: BetterAuthServer) -> dict[str, Any]:
    """The RFC 8414 authorization server metadata, fetched as an MCP client does."""
    return _get_json(metadata_url(server))


def openid_configuration(server: BetterAuthServer) -> dict[str, Any]:
    """The OpenID Connect discovery document, at `{issuer}/.well-known/openid-configuration`."""
    return _get_json(f"{issuer(server)}/.well-known/openid-configuration")


def _get_json(url: str) -> dict[str, Any]:
    response = httpx.get(url, timeout=TIMEOUT)
    response.raise_for_status()
    document: dict[str, Any] = response.json()
    return document


def _endpoint(server: BetterAuthServer, path: str) -> str:
    return f"{issuer(server)}{path}"


# ---------------------------------------------------------------- clients


def register_client(
    server: BetterAuthServer,
    redirect_uris: list[str],
    *,
    confidential: bool,
    grant_types: tuple[str, ...] = ("authorization_code", "refresh_token"),
    scope: str | None = None,
    client_name: str = "TaskFlow e2e MCP client",
) -> OAuthClient:
    """Dynamic client registration (RFC 7591) without a session, as an MCP client does.

    A confidential client authenticates with client_secret_basic; a public one with none. A
    loopback `redirect_uris` makes it a native client (the server infers the application type).
    `scope` is what the client asks for; the server registers every scope it offers anyway.
    The client_credentials grant is refused here: see `create_agent_client`.
    """
    body: dict[str, Any] = {
        "client_name": client_name,
        "redirect_uris": redirect_uris,
        "grant_types": list(grant_types),
        "response_types": ["code"],
        "token_endpoint_auth_method": "client_secret_basic" if confidential else "none",
    }
    if scope is not None:
        body["scope"] = scope
    response = httpx.post(_endpoint(server, "/oauth2/register"), json=body, timeout=TIMEOUT)
    if response.status_code != 201:
        raise OAuthError.from_response(response)
    return OAuthClient.from_registration(response.json())


def create_agent_client(
    server: BetterAuthServer, scopes: list[str], *, client_name: str = "TaskFlow e2e agent"
) -> OAuthClient:
    """A confidential client for the client_credentials grant (a headless agent), made by the admin.

    The plugin takes a client's client_credentials scopes only from its server-only admin API;
    server.mjs exposes that at POST /test-admin/oauth2/create-client for a signed-in admin.
    """
    server.admin()  # signs the admin up on first use
    with _signed_in(server, ADMIN_EMAIL) as admin:
        response = admin.post(
            "/test-admin/oauth2/create-client",
            json={
                "client_name": client_name,
                "grant_types": ["client_credentials"],
                "token_endpoint_auth_method": "client_secret_basic",
                "scope": " ".join(scopes),
                "client_credentials_scopes": scopes,
            },
        )
    if response.status_code != 201:
        raise OAuthError.from_response(response)
    return OAuthClient.from_registration(response.json())


# ---------------------------------------------------------------- the authorization code flow


def pkce_pair() -> tuple[str, str]:
    """A PKCE code verifier and its S256 code challenge."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def authorize(
    server: BetterAuthServer,
    user_email: str,
    client: OAuthClient,
    *,
    resource: str,
    scope: str,
    code_challenge: str,
    redirect_uri: str | None = None,
    state: str | None = None,
) -> Authorization:
    """Sign in as the user, walk /oauth2/authorize, consent if asked; the code from the redirect.

    The redirect to `redirect_uri` is caught, never requested.
    """
    redirect_uri = redirect_uri or client.redirect_uris[0]
    state = state or secrets.token_urlsafe(16)
    params = {
        "response_type": "code",
        "client_id": client.client_id,
        "redirect_uri": redirect_uri,
        "scope": scope,
        "state": state,
        "code_challenge": code_challenge,
        "code_challenge_method": "S256",
        "resource": resource,
    }
    consent_asked = False
    with _signed_in(server, user_email) as browser:
        response = browser.get(_endpoint(server, "/oauth2/authorize"), params=params)
        for _ in range(10):
            if not response.is_redirect:
                raise OAuthError.from_response(response)
            location = urljoin(str(response.url), response.headers["location"])
            if urlsplit(location).path == CONSENT_PAGE:
                consent_asked = True
                location = _consent(server, browser, urlsplit(location).query)
            if _same_endpoint(location, redirect_uri):
                authorization = _authorization_from(location, consent_asked)
                if authorization.state != state:
                    raise OAuthError(None, "state_mismatch", f"sent {state!r}, got {authorization.state!r}")
                return authorization
            if urlsplit(location).path == LOGIN_PAGE:
                raise OAuthError(None, "login_required", f"sent to the login page although signed in: {location}")
            response = browser.get(location)
    raise OAuthError(None, "too_many_redirects", "the authorization did not reach the redirect_uri")


def _consent(server: BetterAuthServer, browser: httpx.Client, oauth_query: str) -> str:
    """Accept every requested scope, as the consent page would; the URL to go to next."""
    # A cookie-authenticated POST needs an Origin the server trusts: its own.
    response = browser.post(
        _endpoint(server, "/oauth2/consent"),
        json={"accept": True, "oauth_query": oauth_query},
        headers={"Origin": server.base_url},
    )
    if response.status_code != 200:
        raise OAuthError.from_response(response)
    url: str = response.json()["url"]
    return urljoin(server.base_url, url)


def _authorization_from(location: str, consent_asked: bool) -> Authorization:
    query = parse_qs(urlsplit(location).query)
    if "error" in query:
        raise OAuthError(None, query["error"][0], query.get("error_description", [None])[0])
    return Authorization(
        code=query["code"][0],
        state=query.get("state", [None])[0],
        iss=query.get("iss", [None])[0],
        consent_asked=consent_asked,
    )


def _same_endpoint(url: str, redirect_uri: str) -> bool:
    got, expected = urlsplit(url), urlsplit(redirect_uri)
    return (got.scheme, got.netloc, got.path) == (expected.scheme, expected.netloc, expected.path)


def exchange_code(
    server: BetterAuthServer,
    client: OAuthClient,
    authorization: Authorization,
    *,
    code_verifier: str,
    resource: str | None,
    redirect_uri: str | None = None,
) -> TokenSet:
    """The token request for an authorization code."""
    data = {
        "grant_type": "authorization_code",
        "code": authorization.code,
        "redirect_uri": redirect_uri or client.redirect_uris[0],
        "code_verifier": code_verifier,
    }
    if resource is not None:
        data["resource"] = resource
    return token_request(server, client, data)


def authorize_with_pkce(
    server: BetterAuthServer,
    user_email: str,
    client: OAuthClient,
    resource: str,
    scope: str,
    *,
    redirect_uri: str | None = None,
) -> TokenSet:
    """The whole authorization code flow with PKCE (S256) for the user, `resource` in both requests."""
    verifier, challenge = pkce_pair()
    authorization = authorize(
        server, user_email, client, resource=resource, scope=scope, code_challenge=challenge, redirect_uri=redirect_uri
    )
    return exchange_code(
        server, client, authorization, code_verifier=verifier, resource=resource, redirect_uri=redirect_uri
    )


# ---------------------------------------------------------------- other grants


def client_credentials(server: BetterAuthServer, client: OAuthClient, resource: str | None, scope: str) -> TokenSet:
    """The client_credentials grant: a token for the client itself."""
    data = {"grant_type": "client_credentials", "scope": scope}
    if resource is not None:
        data["resource"] = resource
    return token_request(server, client, data)


def refresh(server: BetterAuthServer, client: OAuthClient, refresh_token: str, resource: str | None) -> TokenSet:
    """The refresh_token grant (the refresh token rotates: use the new one next time)."""
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    if resource is not None:
        data["resource"] = resource
    return token_request(server, client, data)


def token_request(server: BetterAuthServer, client: OAuthClient, data: dict[str, str]) -> TokenSet:
    """POST to the token endpoint, authenticated as the client registered to be."""
    auth: tuple[str, str] | None = None
    data = dict(data)
    if client.client_secret is None:
        data["client_id"] = client.client_id
    elif client.token_endpoint_auth_method == "client_secret_post":
        data |= {"client_id": client.client_id, "client_secret": client.client_secret}
    else:
        auth = (client.client_id, client.client_secret)
    response = httpx.post(_endpoint(server, "/oauth2/token"), data=data, auth=auth, timeout=TIMEOUT)
    if response.status_code != 200:
        raise OAuthError.from_response(response)
    return TokenSet.from_response(response.json())


# ---------------------------------------------------------------- tokens


def verify_access_token(server: BetterAuthServer, token: str, resource: str) -> dict[str, Any]:
    """The access token's claims, verified as a resource server would: signature, `iss`, `aud`, `exp`."""
    jwks_client = jwt.PyJWKClient(discover(server)["jwks_uri"], cache_keys=False)
    key = jwks_client.get_signing_key_from_jwt(token)
    claims: dict[str, Any] = jwt.decode(
        token,
        key,
        algorithms=[key.algorithm_name],  # the key's, never the token header's
        audience=resource,
        issuer=issuer(server),
        options={"require": ["exp", "iat", "iss", "aud", "sub"]},
    )
    return claims


# ---------------------------------------------------------------- sessions


@contextmanager
def _signed_in(server: BetterAuthServer, email: str) -> Iterator[httpx.Client]:
    """An httpx client holding the user's session cookie; it follows no redirect."""
    with httpx.Client(base_url=server.base_url, timeout=TIMEOUT, follow_redirects=False) as client:
        response = client.post(f"{AUTH_BASE_PATH}/sign-in/email", json={"email": email, "password": PASSWORD})
        if response.status_code != 200:
            raise OAuthError.from_response(response)
        yield client
