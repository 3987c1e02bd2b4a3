// How a browser frontend calls TaskFlow: the JWT comes from Better Auth (authClient.token() or
// the set-auth-jwt header of getSession), and goes to TaskFlow as a bearer token.
"use strict";

document.getElementById("origin").textContent = window.location.origin;

// Returns what the script could read of the response, or the error when the browser refused it.
async function callTaskFlow(apiBase, token, method, path, body) {
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let result;
  try {
    const response = await fetch(apiBase + path, {
      method,
      headers,
      credentials: "include",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    result = {
      status: response.status,
      totalCount: response.headers.get("X-Total-Count"),
      requestId: response.headers.get("X-Request-ID"),
      body: text ? JSON.parse(text) : null,
    };
  } catch (error) {
    // A CORS refusal: the browser hides the response and reports only a network error.
    result = { error: `${error.name}: ${error.message}` };
  }
  show(method, path, result);
  return result;
}

function show(method, path, result) {
  const entry = document.createElement("pre");
  entry.textContent = `${method} ${path}\n${JSON.stringify(result, null, 2)}`;
  document.getElementById("calls").append(entry);
}

window.callTaskFlow = callTaskFlow;
