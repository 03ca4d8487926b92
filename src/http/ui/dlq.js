// The DLQ dashboard: groups of dead letters that failed the same way (listed, opened,
// discarded at once), statistics, a filtered and paged list, a detail view with its audit
// trail and edit-and-replay (previewed as a diff), and reprocess/discard of the selected
// messages. It talks to /api/dlq/* with the session
// cookie and the session's CSRF token; without a session it sends the operator to /login.
"use strict";

let cursor = null;
const selected = new Set();
let current = null; // the letter shown in the detail view
let pendingEdit = null; // the previewed edit, sent as is

// The payload fields an operator may edit, by subject (as the API allows).
const EDITABLE = { "primecheck.requested": ["email", "number"], "email.send": ["email"] };

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

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

async function loadGroups() {
  const page = await api(`/api/dlq/groups?sort=${$("group-sort").value}`);
  const rows = $("groups");
  rows.replaceChildren();
  for (const g of page.groups) {
    const tr = document.createElement("tr");
    tr.dataset.fingerprint = g.fingerprint;
    const show = document.createElement("button");
    show.type = "button";
    show.className = "small";
    show.textContent = "Show letters";
    show.setAttribute("aria-label", `Show the ${g.count} letters of this group`);
    show.addEventListener("click", () => {
      $("group-filter").value = g.fingerprint;
      loadList(false).then(() => $("list-title").scrollIntoView()).catch((err) => showError(err.message));
    });
    const replay = document.createElement("button");
    replay.type = "button";
    replay.className = "small";
    replay.textContent = "Replay group";
    replay.setAttribute("aria-label", `Replay the ${g.count} letters of this group safely`);
    replay.addEventListener("click", () => replayGroup(g));
    const discard = document.createElement("button");
    discard.type = "button";
    discard.className = "small danger";
    discard.textContent = "Discard group";
    discard.setAttribute("aria-label", `Discard the ${g.count} letters of this group`);
    discard.addEventListener("click", () => discardGroup(g));
    const actions = document.createElement("td");
    actions.append(show, " ", replay, " ", discard);
    const signature = text("td", g.signature, "error-text");
    signature.title = g.example_error;
    tr.append(text("td", String(g.count)), text("td", g.original_subject), text("td", g.error_type),
      signature, text("td", new Date(g.first_seen).toLocaleString()),
      text("td", new Date(g.last_seen).toLocaleString()), actions);
    rows.append(tr);
  }
  $("groups-empty").hidden = page.groups.length > 0;
}

async function discardGroup(g) {
  const reason = $("reason").value.trim() || null;
  if (!confirm(`Discard all ${g.count} pending letters of this group?\n${g.signature}`)) return;
  try {
    const out = await api(`/api/dlq/groups/${g.fingerprint}/discard`, {
      method: "POST",
      body: JSON.stringify({ operator: primed.session.operator, reason }),
    });
    await refresh();
    $("group-outcome").replaceChildren(text("p", `Discarded ${plural(out.discarded, "letter")} of the group.`));
  } catch (err) {
    showError(`discard of the group failed: ${err.message}`);
  }
}

async function replayGroup(g) {
  const reason = $("reason").value.trim() || null;
  try {
    const job = await api("/api/dlq/replays", {
      method: "POST",
      body: JSON.stringify({
        fingerprint: g.fingerprint,
        canary: Number($("replay-canary").value) || 5,
        rate_per_second: Number($("replay-rate").value) || 10,
        operator: primed.session.operator,
        reason,
      }),
    });
    $("group-outcome").replaceChildren(text("p", `Replay job ${job.id} started: ${plural(job.total, "letter")}.`));
    await loadJobs();
  } catch (err) {
    showError(`replay of the group failed: ${err.message}`);
  }
}

let jobsTimer = null;

function jobItem(job) {
  const li = document.createElement("li");
  li.dataset.job = job.id;
  li.dataset.state = job.state;
  const bar = document.createElement("progress");
  bar.max = 1;
  bar.value = job.progress;
  bar.setAttribute("aria-label", `Replay job ${job.id}: ${Math.round(job.progress * 100)} %`);
  const eta = job.eta_seconds === null ? "" : `, about ${Math.ceil(job.eta_seconds)} s left`;
  const by = job.trigger === "smtp_healed" ? "started when SMTP healed" : `by ${job.operator}`;
  li.append(text("small", `#${job.id} ${by}${job.reason ? ` (${job.reason})` : ""}`, "help"), document.createElement("br"));
  const summary = `#${job.id} ${job.state}: ${job.done}/${job.total} done — ${job.succeeded} ok, `
    + `${job.failed} failed, ${job.skipped} skipped, ${job.in_flight} in flight, `
    + `${job.rate.toFixed(1)}/s${eta}`;
  li.append(text("span", summary, "job-summary"), bar);
  if (job.stop_reason) li.append(text("p", job.stop_reason, job.state === "aborted" ? "error" : ""));
  const controls = [];
  if (job.state === "running") controls.push(["pause", "Pause"], ["cancel", "Cancel"]);
  if (job.state === "paused") controls.push(["resume", "Resume"], ["cancel", "Cancel"]);
  for (const [action, label] of controls) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = action === "cancel" ? "small danger" : "small";
    b.textContent = label;
    b.setAttribute("aria-label", `${label} replay job ${job.id}`);
    b.addEventListener("click", async () => {
      try {
        await api(`/api/dlq/replays/${job.id}/${action}`, {
          method: "POST",
          body: JSON.stringify({ operator: primed.session.operator, reason: $("reason").value.trim() || null }),
        });
        await loadJobs();
      } catch (err) {
        showError(`${action} of replay job ${job.id} failed: ${err.message}`);
      }
    });
    li.append(" ", b);
  }
  return li;
}

// Lists the recent jobs; while one runs, looks again every second (and refreshes the rest
// when one ends).
async function loadJobs() {
  const page = await api("/api/dlq/replays?limit=10");
  const before = [...$("jobs").children].filter((li) => li.dataset.state === "running").length;
  $("jobs").replaceChildren(...page.jobs.map(jobItem));
  $("jobs-empty").hidden = page.jobs.length > 0;
  const running = page.jobs.filter((j) => j.state === "running").length;
  if (running < before) await Promise.all([loadGroups(), loadList(false), loadStats()]);
  clearTimeout(jobsTimer);
  if (running > 0) jobsTimer = setTimeout(() => loadJobs().catch((err) => showError(err.message)), 1000);
}

function refresh() {
  return Promise.all([loadGroups(), loadJobs(), loadList(false), loadStats()]);
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
  $("detail-audit").replaceChildren(...(letter.audit.length ? letter.audit.map((a) => {
    const li = text("li", `${new Date(a.at).toLocaleString()} — ${a.operator}: ${a.action}`
      + `${a.reason ? ` (${a.reason})` : ""}`);
    if (a.action === "edit") {
      const changed = Object.keys(a.detail.after || {})
        .filter((k) => JSON.stringify(a.detail.before[k]) !== JSON.stringify(a.detail.after[k]));
      for (const k of changed) {
        li.append(text("code", ` ${k}: ${JSON.stringify(a.detail.before[k])} → ${JSON.stringify(a.detail.after[k])}`));
      }
    }
    return li;
  }) : [text("li", "No operator action yet.")]));
  current = letter;
  showEditor(letter);
  $("detail").hidden = false;
  $("detail").scrollIntoView();
}

function showEditor(letter) {
  const fields = (EDITABLE[letter.original_subject] || []).filter((f) =>
    letter.payload && typeof letter.payload === "object" && f in letter.payload);
  $("edit").hidden = letter.status !== "pending" || fields.length === 0;
  $("edit-field").replaceChildren(...fields.map((f) => text("option", f)));
  $("edit-value").value = fields.length ? String(letter.payload[fields[0]]) : "";
  $("edit-diff").hidden = true;
  $("edit-outcome").replaceChildren();
  pendingEdit = null;
}

function editBody(dryRun) {
  return {
    set: { [$("edit-field").value]: $("edit-value").value.trim() },
    dry_run: dryRun,
    operator: primed.session.operator,
    reason: $("edit-reason").value.trim() || null,
  };
}

async function previewEdit() {
  $("edit-outcome").replaceChildren();
  const body = editBody(true);
  try {
    const out = await api(`/api/dlq/messages/${current.id}/edit`, { method: "POST", body: JSON.stringify(body) });
    $("edit-diff-rows").replaceChildren(...out.diff.map((c) => {
      const tr = document.createElement("tr");
      tr.append(text("td", c.field), text("td", JSON.stringify(c.before), "diff-before"),
        text("td", JSON.stringify(c.after), "diff-after"));
      return tr;
    }));
    pendingEdit = { ...body, dry_run: false };
    $("edit-diff").hidden = false;
    $("edit-send").focus();
  } catch (err) {
    $("edit-diff").hidden = true;
    $("edit-outcome").replaceChildren(text("p", `Not accepted: ${err.message}`, "error"));
  }
}

async function sendEdit() {
  if (!pendingEdit) return;
  try {
    const out = await api(`/api/dlq/messages/${current.id}/edit`, {
      method: "POST",
      body: JSON.stringify(pendingEdit),
    });
    pendingEdit = null;
    $("edit-diff").hidden = true;
    const id = current.id;
    await refresh();
    await showDetail(id);
    $("edit-outcome").replaceChildren(text("p", `Edited and replayed as event ${out.event_id}.`));
  } catch (err) {
    $("edit-outcome").replaceChildren(text("p", `Not sent: ${err.message}`, "error"));
  }
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
    await refresh();
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
  $("group-sort").addEventListener("change", () => loadGroups().catch((err) => showError(err.message)));
  $("edit-form").addEventListener("submit", (e) => {
    e.preventDefault();
    previewEdit();
  });
  $("edit-field").addEventListener("change", () => {
    $("edit-value").value = String(current.payload[$("edit-field").value] ?? "");
    $("edit-diff").hidden = true;
    pendingEdit = null;
  });
  $("edit-send").addEventListener("click", sendEdit);
  $("edit-cancel").addEventListener("click", () => {
    $("edit-diff").hidden = true;
    pendingEdit = null;
  });
  try {
    await refresh();
  } catch (err) {
    showError(err.message);
  }
}

start();
