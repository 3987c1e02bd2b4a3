"""The tokens Better Auth's OAuth provider issues for TaskFlow's MCP resource, `{PUBLIC_URL}/mcp`.

Against the real server (`oauth_server`, started with MCP_RESOURCE): discovery as an MCP client
does it, the authorization code flow with PKCE for a user (public and confidential clients), the
client_credentials grant for an agent, and what each access token claims, checked against the
server's JWKS with PyJWT as TaskFlow's MCP endpoint will check it.
"""

from __future__ import annotations

from typing import Any

import httpx
import jwt
import pytest

from e2e.harness import PASSWORD, BetterAuthServer
from e2e.oauth import (
    OAuthClient,
    OAuthError,
    TokenSet,
    authorize,
    authorize_with_pkce,
    client_credentials,
    create_agent_client,
    discover,
    exchange_code,
    issuer,
    openid_configuration,
    pkce_pair,
    refresh,
    register_client,
    verify_access_token,
)

SCOPE = "taskflow:read taskflow:write"
REDIRECT_URI = "http://127.0.0.1:8976/callback"  # never requested: the flow stops at the redirect


@pytest.fixture
def resource(mcp_public_url: str) -> str:
    return f"{mcp_public_url}/mcp"


def audiences(claims: dict[str, Any]) -> list[str]:
    aud = claims["aud"]
    return [aud] if isinstance(aud, str) else list(aud)


def assert_access_token(
    server: BetterAuthServer, tokens: TokenSet, *, resource: str, sub: str, client: OAuthClient, scopes: list[str]
) -> dict[str, Any]:
    """The checks every access token for the resource passes; its verified claims."""
    header = jwt.get_unverified_header(tokens.access_token)
    keys = {key["kid"]: key for key in server.jwks()["keys"]}
    assert header["kid"] in keys
    assert header["alg"] == keys[header["kid"]]["alg"] == "EdDSA"
    assert header["typ"] == "at+jwt"  # RFC 9068

    claims = verify_access_token(server, tokens.access_token, resource)
    assert resource in audiences(claims)
    assert claims["iss"] == issuer(server) == discover(server)["issuer"]
    assert claims["sub"] == sub
    assert claims["client_id"] == claims["azp"] == client.client_id
    assert isinstance(claims["scope"], str)  # space-separated, as in the token response
    assert set(scopes) <= set(claims["scope"].split())
    assert claims["scope"].split() == tokens.scopes
    assert claims["exp"] - claims["iat"] == tokens.expires_in == 3600
    assert tokens.token_type == "Bearer"
    return claims


def test_discovery_finds_the_authorization_server_as_an_mcp_client_does(
    oauth_server: BetterAuthServer, resource: str
) -> None:
    metadata = discover(oauth_server)  # /.well-known/oauth-authorization-server/api/auth
    base = oauth_server.base_url
    assert metadata["issuer"] == f"{base}/api/auth"
    assert metadata["authorization_endpoint"] == f"{base}/api/auth/oauth2/authorize"
    assert metadata["token_endpoint"] == f"{base}/api/auth/oauth2/token"
    assert metadata["registration_endpoint"] == f"{base}/api/auth/oauth2/register"
    assert metadata["jwks_uri"] == f"{base}/api/auth/jwks"
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert {"authorization_code", "client_credentials", "refresh_token"} <= set(metadata["grant_types_supported"])
    assert {"none", "client_secret_basic"} <= set(metadata["token_endpoint_auth_methods_supported"])
    assert {"taskflow:read", "taskflow:write", "openid", "offline_access"} <= set(metadata["scopes_supported"])
    # The same document at the issuer's own well-known paths.
    assert openid_configuration(oauth_server) == metadata
    appended = httpx.get(f"{base}/api/auth/.well-known/oauth-authorization-server", timeout=5)
    assert appended.status_code == 200
    assert appended.json() == metadata

    # The plugin also answers RFC 9728 for the resource; TaskFlow will serve its own copy.
    protected = httpx.get(f"{base}/.well-known/oauth-protected-resource/mcp", timeout=5)
    assert protected.status_code == 200
    assert protected.json()["resource"] == resource
    assert protected.json()["authorization_servers"] == [metadata["issuer"]]
    assert protected.json()["scopes_supported"] == ["taskflow:read", "taskflow:write"]


@pytest.mark.parametrize("confidential", [False, True], ids=["public", "confidential"])
def test_a_user_authorizes_a_client_with_pkce_and_gets_a_jwt_for_the_resource(
    oauth_server: BetterAuthServer, resource: str, confidential: bool
) -> None:
    alice = oauth_server.sign_up("Alice")
    client = register_client(oauth_server, [REDIRECT_URI], confidential=confidential, scope=SCOPE)
    assert client.confidential is confidential
    assert client.registration["application_type"] == "native"  # inferred from the loopback redirect URI
    assert client.registration["resources"] == [resource]  # the plugin links new clients to the resource

    tokens = authorize_with_pkce(oauth_server, alice.email, client, resource, SCOPE)

    claims = assert_access_token(
        oauth_server, tokens, resource=resource, sub=alice.id, client=client, scopes=["taskflow:read", "taskflow:write"]
    )
    assert claims["aud"] == resource  # without openid, the audience is the resource alone
    assert "sid" in claims  # the Better Auth session the user authorized from
    assert tokens.refresh_token is None  # no offline_access
    assert tokens.id_token is None  # no openid


def test_openid_and_offline_access_add_an_id_token_a_refresh_token_and_the_userinfo_audience(
    oauth_server: BetterAuthServer, resource: str
) -> None:
    bob = oauth_server.sign_up("Bob")
    client = register_client(oauth_server, [REDIRECT_URI], confidential=False)
    scope = f"openid offline_access {SCOPE}"

    tokens = authorize_with_pkce(oauth_server, bob.email, client, resource, scope)

    claims = assert_access_token(
        oauth_server, tokens, resource=resource, sub=bob.id, client=client, scopes=scope.split()
    )
    assert audiences(claims) == [resource, f"{issuer(oauth_server)}/oauth2/userinfo"]
    assert tokens.id_token is not None
    id_claims = jwt.decode(tokens.id_token, options={"verify_signature": False})
    assert (id_claims["sub"], id_claims["aud"], id_claims["iss"]) == (bob.id, client.client_id, issuer(oauth_server))

    # The refresh token gives a new JWT for the same user, client and resource, and a new refresh token.
    assert tokens.refresh_token is not None
    refreshed = refresh(oauth_server, client, tokens.refresh_token, resource)
    assert refreshed.access_token != tokens.access_token
    assert refreshed.refresh_token not in (None, tokens.refresh_token)
    assert_access_token(oauth_server, refreshed, resource=resource, sub=bob.id, client=client, scopes=scope.split())


def test_consent_is_asked_once_per_client_and_scopes(oauth_server: BetterAuthServer, resource: str) -> None:
    carol = oauth_server.sign_up("Carol")
    client = register_client(oauth_server, [REDIRECT_URI], confidential=False)
    verifier, challenge = pkce_pair()

    first = authorize(oauth_server, carol.email, client, resource=resource, scope=SCOPE, code_challenge=challenge)
    again = authorize(oauth_server, carol.email, client, resource=resource, scope=SCOPE, code_challenge=challenge)
    more = authorize(
        oauth_server, carol.email, client, resource=resource, scope=f"openid {SCOPE}", code_challenge=challenge
    )

    assert (first.consent_asked, again.consent_asked, more.consent_asked) == (True, False, True)
    assert first.iss == issuer(oauth_server)  # RFC 9207
    # A code is good once, and only with its verifier.
    with pytest.raises(OAuthError) as wrong_verifier:
        exchange_code(oauth_server, client, again, code_verifier=pkce_pair()[0], resource=resource)
    assert wrong_verifier.value.error == "invalid_grant"
    exchange_code(oauth_server, client, again, code_verifier=verifier, resource=resource)
    with pytest.raises(OAuthError) as replayed:
        exchange_code(oauth_server, client, again, code_verifier=verifier, resource=resource)
    assert replayed.value.error == "invalid_grant"


def test_an_agent_gets_a_jwt_for_itself_with_client_credentials(oauth_server: BetterAuthServer, resource: str) -> None:
    agent = create_agent_client(oauth_server, ["taskflow:read", "taskflow:write"])
    assert agent.confidential

    tokens = client_credentials(oauth_server, agent, resource, "taskflow:read")

    claims = assert_access_token(
        oauth_server, tokens, resource=resource, sub=agent.client_id, client=agent, scopes=["taskflow:read"]
    )
    assert claims["aud"] == resource
    assert claims["scope"] == "taskflow:read"
    assert "sid" not in claims
    assert tokens.refresh_token is None
    # Both scopes when it asks for both; none it was not given.
    both = client_credentials(oauth_server, agent, resource, SCOPE)
    assert verify_access_token(oauth_server, both.access_token, resource)["scope"] == SCOPE
    with pytest.raises(OAuthError) as refused:
        client_credentials(oauth_server, agent, resource, "openid")
    assert refused.value.error == "invalid_scope"


def test_only_the_admin_may_create_an_agent_and_no_client_may_register_itself_for_client_credentials(
    oauth_server: BetterAuthServer,
) -> None:
    with pytest.raises(OAuthError) as self_registered:
        register_client(oauth_server, [REDIRECT_URI], confidential=True, grant_types=("client_credentials",))
    assert (self_registered.value.status_code, self_registered.value.error) == (400, "invalid_client_metadata")

    dave = oauth_server.sign_up("Dave")
    with httpx.Client(base_url=oauth_server.base_url, timeout=10) as session:
        signed_in = session.post("/api/auth/sign-in/email", json={"email": dave.email, "password": PASSWORD})
        assert signed_in.status_code == 200
        refused = session.post(
            "/test-admin/oauth2/create-client",
            json={"grant_types": ["client_credentials"], "client_credentials_scopes": ["taskflow:read"]},
        )
    assert refused.status_code == 401


def test_a_token_is_for_a_configured_resource_only_and_a_jwt_only_when_one_is_named(
    oauth_server: BetterAuthServer, resource: str
) -> None:
    agent = create_agent_client(oauth_server, ["taskflow:read"])
    with pytest.raises(OAuthError) as other:
        client_credentials(oauth_server, agent, "http://127.0.0.1:9/mcp", "taskflow:read")
    assert (other.value.status_code, other.value.error) == (400, "invalid_target")

    named = client_credentials(oauth_server, agent, resource, "taskflow:read")
    assert verify_access_token(oauth_server, named.access_token, resource)["aud"] == resource
    opaque = client_credentials(oauth_server, agent, None, "taskflow:read")
    with pytest.raises(jwt.DecodeError):
        jwt.get_unverified_header(opaque.access_token)
