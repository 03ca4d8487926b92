// Operator login: POST /login sets the session cookie; then go where the operator wanted.
"use strict";

const form = document.getElementById("login-form");
const errorBox = document.getElementById("error");

// Where to go after login: `next` only if it resolves to a page of this daemon. A string
// check is not enough: browsers read "/\\evil.example" and "/\t/evil.example" as another
// host, so resolve it the way the browser will and compare origins.
function target() {
  const fallback = "/dlq/dashboard";
  const next = new URLSearchParams(location.search).get("next");
  if (!next || !next.startsWith("/")) return fallback;
  let url;
  try {
    url = new URL(next, location.origin);
  } catch {
    return fallback;
  }
  if (url.origin !== location.origin) return fallback;
  return url.pathname + url.search + url.hash;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  errorBox.hidden = true;
  const operator = form.operator.value.trim();
  const token = form.token.value.trim();
  if (!operator || !token) {
    errorBox.textContent = "Enter your name and an admin token.";
    errorBox.hidden = false;
    return;
  }
  const response = await fetch("/login", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ operator, token }),
  });
  if (response.ok) {
    location.assign(target());
    return;
  }
  const body = await response.json().catch(() => ({}));
  errorBox.textContent = body.message || `Login failed (HTTP ${response.status}).`;
  errorBox.hidden = false;
  form.token.select();
});
