// A real Better Auth server for TaskFlow's end-to-end tests, configured the way a TaskFlow
// deployment would be: email/password sign-in, the jwt plugin, a `role` claim users cannot set.
//
//   PORT=3001 JWT_ALG=EdDSA ADMIN_EMAIL=admin@example.com node server.mjs
//
// PORT (required): the loopback port; the base URL, and so the tokens' `iss` and `aud`, is
// http://127.0.0.1:PORT. JWT_ALG: EdDSA (Better Auth's default), RS256, PS256, ES256 or ES512.
// ADMIN_EMAIL: the one email that signs up with role "admin". The store is in memory, so every
// start has no users and a new signing key (a new `kid`).
import { createServer } from "node:http";

import { betterAuth } from "better-auth";
import { memoryAdapter } from "better-auth/adapters/memory";
import { toNodeHandler } from "better-auth/node";
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

export const auth = betterAuth({
  baseURL,
  // A fixed test secret: it only encrypts the in-memory private keys of a throwaway server.
  secret: process.env.BETTER_AUTH_SECRET || "taskflow-e2e-tests-only-secret-0123456789abcdef",
  // The in-memory adapter needs every table it will hold named up front.
  database: memoryAdapter({ user: [], session: [], account: [], verification: [], jwks: [] }),
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
  ],
});

const server = createServer(toNodeHandler(auth));
server.listen(port, "127.0.0.1", () => {
  console.log(`better-auth test server (${alg}) listening on ${baseURL}`);
});

function stop() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
