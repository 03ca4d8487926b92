// The public page: submit a number, then follow the request until it has a result.
"use strict";

const form = document.getElementById("check-form");
const button = document.getElementById("submit");
const errorBox = document.getElementById("error");
const statusBox = document.getElementById("status");
const idField = document.getElementById("request-id");
const statusField = document.getElementById("request-status");
const resultField = document.getElementById("request-result");

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = false;
}

function describe(request) {
  if (request.status === "done") {
    if (request.is_prime) {
      resultField.className = "prime";
      return `${request.number} is prime.`;
    }
    resultField.className = "";
    return request.factor
      ? `${request.number} is not prime: ${request.factor} divides it.`
      : `${request.number} is not prime.`;
  }
  if (request.status === "failed") {
    return `The check failed: ${request.error || "no reason given"}.`;
  }
  return "Waiting for the workers…";
}

async function follow(id) {
  for (let delay = 300; ; delay = Math.min(delay * 1.5, 3000)) {
    const response = await fetch(`/prime-check/${encodeURIComponent(id)}`);
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      showError(body.message || `Could not read the request (HTTP ${response.status}).`);
      return;
    }
    statusField.textContent = body.status;
    resultField.textContent = describe(body);
    if (body.status !== "pending") {
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, delay));
  }
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  errorBox.hidden = true;
  const number = form.number.value.trim();
  const email = form.email.value.trim();
  if (!/^[0-9]+$/.test(number)) {
    showError("Enter a whole number made of digits only.");
    form.number.focus();
    return;
  }
  if (!email.includes("@")) {
    showError("Enter an email address like you@example.com.");
    form.email.focus();
    return;
  }
  button.disabled = true;
  try {
    const response = await fetch("/prime-check", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ number, email }),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const retry = response.headers.get("retry-after");
      showError((body.message || `The request was refused (HTTP ${response.status}).`) +
        (retry ? ` Try again in ${retry} s.` : ""));
      return;
    }
    idField.textContent = body.id;
    statusField.textContent = body.status;
    resultField.textContent = describe(body);
    statusBox.hidden = false;
    await follow(body.id);
  } catch (err) {
    showError(`The daemon could not be reached: ${err.message}.`);
  } finally {
    button.disabled = false;
  }
});
