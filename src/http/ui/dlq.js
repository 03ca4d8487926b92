// The DLQ dashboard: statistics, a filtered and paged list, a detail view, and
// reprocess/discard of the selected messages. It talks to /api/dlq/* with the session
// cookie and the session's CSRF token; without a session it sends the operator to /login.
"use strict";

let cursor = null;
const selected = new Set();

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}



function bars(container, entries) {
  container.replaceChildren();
  if (entries.length === 0) {
    container.append(text("p", "Nothing in this period."));
    return;
  }
  const max = Math.max(...entries.map(([, n]) => n), 1);
  for (const [label, n] of entries) {
    const row = document.createElement("div");
    row.className = "row";
    const fill = document.createElement("div");
    fill.className = "bar-fill";
    fill.style.width = `${(100 * n) / max}%`;
    const track = document.createElement("div");
    track.append(fill);
    row.append(text("span", label), track, text("span", String(n)));
    container.append(row);
  }
}

async function loadStats() {
  const stats = await api("/api/dlq/stats?hours=24");
  const cards = $("status-counts");
  cards.replaceChildren();
  for (const status of ["pending", "reprocessing", "resolved", "discarded"]) {
    const card = document.createElement("div");
    card.className = "card";
    card.dataset.status = status;
    card.append(text("strong", String(stats.by_status[status] || 0)), text("span", status));
    cards.append(card);
  }
  bars($("by-type"), Object.entries(stats.by_error_type));
  const hours = new Map();
  for (const b of stats.hourly) {
    const hour = new Date(b.hour).toISOString().slice(11, 16);
    hours.set(hour, (hours.get(hour) || 0) + b.count);
  }
  bars($("by-hour"), [...hours.entries()].sort());
}

function filters() {
  const params = new URLSearchParams();
  for (const [key, value] of new FormData($("filters"))) {
    if (!value) continue;
    params.set(key, key === "since" || key === "until" ? new Date(value).toISOString() : value);
  }
  return params;
}

function updateButtons() {
  $("reprocess").disabled = selected.size === 0;
  $("discard").disabled = selected.size === 0;
}

async function loadList(more) {
  const params = filters();
  params.set("limit", "50");
  if (more && cursor) params.set("cursor", cursor);
  const page = await api(`/api/dlq/messages?${params}`);
  const rows = $("rows");
  if (!more) {
    rows.replaceChildren();
    selected.clear();
  }
  for (const letter of page.items) {
    const tr = document.createElement("tr");
    tr.dataset.id = letter.id;
    const box = document.createElement("input");
    box.type = "checkbox";
    box.setAttribute("aria-label", `Select dead letter ${letter.id}`);
    box.addEventListener("change", () => {
      if (box.checked) selected.add(letter.id); else selected.delete(letter.id);
      tr.classList.toggle("selected-row", box.checked);
      updateButtons();
    });
    const cell = document.createElement("td");
    cell.append(box);
    const open = document.createElement("button");
    open.type = "button";
    open.className = "link";
    open.textContent = String(letter.id);
    open.addEventListener("click", () => showDetail(letter.id));
    const idCell = document.createElement("td");
    idCell.append(open);
    tr.append(cell, idCell, text("td", letter.original_subject), text("td", letter.error_type),
      text("td", letter.status), text("td", letter.error_message, "error-text"),
      text("td", new Date(letter.dlq_created_at).toLocaleString()));
    rows.append(tr);
  }
  cursor = page.next_cursor;
  $("more").hidden = !cursor;
  $("empty").hidden = rows.children.length > 0;
  updateButtons();
}

async function showDetail(id) {
  const letter = await api(`/api/dlq/messages/${id}`);
  $("detail-id").textContent = String(letter.id);
  const fields = $("detail-fields");
  fields.replaceChildren();
  for (const key of ["status", "original_subject", "dlq_subject", "error_type", "error_message",
    "retry_count", "reprocess_count", "auto_retry_count", "original_message_id", "request_id",
    "original_created_at", "dlq_created_at", "last_retry_at", "operator", "reason",
    "resolved_by", "resolved_at"]) {
    if (letter[key] === null || letter[key] === undefined) continue;
    fields.append(text("dt", key.replaceAll("_", " ")), text("dd", String(letter[key])));
  }
  $("detail-payload").textContent = JSON.stringify(letter.payload, null, 2);
  $("detail-trace").textContent = letter.trace_id || "not retained";
  $("detail-history").replaceChildren(...letter.history.map((h) => {
    const tr = document.createElement("tr");
    tr.append(text("td", new Date(h.at).toLocaleString()), text("td", h.subject),
      text("td", h.status), text("td", h.processing_time_ms === null ? "—" : `${h.processing_time_ms} ms`),
      text("td", h.error_message || "", "error-text"));
    return tr;
  }));
  $("detail").hidden = false;
  $("detail").scrollIntoView();
}

async function act(kind) {
  const ids = [...selected];
  const reason = $("reason").value.trim() || null;
  const body = { message_ids: ids, operator: primed.session.operator, reason };
  if (kind === "reprocess") {
    const delay = $("delay").value.trim();
    if (delay) body.override_delay = delay;
  }
  try {
    const out = await api(kind === "reprocess" ? "/api/dlq/reprocess" : "/api/dlq/discard", {
      method: kind === "reprocess" ? "POST" : "DELETE",
      body: JSON.stringify(body),
    });
    // Refresh first, so that the outcome appears next to the rows as they are now.
    await Promise.all([loadList(false), loadStats()]);
    const box = $("outcome");
    box.replaceChildren(text("p", `${kind}: ${out.succeeded} done, ${out.failed} not done.`));
    const list = document.createElement("ul");
    for (const r of out.results) {
      list.append(text("li", `#${r.id}: ${r.ok ? "ok" : r.error}`));
    }
    box.append(list);
  } catch (err) {
    showError(`${kind} failed: ${err.message}`);
  }
}

async function start() {
  if (!(await startSession())) return;
  $("filters").addEventListener("submit", (e) => {
    e.preventDefault();
    Promise.all([loadList(false), loadStats()]).catch((err) => showError(err.message));
  });
  $("more").addEventListener("click", () => loadList(true).catch((err) => showError(err.message)));
  $("select-all").addEventListener("change", (e) => {
    for (const box of $("rows").querySelectorAll("input[type=checkbox]")) {
      if (box.checked !== e.target.checked) box.click();
    }
  });
  $("reprocess").addEventListener("click", () => act("reprocess"));
  $("discard").addEventListener("click", () => act("discard"));
  try {
    await Promise.all([loadStats(), loadList(false)]);
  } catch (err) {
    showError(err.message);
  }
}

start();
