// What the operator pages share: element lookup, text nodes, the API with the session's
// CSRF token, and the session itself (a visitor without one is sent to /login).
"use strict";

const $ = (id) => document.getElementById(id);
const primed = { session: null };

function text(tag, value, className) {
  const el = document.createElement(tag);
  el.textContent = value;
  if (className) el.className = className;
  return el;
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (options.body) headers["content-type"] = "application/json";
  if (options.method && options.method !== "GET") headers["x-csrf-token"] = primed.session.csrf_token;
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) {
    location.assign(`/login?next=${encodeURIComponent(location.pathname + location.search)}`);
    throw new Error("not logged in");
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.message || `HTTP ${response.status}`);
  return body;
}

// Reads the session (or leaves for /login), shows the operator, wires the logout button.
async function startSession() {
  try {
    primed.session = await api("/api/session");
  } catch {
    return false;
  }
  $("operator").textContent = primed.session.operator;
  $("logout").addEventListener("click", async () => {
    await fetch("/logout", { method: "POST" });
    location.assign("/login");
  });
  return true;
}
