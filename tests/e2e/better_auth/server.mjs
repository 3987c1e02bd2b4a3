// A real Better Auth server for TaskFlow's end-to-end tests, configured the way a TaskFlow
// deployment would be: email/password sign-in, the jwt plugin, a `role` claim users cannot set.
//
//   PORT=3001 JWT_ALG=EdDSA ADMIN_EMAIL=admin@example.com node server.mjs
//
// PORT (required): the loopback port; the base URL, and so the tokens' `iss` and `aud`, is
// http://127.0.0.1:PORT. JWT_ALG: EdDSA (Better Auth's default), RS256, PS256, ES256 or ES512.
// ADMIN_EMAIL: the one email that signs up with role "admin". The store is in memory, so every
// start has no users and a new signing key (a new `kid`).
//
// MCP_RESOURCE (optional), e.g. http://127.0.0.1:8123/mcp: also be the OAuth 2.1 authorization
// server for MCP clients (the @better-auth/mcp plugin, built on @better-auth/oauth-provider). It
// issues JWT access tokens for that resource (`aud`), signed with the jwt plugin's keys, with the
// issuer http://127.0.0.1:PORT/api/auth; see the block comment at `mcpPlugins` below.
// (package.json overrides @better-auth/mcp 1.7.5's exact peer better-call 1.4.0 with the 1.4.6
// better-auth 1.7.29 uses, so there is one better-call; npm refuses the install otherwise.)
import { createServer } from "node:http";

import { mcp } from "@better-auth/mcp";
import { betterAuth } from "better-auth";
import { memoryAdapter } from "better-auth/adapters/memory";
import { fromNodeHeaders, toNodeHandler } from "better-auth/node";
import { jwt } from "better-auth/plugins/jwt";

const port = Number.parseInt(process.env.PORT ?? "", 10);
if (!Number.isInteger(port) || port <= 0) {
  console.error("better-auth test server: set PORT to a free port");
  process.exit(2);
}
const alg = process.env.JWT_ALG || "EdDSA";
const KEY_PAIR_CONFIGS = {
  EdDSA: { alg: "EdDSA", crv: "Ed25519" },
  RS256: { alg: "RS256", modulusLength: 2048 },
  PS256: { alg: "PS256", modulusLength: 2048 },
  ES256: { alg: "ES256" },
  ES512: { alg: "ES512" },
};
if (!(alg in KEY_PAIR_CONFIGS)) {
  console.error(`better-auth test server: JWT_ALG must be one of ${Object.keys(KEY_PAIR_CONFIGS).join(", ")}`);
  process.exit(2);
}
const adminEmail = (process.env.ADMIN_EMAIL || "admin@example.com").toLowerCase();
const baseURL = `http://127.0.0.1:${port}`;
const mcpResource = process.env.MCP_RESOURCE || undefined;

// The OAuth provider, only with MCP_RESOURCE (without it the server is exactly as before).
//
// - Scopes: TaskFlow's taskflow:read and taskflow:write beside the OIDC ones.
// - Clients: MCP clients register themselves (RFC 7591, POST /api/auth/oauth2/register, no
//   session); an omitted application_type is inferred, so a loopback redirect URI registers a
//   native client. A client_credentials client (a headless agent) must be created by a signed-in
//   admin through POST /test-admin/oauth2/create-client below, which sets the scopes it may take.
// - No browser: loginPage and consentPage are stub pages on this server. A signed-in user's
//   GET /api/auth/oauth2/authorize redirects to /consent?<signed query>; POST
//   /api/auth/oauth2/consent {accept: true, oauth_query} answers {redirect, url} with the code.
const mcpPlugins = mcpResource
  ? [
      mcp({
        resource: mcpResource,
        loginPage: "/login",
        consentPage: "/consent",
        scopes: ["openid", "profile", "email", "offline_access", "taskflow:read", "taskflow:write"],
        allowDynamicClientRegistration: true,
        allowUnauthenticatedClientRegistration: true,
        clientRegistrationDefaultApplicationType: "infer",
        // Only an admin may give a client client_credentials scopes.
        clientPrivileges: ({ action, user }) =>
          action !== "configure-client-credentials-scopes" || user?.role === "admin",
      }),
    ]
  : [];

export const auth = betterAuth({
  baseURL,
  // A fixed test secret: it only encrypts the in-memory private keys of a throwaway server.
  secret: process.env.BETTER_AUTH_SECRET || "taskflow-e2e-tests-only-secret-0123456789abcdef",
  // The in-memory adapter needs every table it will hold named up front.
  database: memoryAdapter({
    ...{ user: [], session: [], account: [], verification: [], jwks: [] },
    // The OAuth provider's tables.
    ...{ oauthClient: [], oauthResource: [], oauthClientResource: [], oauthAccessToken: [] },
    ...{ oauthRefreshToken: [], oauthConsent: [], oauthClientAssertion: [] },
  }),
  emailAndPassword: { enabled: true },
  // Many sign-ins from one address in a few seconds is the test, not an attack.
  rateLimit: { enabled: false },
  telemetry: { enabled: false },
  user: {
    additionalFields: {
      // input: false — a client cannot send a role when it signs up or updates itself.
      role: { type: "string", required: false, defaultValue: "user", input: false },
    },
  },
  databaseHooks: {
    user: {
      create: {
        before: async (user) => ({
          data: { ...user, role: user.email?.toLowerCase() === adminEmail ? "admin" : "user" },
        }),
      },
    },
  },
  plugins: [
    jwt({
      jwks: { keyPairConfig: KEY_PAIR_CONFIGS[alg] },
      jwt: { definePayload: ({ user }) => ({ ...user, role: user.role ?? "user" }) },
    }),
    ...mcpPlugins,
  ],
});

const authHandler = toNodeHandler(auth);

/** Stand-ins for the login and consent pages a deployment would have: the tests script around them. */
const STUB_PAGES = {
  "/login": "login page stub: sign in with POST /api/auth/sign-in/email, then GET /api/auth/oauth2/authorize again",
  "/consent": "consent page stub: POST /api/auth/oauth2/consent {accept: true, oauth_query: <this query>}",
};

async function readJson(request) {
  const chunks = [];
  for await (const chunk of request) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString("utf8") || "{}");
}

/** POST /test-admin/oauth2/create-client: the server-only admin client creation, for a signed-in admin. */
async function createClient(request, response) {
  let body;
  try {
    body = await readJson(request);
  } catch {
    response.writeHead(400, { "content-type": "application/json" }).end('{"error":"invalid_request"}');
    return;
  }
  const result = await auth.api.adminCreateOAuthClient({
    headers: fromNodeHeaders(request.headers),
    body,
    asResponse: true,
  });
  response.writeHead(result.status, { "content-type": "application/json" }).end(await result.text());
}

async function handle(request, response) {
  const path = new URL(request.url ?? "/", baseURL).pathname;
  if (mcpResource && request.method === "GET" && path in STUB_PAGES) {
    response.writeHead(200, { "content-type": "text/plain" }).end(STUB_PAGES[path]);
  } else if (mcpResource && request.method === "POST" && path === "/test-admin/oauth2/create-client") {
    await createClient(request, response);
  } else {
    await authHandler(request, response);
  }
}

const server = createServer((request, response) => {
  handle(request, response).catch((error) => {
    console.error(error);
    if (!response.headersSent) response.writeHead(500).end();
  });
});
server.listen(port, "127.0.0.1", () => {
  const mcpNote = mcpResource ? `, OAuth provider for ${mcpResource}` : "";
  console.log(`better-auth test server (${alg}${mcpNote}) listening on ${baseURL}`);
});

function stop() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
