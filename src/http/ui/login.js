// Operator login: POST /login sets the session cookie; then go where the operator wanted.
"use strict";

const form = document.getElementById("login-form");
const errorBox = document.getElementById("error");

function target() {
  const next = new URLSearchParams(location.search).get("next") || "/dlq/dashboard";
  // Only paths of this daemon.
  return next.startsWith("/") && !next.startsWith("//") ? next : "/dlq/dashboard";
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
