// stepd dashboard: plain JavaScript, no build step, no external resources.
// The operator token lives in sessionStorage and travels only in the
// Authorization header (the event stream is read with fetch, not
// EventSource, so the token never goes into a URL).
"use strict";

const $ = (sel) => document.querySelector(sel);
const TOKEN_KEY = "stepd.operatorToken";
const state = { token: sessionStorage.getItem(TOKEN_KEY) || "", jobId: null, job: null,
                stream: null, lastSeq: 0, acks: [], down: false };

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function setDown(down, why) {
  if (down === state.down) return;
  state.down = down;
  const banner = $("#banner");
  banner.hidden = !down;
  banner.textContent = down ? `The stepd server is unreachable (${why}); retrying…` : "";
  $("#conn").textContent = down ? "offline" : "connected";
  $("#conn").classList.toggle("down", down);
}

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: `Bearer ${state.token}` }, options.headers || {});
  let response;
  try {
    response = await fetch(path, Object.assign({}, options, { headers }));
  } catch (e) {
    setDown(true, e.message || "network error");
    throw new ApiError(0, "the server is unreachable");
  }
  setDown(false);
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { const body = await response.json(); if (body && body.message) message = body.message; } catch (_) {}
    throw new ApiError(response.status, message);
  }
  return response;
}

function text(tag, content, cls) {
  const el = document.createElement(tag);
  if (content !== undefined) el.textContent = content;
  if (cls) el.className = cls;
  return el;
}

function age(iso) {
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}

// ---- sign in -------------------------------------------------------------

function showLogin(message) {
  $("#login").hidden = false;
  $("#app").hidden = true;
  $("#signout").hidden = true;
  $("#login-error").textContent = message || "";
}

async function signIn(token) {
  state.token = token;
  try {
    await api("/api/queue/jobs?limit=1");
  } catch (e) {
    state.token = "";
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin(e.status ? `Refused: ${e.message}` : e.message);
    return false;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#signout").hidden = false;
  refreshJobs();
  return true;
}

$("#login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  signIn($("#token").value.trim());
});
$("#signout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = "";
  stopStream();
  showLogin("");
});

// ---- jobs list -----------------------------------------------------------

async function refreshJobs() {
  if (!state.token) return;
  const status = $("#status-filter").value;
  try {
    const body = await (await api(`/api/queue/jobs?limit=200${status ? `&status=${status}` : ""}`)).json();
    const tbody = $("#jobs-table tbody");
    // The list is redrawn every 1.5 s: a keyboard user's focus goes back to
    // the same job's button.
    const focused = document.activeElement && document.activeElement.dataset.open;
    tbody.replaceChildren();
    for (const job of body.jobs) {
      const tr = document.createElement("tr");
      tr.dataset.id = job.id;
      if (job.id === state.jobId) tr.classList.add("selected");
      // A real button in the row: reachable by Tab, opened by Enter or
      // Space, and named for screen readers.
      const open = text("button", job.id.slice(0, 8), "link");
      open.type = "button";
      open.dataset.open = job.id;
      open.setAttribute("aria-label", `Open job ${job.id}`);
      const first = text("td");
      first.append(open);
      tr.append(first, text("td", job.status, `status s-${job.status}`),
                text("td", job.currentStep ? job.currentStep.id : "—"),
                text("td", `${job.attempt}/${job.maxAttempts}`), text("td", age(job.createdAt)));
      tr.addEventListener("click", () => selectJob(job.id));
      tbody.append(tr);
      if (job.id === focused) open.focus();
    }
  } catch (e) {
    if (e.status === 401) showLogin(`Refused: ${e.message}`);
  }
}
$("#status-filter").addEventListener("change", refreshJobs);

// ---- one job ---------------------------------------------------------------

function selectJob(id) {
  if (state.jobId === id) return;
  state.jobId = id;
  state.job = null;
  state.lastSeq = 0;
  state.acks = [];
  $("#job").hidden = false;
  $("#job-id").textContent = id;
  $("#events").replaceChildren();
  $("#viewer").textContent = "Pick an artifact to read it here.";
  $("#viewer-title").textContent = "Viewer";
  $("#control-message").textContent = "";
  for (const tr of document.querySelectorAll("#jobs-table tbody tr")) {
    tr.classList.toggle("selected", tr.dataset.id === id);
  }
  startStream(id);
  refreshJob();
  refreshArtifacts();
}

function renderLiveControl(job) {
  const live = (job.payload && job.payload.liveControl) || {};
  const box = $("#live-control");
  box.replaceChildren();
  const tag = (label, on) => text("span", label, on ? "tag on" : "tag");
  box.append(tag(live.paused ? "paused" : "not paused", live.paused),
             tag(live.takeover ? "taken over" : "no takeover", live.takeover));
  if (live.recovery) {
    box.append(tag(`pending: ${live.recovery.action} of ${live.recovery.stepId} by ${live.recovery.requestedBy} — waiting for the worker`, true));
  } else if (state.acks.length) {
    const last = state.acks[state.acks.length - 1];
    box.append(tag(`acknowledged: ${last.payload.action} of ${last.payload.stepId || "—"}`, false));
  }
  if (job.cancelRequested && !["cancelled", "succeeded", "failed", "dead_letter"].includes(job.status)) {
    box.append(tag("cancel requested", true));
  }
}

function renderTimeline(job) {
  const list = $("#timeline");
  list.replaceChildren();
  const byStep = new Map();
  for (const a of job.attempts || []) {
    if (!byStep.has(a.stepIndex)) byStep.set(a.stepIndex, []);
    byStep.get(a.stepIndex).push(a);
  }
  for (const step of job.steps) {
    const li = text("li");
    const current = job.currentStep && job.currentStep.index === step.index && job.status === "running";
    li.className = step.finished ? "done" : current ? "current" : "";
    li.dataset.step = step.id;
    li.append(text("strong", step.id), text("span", ` ${step.title || ""}`),
              text("span", step.finished ? " · finished" : current ? " · running" : ""));
    const caps = step.capabilities || {};
    const grants = [
      ...(caps.env || []).map((name) => `env ${name}`),
      ...(caps.secrets || []).map((name) => `secret ${name}`),
      ...(caps.mounts || []).map((m) => `mount ${m.guest} (read-only)`),
      ...((caps.http || {}).origins || []).map((origin) => `http ${origin}`),
    ];
    if (grants.length) li.append(text("div", `grants: ${grants.join(" · ")}`, "grants"));
    const chips = text("div", undefined, "attempts");
    for (const a of byStep.get(step.index) || []) {
      const ok = a.outcome === "succeeded";
      const parts = [`#${a.attempt}`, a.outcome];
      if (a.failureClass) parts.push(a.failureClass);
      if (a.strategy) parts.push(`→ ${a.strategy}`);
      parts.push(`${a.wallClockSeconds.toFixed(2)} s`);
      if (a.fuelConsumed !== null && a.fuelConsumed !== undefined) parts.push(`fuel ${a.fuelConsumed.toLocaleString()}`);
      const chip = text("span", parts.join(" · "), `attempt ${ok ? "ok" : "fail"}`);
      chip.dataset.strategy = a.strategy || "";
      chips.append(chip);
    }
    li.append(chips);
    // Each attempt's HTTP requests: what was called, what came back, what
    // the grant refused (never a query, a header or a body).
    const calls = text("ul", undefined, "http");
    for (const a of byStep.get(step.index) || []) {
      for (const r of a.http || []) {
        const parts = [`#${a.attempt}`, r.method, `${r.origin}${r.path}`];
        if (r.denied) parts.push(`denied: ${r.denied}`);
        else {
          if (r.status !== null && r.status !== undefined) parts.push(String(r.status));
          parts.push(`${r.responseBytes} B`, `${r.ms.toFixed(1)} ms`);
          if (r.error) parts.push(`error: ${r.error}`);
        }
        calls.append(text("li", parts.join(" · "), r.denied ? "denied" : r.error ? "fail" : "ok"));
      }
    }
    if (calls.children.length) li.append(calls);
    list.append(li);
  }
}

function renderResumeChoices(job) {
  const select = $("#resume-step");
  const keep = select.value;
  select.replaceChildren();
  for (const step of job.steps) {
    if (step.index <= job.firstUnfinishedStep && step.index < job.steps.length) {
      const option = text("option", step.id);
      option.value = step.id;
      select.append(option);
    }
  }
  if ([...select.options].some((o) => o.value === keep)) select.value = keep;
}

async function refreshJob() {
  const id = state.jobId;
  if (!id || !state.token) return;
  try {
    const job = await (await api(`/api/queue/jobs/${encodeURIComponent(id)}`)).json();
    if (id !== state.jobId) return;
    state.job = job;
    const status = $("#job-status");
    status.textContent = job.status;
    status.className = `status s-${job.status}`;
    renderLiveControl(job);
    renderTimeline(job);
    renderResumeChoices(job);
  } catch (e) {
    if (e.status === 401) showLogin(`Refused: ${e.message}`);
  }
}

// ---- events (server-sent events read with fetch) ---------------------------

// A burst of events asks for one refresh, not one per event.
const pending = new Set();
function soon(refresh) {
  if (pending.has(refresh)) return;
  pending.add(refresh);
  setTimeout(() => { pending.delete(refresh); refresh(); }, 150);
}

function stopStream() {
  if (state.stream) state.stream.abort();
  state.stream = null;
}

function showEvent(event) {
  state.lastSeq = Math.max(state.lastSeq, event.seq);
  if (event.event === "task.control.recovery.ack") state.acks.push(event);
  const li = text("li");
  li.dataset.event = event.event;
  const p = event.payload || {};
  const detail = [p.stepId, p.attempt !== undefined ? `#${p.attempt}` : "", p.failureClass, p.strategy, p.action, p.mode,
                  p.reason].filter(Boolean).join(" ");
  li.append(text("span", `${event.seq} `), text("span", event.event, "name"), text("span", detail ? ` ${detail}` : ""));
  const list = $("#events");
  list.append(li);
  list.scrollTop = list.scrollHeight;
}

async function startStream(id) {
  stopStream();
  const controller = new AbortController();
  state.stream = controller;
  while (!controller.signal.aborted && state.jobId === id) {
    try {
      const response = await api(`/api/queue/jobs/${encodeURIComponent(id)}/events?after=${state.lastSeq}`,
                                  { headers: { Accept: "text/event-stream" }, signal: controller.signal });
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
          if (!data) continue;
          const event = JSON.parse(data);
          if (state.jobId !== id || event.seq <= state.lastSeq) continue;
          showEvent(event);
          soon(refreshJob);
          if (/^task\.(step\.attempt\.(finished|failed)|job\.)/.test(event.event)) soon(refreshArtifacts);
        }
      }
    } catch (e) {
      if (controller.signal.aborted) return;
      if (e.status === 401) { showLogin(`Refused: ${e.message}`); return; }
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

// ---- artifacts -------------------------------------------------------------

async function refreshArtifacts() {
  const id = state.jobId;
  if (!id) return;
  try {
    const body = await (await api(`/api/queue/jobs/${encodeURIComponent(id)}/artifacts`)).json();
    const list = $("#artifacts");
    const focused = document.activeElement && document.activeElement.dataset.path;
    list.replaceChildren();
    for (const a of body.artifacts) {
      const li = text("li");
      const link = text("button", a.path, "link");
      link.type = "button";
      link.dataset.path = a.path;
      link.setAttribute("aria-label", `View ${a.path}`);
      link.addEventListener("click", () => openArtifact(id, a.path));
      li.append(link, text("span", ` (${a.size} B)`));
      list.append(li);
      if (a.path === focused) link.focus();
    }
  } catch (_) {}
}

async function openArtifact(id, path) {
  const url = `/api/queue/jobs/${encodeURIComponent(id)}/artifacts/${path.split("/").map(encodeURIComponent).join("/")}`;
  try {
    const response = await api(url);
    if (/\.(log|json|jsonl|patch|txt)$/.test(path)) {
      $("#viewer-title").textContent = path;
      $("#viewer").textContent = await response.text();
    } else {
      const blob = await response.blob();
      const a = document.createElement("a");
      a.href = URL.createObjectURL(blob);
      a.download = path.split("/").pop();
      a.click();
      URL.revokeObjectURL(a.href);
    }
  } catch (e) {
    $("#viewer").textContent = `Could not open ${path}: ${e.message}`;
  }
}

// ---- control buttons ---------------------------------------------------------

for (const button of document.querySelectorAll("button[data-action]")) {
  button.addEventListener("click", async () => {
    const job = state.job;
    if (!job) return;
    const action = button.dataset.action;
    const body = { action };
    if (action === "retry_step" || action === "hard_reset_step") {
      if (job.currentStep) body.stepId = job.currentStep.id;
    } else if (action === "resume_from_step") {
      body.stepId = $("#resume-step").value;
    }
    const reason = window.prompt(`Reason for ${button.textContent} (optional)`, "");
    if (reason === null) return;
    if (reason.trim()) body.reason = reason.trim();
    const message = $("#control-message");
    try {
      const result = await (await api(`/api/task-runs/${encodeURIComponent(job.id)}/control`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      })).json();
      message.className = "message";
      message.textContent = `${button.textContent}: accepted${result.note ? ` (${result.note})` : ""}; job is ${result.job.status}.`;
      refreshJob();
      refreshJobs();
    } catch (e) {
      message.className = "message error";
      message.textContent = `${button.textContent} refused: ${e.message}`;
    }
  });
}

// ---- start -------------------------------------------------------------------

setInterval(() => { refreshJobs(); refreshJob(); }, 1500);
if (state.token) signIn(state.token); else showLogin("");
