// The admin page: the live supervision tree with restart buttons, the consumers with
// pause/resume, the SMTP breaker and the rate limiter, and every daemon's worker health.
"use strict";




function uptime(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  if (seconds < 120) return `${Math.round(seconds)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  return `${Math.round(seconds / 3600)} h`;
}

async function act(path, label) {
  try {
    await api(path, { method: "POST" });
    $("outcome").textContent = `${label}: done.`;
    await refresh();
  } catch (err) {
    $("outcome").textContent = `${label} failed: ${err.message}`;
  }
}

function rows(node, depth, out) {
  const tr = document.createElement("tr");
  tr.dataset.actor = node.name;
  const name = text("td", `${"\u2003".repeat(depth)}${node.name}${node.kind === "supervisor" ? " (supervisor)" : ""}`);
  const failure = node.last_failure ? `${node.last_failure.reason}` : "";
  const action = document.createElement("td");
  if (depth > 0) {
    const button = text("button", "Restart");
    button.type = "button";
    button.className = "small";
    button.setAttribute("aria-label", `Restart ${node.name}`);
    button.addEventListener("click", () => act(`/admin/actors/${encodeURIComponent(node.name)}/restart`, `restart ${node.name}`));
    action.append(button);
  }
  tr.append(name, text("td", node.state, `state-${node.state}`), text("td", String(node.restart_count), "restarts"),
    text("td", uptime(node.uptime_seconds)), text("td", failure, "error-text"), action);
  out.push(tr);
  for (const child of node.children || []) rows(child, depth + 1, out);
}

function card(title, value, detail) {
  const el = document.createElement("div");
  el.className = "card";
  el.append(text("span", title), text("strong", value));
  if (detail) el.append(detail);
  return el;
}

async function refresh() {
  const [tree, status, workers] = await Promise.all([
    api("/admin/actors"), api("/admin/status"), api("/admin/workers").catch(() => []),
  ]);
  const out = [];
  rows(tree, 0, out);
  $("tree").replaceChildren(...out);

  const cards = [];
  for (const c of status.consumers) {
    const button = text("button", c.paused ? "Resume" : "Pause");
    button.type = "button";
    button.className = "small";
    button.setAttribute("aria-label", `${c.paused ? "Resume" : "Pause"} the ${c.name} consumer`);
    button.addEventListener("click", () => act(`/admin/consumers/${c.name}/${c.paused ? "resume" : "pause"}`,
      `${c.paused ? "resume" : "pause"} ${c.name}`));
    // A pause is in effect once every worker's open pull has ended.
    const shown = !c.paused ? "pulling"
      : c.workers_resting >= c.workers ? "paused"
      : `pausing (${c.workers_resting} of ${c.workers} workers stopped)`;
    const el = card(`${c.name} consumer`, shown, button);
    el.dataset.consumer = c.name;
    cards.push(el);
  }
  if (status.smtp_breaker) {
    cards.push(card("SMTP breaker", status.smtp_breaker.state.replace("_", "-")));
  }
  if (status.rate_limiter) {
    cards.push(card("Rate limiter", `${status.rate_limiter.status} (${status.rate_limiter.backend})`));
  }
  $("status").replaceChildren(...cards);

  const wrows = workers.map((w) => {
    const tr = document.createElement("tr");
    tr.append(text("td", w.worker_name), text("td", w.status, `state-${w.status}`),
      text("td", new Date(w.last_heartbeat).toLocaleTimeString()),
      text("td", String(w.metadata?.processed ?? "—")), text("td", String(w.metadata?.failed ?? "—")),
      text("td", w.error_message || "", "error-text"));
    return tr;
  });
  $("workers").replaceChildren(...wrows);
  $("no-workers").hidden = wrows.length > 0;
  $("updated").textContent = `Last update ${new Date().toLocaleTimeString()}.`;
}

async function start() {
  if (!(await startSession())) return;
  const tick = async () => {
    try {
      await refresh();
      $("error").hidden = true;
    } catch (err) {
      $("error").textContent = `Cannot refresh: ${err.message}`;
      $("error").hidden = false;
    }
    setTimeout(tick, 2000);
  };
  tick();
}

start();
