// xflow serve's web view: workflows, their graph, live executions, one execution's states, re-drive.
// Plain JavaScript run by the browser as shipped (no build step, nothing loaded from elsewhere). Every value that
// comes from the server is put into the page as text (textContent), never as markup; the graph is the server's SVG.
"use strict";

const TOKEN_KEY = "xflow-serve-token";
const STATES = ["succeeded", "processed", "failed", "pending", "running", "not_reached", "unknown"];
const POLL_MS = 1500;
const PAGE = 20;

const view = { workflows: [], workflow: null, detail: null, limit: PAGE, timer: null, busy: false };
const $ = (selector) => document.querySelector(selector);

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options = {}) {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers["Authorization"] = "Bearer " + token;
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method: options.method || "GET", body: options.body, headers });
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    askForToken();
    throw new ApiError(401, "this server needs its token");
  }
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) {
    const text = body && body.error ? body.error + (body.hint ? " (hint: " + body.hint + ")" : "") : String(body);
    throw new ApiError(response.status, text);
  }
  return body;
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function badge(state) {
  return el("span", state.replace("_", " "), "badge state-" + state);
}

function shortTime(iso) {
  return iso ? iso.replace("T", " ").replace(/\.\d+Z$|Z$/, "") : "-";
}

function say(text, info) {
  const box = $("#message");
  box.textContent = text || "";
  box.classList.toggle("hidden", !text);
  box.classList.toggle("info", Boolean(info));
}

function askForToken() {
  $("#token-form").classList.remove("hidden");
  $("#main").classList.add("hidden");
  $("#token-input").focus();
}

// -- workflows -----------------------------------------------------------------------------------
async function start() {
  try {
    const answer = await api("/workflows");
    view.workflows = answer.workflows;
  } catch (error) {
    if (error.status !== 401) say(error.message);
    return;
  }
  $("#token-form").classList.add("hidden");
  $("#main").classList.remove("hidden");
  const tabs = $("#workflow-tabs");
  tabs.replaceChildren();
  for (const workflow of view.workflows) {
    const tab = el("button", workflow.workflow_id);
    tab.type = "button";
    tab.dataset.workflow = workflow.workflow_id;
    tab.addEventListener("click", () => selectWorkflow(workflow.workflow_id));
    tabs.append(tab);
  }
  const [wanted, execution] = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const first = view.workflows.find((w) => w.workflow_id === wanted) || view.workflows[0];
  if (first) await selectWorkflow(first.workflow_id, execution);
  else say("This server serves no workflow.");
}

async function selectWorkflow(id, execution) {
  view.workflow = id;
  view.detail = null;
  view.limit = PAGE;
  for (const tab of document.querySelectorAll("#workflow-tabs button")) {
    tab.setAttribute("aria-current", String(tab.dataset.workflow === id));
  }
  const path = "/workflows/" + encodeURIComponent(id);
  const [described, svg] = await Promise.all([api(path), api(path + "/graph.svg")]);
  $("#workflow-title").textContent = "Workflow " + described.workflow_id;
  const plugins = described.plugins;
  $("#workflow-plugins").textContent =
    `${described.file}: transport ${plugins.transport}, provider ${plugins.provider}, tracker ${plugins.tracker}`;
  const parsed = new DOMParser().parseFromString(svg, "image/svg+xml").documentElement;
  $("#graph").replaceChildren(document.importNode(parsed, true));
  const events = $("#publish-event");
  events.replaceChildren(...described.flow.map((name) => el("option", name)));
  $("#detail").classList.add("hidden");
  colourGraph(null);
  await refreshExecutions();
  if (execution) await openExecution(execution);
  else location.hash = "#/" + encodeURIComponent(id);
  schedule();
}

// -- executions table (polled) -------------------------------------------------------------------
async function refreshExecutions() {
  const id = view.workflow;
  const status = $("#status-filter").value;
  const query = new URLSearchParams({ limit: String(view.limit) });
  if (status) query.set("status", status);
  const listing = await api(`/workflows/${encodeURIComponent(id)}/executions?${query}`);
  if (id !== view.workflow) return;
  const body = $("#executions-table tbody");
  const rows = listing.executions.map((execution) => {
    const row = el("tr");
    row.dataset.executionId = execution.execution_id;
    row.dataset.status = execution.status;
    if (view.detail === execution.execution_id) row.classList.add("selected");
    const status = el("td");
    status.className = "status";
    status.append(badge(execution.status));
    row.append(el("td", execution.execution_id, "mono"), status, el("td", shortTime(execution.started_at)),
      el("td", execution.last_unprocessed_event || "-"), el("td", execution.failed_functions.join(", ") || "-"));
    row.addEventListener("click", () => openExecution(execution.execution_id));
    return row;
  });
  body.replaceChildren(...rows);
  $("#executions-empty").classList.toggle("hidden", rows.length > 0);
  $("#more").classList.toggle("hidden", !listing.next_cursor || view.limit >= 200);
}

function schedule() {
  clearTimeout(view.timer);
  view.timer = setTimeout(async () => {
    if (!view.busy && !document.hidden) {
      view.busy = true;
      try {
        await refreshExecutions();
        if (view.detail) await showExecution(view.detail);
        $("#live").textContent = "live";
      } catch (error) {
        $("#live").textContent = "offline";
      } finally {
        view.busy = false;
      }
    }
    schedule();
  }, POLL_MS);
}

// -- one execution -------------------------------------------------------------------------------
async function openExecution(executionId) {
  view.detail = executionId;
  location.hash = "#/" + encodeURIComponent(view.workflow) + "/" + encodeURIComponent(executionId);
  for (const row of document.querySelectorAll("#executions-table tbody tr")) {
    row.classList.toggle("selected", row.dataset.executionId === executionId);
  }
  try {
    await showExecution(executionId);
    say("");
  } catch (error) {
    say(error.message);
  }
}

async function showExecution(executionId) {
  const path = `/workflows/${encodeURIComponent(view.workflow)}/executions/${encodeURIComponent(executionId)}`;
  const summary = await api(path);
  if (view.detail !== executionId) return;
  $("#detail").classList.remove("hidden");
  $("#detail-id").textContent = summary.execution_id;
  const status = $("#detail-status");
  status.className = "badge state-" + summary.status;
  status.textContent = summary.status;
  $("#detail-last").textContent = summary.last_unprocessed_event || "none: every event was processed";
  const warning = $("#detail-warning");
  warning.textContent = summary.warning || "";
  warning.classList.toggle("hidden", !summary.warning);
  const rows = summary.events.map((event) => {
    const row = el("tr");
    row.dataset.event = event.name;
    const state = el("td");
    state.append(badge(event.state));
    const subscribers = el("td");
    for (const subscriber of event.subscribers) {
      const item = el("div");
      item.dataset.function = subscriber.name;
      item.append(el("span", subscriber.name + " "), badge(subscriber.state),
        el("span", ` ${subscriber.attempts} attempt${subscriber.attempts === 1 ? "" : "s"}`, "muted"));
      subscribers.append(item);
    }
    if (!event.subscribers.length) subscribers.textContent = "-";
    row.append(el("td", event.name), state, el("td", event.count), el("td", shortTime(event.first_published_at)),
      subscribers);
    return row;
  });
  $("#detail-events tbody").replaceChildren(...rows);
  const failures = [];
  for (const event of summary.events) {
    for (const subscriber of event.subscribers) {
      if (subscriber.state !== "failed") continue;
      const box = el("div", null, "failure");
      box.dataset.function = subscriber.name;
      box.append(el("h3", `${subscriber.name} failed on ${event.name} after ${subscriber.attempts} attempts`));
      box.append(el("pre", subscriber.error || "(no error recorded)", "error"));
      if (subscriber.logs.length) box.append(el("pre", subscriber.logs.join("\n"), "logs"));
      failures.push(box);
    }
  }
  $("#failures").replaceChildren(...failures);
  $("#redrive").classList.toggle("hidden", failures.length === 0);
  colourGraph(summary);
}

function colourGraph(summary) {
  const svg = $("#graph svg");
  if (!svg) return;
  for (const item of svg.querySelectorAll(".node, .edge")) {
    item.classList.remove(...STATES.map((state) => "state-" + state));
  }
  if (!summary) return;
  const functionStates = {};
  const eventStates = {};
  for (const event of summary.events) {
    eventStates[event.name] = event.state;
    for (const subscriber of event.subscribers) {
      const state = event.state === "not_reached" ? "not_reached" : subscriber.state;
      (functionStates[subscriber.name] = functionStates[subscriber.name] || []).push(state);
      for (const edge of svg.querySelectorAll(".edge.sub")) {
        if (edge.dataset.event === event.name && edge.dataset.function === subscriber.name) {
          edge.classList.add("state-" + state);
        }
      }
    }
  }
  for (const node of svg.querySelectorAll(".node.event")) {
    node.classList.add("state-" + (eventStates[node.dataset.event] || "not_reached"));
  }
  for (const node of svg.querySelectorAll(".node.function")) {
    const states = functionStates[node.dataset.function] || [];
    const state = states.includes("failed") ? "failed" : states.includes("pending") ? "pending"
      : states.includes("succeeded") ? "succeeded" : "not_reached";
    node.classList.add("state-" + state);
  }
  for (const edge of svg.querySelectorAll(".edge.pub")) {
    const reached = eventStates[edge.dataset.event] && eventStates[edge.dataset.event] !== "not_reached";
    if (reached) edge.classList.add("state-succeeded");
  }
}

// -- actions -------------------------------------------------------------------------------------
async function redrive() {
  const button = $("#redrive");
  button.disabled = true;
  try {
    const path = `/workflows/${encodeURIComponent(view.workflow)}/executions/${encodeURIComponent(view.detail)}/redrive`;
    const result = await api(path, { method: "POST", body: "{}" });
    const names = result.redriven.map((item) => `${item.event} for ${item.function}`);
    say(names.length ? "Re-driven: " + names.join(", ") : "Nothing failed for good: nothing to re-drive.", true);
    await refreshExecutions();
    await showExecution(view.detail);
  } catch (error) {
    say(error.message);
  } finally {
    button.disabled = false;
  }
}

async function publish(submitted) {
  submitted.preventDefault();
  const event = $("#publish-event").value;
  const execution = $("#publish-execution").value.trim();
  const query = execution ? "?" + new URLSearchParams({ execution_id: execution }) : "";
  const result = $("#publish-result");
  try {
    const answer = await api(`/workflows/${encodeURIComponent(view.workflow)}/events/${encodeURIComponent(event)}${query}`,
      { method: "POST", body: $("#publish-data").value });
    result.textContent = "published: execution " + answer.execution_id;
    say("");
    await refreshExecutions();
    await openExecution(answer.execution_id);
  } catch (error) {
    result.textContent = "";
    say(error.message);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#token-form").addEventListener("submit", (submitted) => {
    submitted.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("#token-input").value);
    $("#token-input").value = "";
    start();
  });
  $("#publish-form").addEventListener("submit", publish);
  $("#redrive").addEventListener("click", redrive);
  $("#status-filter").addEventListener("change", () => refreshExecutions().catch((error) => say(error.message)));
  $("#more").addEventListener("click", () => {
    view.limit = Math.min(200, view.limit + PAGE);
    refreshExecutions().catch((error) => say(error.message));
  });
  $("#close-detail").addEventListener("click", () => {
    view.detail = null;
    $("#detail").classList.add("hidden");
    colourGraph(null);
    location.hash = "#/" + encodeURIComponent(view.workflow);
  });
  start();
});
