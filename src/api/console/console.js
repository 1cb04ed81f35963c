// Postback console: a page of the binary (no CDN, no build step). Every
// call goes to this server's /v1 API with the token the operator typed,
// kept in sessionStorage (gone when the tab closes). Text from the API is
// only ever set with textContent, never parsed as HTML.
"use strict";

const TOKEN_KEY = "postback.token";
const main = () => document.getElementById("main");

/** Element builder: h("a", {href: "#/"}, "text", child). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** A call of the API with the bearer token; throws ApiError on non-2xx. */
async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + (sessionStorage.getItem(TOKEN_KEY) || "") };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch (e) {
    throw new ApiError(0, "network", "The server did not answer (" + e.message + ").");
  }
  let data = null;
  const text = await response.text();
  if (text) {
    try { data = JSON.parse(text); } catch (_) { data = null; }
  }
  if (!response.ok) {
    const err = (data && data.error) || {};
    throw new ApiError(response.status, err.code || "http_" + response.status,
      err.message || "The server answered " + response.status + ".");
  }
  return data;
}

function flash(message, kind) {
  const el = document.getElementById("flash");
  el.replaceChildren(message ? h("div", { class: kind || "ok" }, message) : "");
  if (message) setTimeout(() => { if (el.textContent === message) el.replaceChildren(); }, 6000);
}

/** Shows `err` in place; a refused token sends the operator back to sign in. */
function showError(container, err) {
  if (err.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    renderLogin("The API refused the token (401 unauthorized). Sign in again with the value of POSTBACK_API_TOKEN.");
    return;
  }
  container.replaceChildren(h("p", { class: "alert", role: "alert" },
    err.message + (err.code ? " (" + err.code + ")" : "")));
}

function page(title, ...content) {
  const m = main();
  m.replaceChildren(h("h1", { tabindex: "-1", id: "page-title" }, title), ...content);
  document.title = title + " · Postback console";
}

function focusTitle() {
  const t = document.getElementById("page-title");
  if (t) t.focus();
}

const time = (t) => (t ? t.replace(/\.\d+/, "") : "—");
const dash = (v) => (v === null || v === undefined || v === "" ? "—" : String(v));
const statusCell = (s) => h("span", { class: "status status-" + s }, s);

function seconds(n) {
  if (!n) return "0 s";
  if (n < 120) return Math.round(n) + " s";
  if (n < 7200) return Math.round(n / 60) + " min";
  return (n / 3600).toFixed(1) + " h";
}

// ---------------------------------------------------------------- sign in

function renderLogin(message) {
  document.getElementById("nav").hidden = true;
  const input = h("input", { type: "password", id: "token", name: "token", autocomplete: "current-password", required: true, autofocus: true });
  const note = h("div", { id: "login-message" });
  if (message) note.replaceChildren(h("p", { class: "alert", role: "alert" }, message));
  const form = h("form", { class: "login", id: "login" },
    h("label", { for: "token" }, "API token (POSTBACK_API_TOKEN)", input),
    h("button", { type: "submit", id: "signin" }, "Sign in"),
    note,
    h("p", { class: "muted" }, "The token stays in this tab (sessionStorage) and is sent only to this server."));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    try {
      await api("GET", "/v1/stats");
      document.getElementById("nav").hidden = false;
      // A hash change routes by itself; routing twice would render twice.
      if (location.hash === "#/login") location.hash = "#/";
      else route();
    } catch (err) {
      sessionStorage.removeItem(TOKEN_KEY);
      const text = err.status === 401
        ? "The API refused this token (401 unauthorized). Check the value of POSTBACK_API_TOKEN and try again."
        : err.message;
      note.replaceChildren(h("p", { class: "alert", role: "alert", id: "login-error" }, text));
      input.focus();
      input.select();
    }
  });
  page("Sign in", form);
  input.focus();
}

// ---------------------------------------------------------------- overview

let overviewTimer = null;

async function renderOverview() {
  const body = h("div", { id: "stats" }, h("p", { class: "muted" }, "Loading…"));
  page("Overview", body,
    h("div", { class: "actions" },
      h("button", { type: "button", class: "secondary", onclick: () => loadStats(body) }, "Refresh"),
      h("a", { href: "#/deliveries?status=failed" }, "Failed deliveries")));
  await loadStats(body);
  overviewTimer = setInterval(() => { if (document.body.contains(body)) loadStats(body); }, 5000);
}

async function loadStats(body) {
  try {
    const s = await api("GET", "/v1/stats");
    const card = (k, n, id) => h("div", { class: "card", id }, h("span", { class: "n" }, n), h("span", { class: "k" }, k));
    body.replaceChildren(
      h("h2", {}, "Queue"),
      h("div", { class: "cards" },
        card("due now", s.due, "stat-due"),
        card("scheduled", s.scheduled, "stat-scheduled"),
        card("in flight", s.inFlight, "stat-in-flight"),
        card("oldest due", seconds(s.oldestDueSeconds), "stat-oldest")),
      h("h2", {}, "Last hour"),
      h("div", { class: "cards" },
        card("delivered", s.deliveredLastHour, "stat-delivered"),
        card("failed (gave up)", s.failedLastHour, "stat-failed")),
      h("p", { class: "muted" }, "Updated " + new Date().toISOString().replace(/\.\d+/, "") + "; refreshes every 5 s."));
  } catch (err) {
    showError(body, err);
  }
}

// ---------------------------------------------------------------- deliveries

const FILTERS = ["status", "customerId", "jobId", "host", "since", "until", "limit"];

function hashQuery() {
  const q = location.hash.split("?")[1] || "";
  return new URLSearchParams(q);
}

function filterOf(params) {
  const f = {};
  for (const k of ["status", "customerId", "jobId", "host", "since", "until"]) {
    const v = (params.get(k) || "").trim();
    if (v) f[k] = v;
  }
  return f;
}

function deliveriesTable(list) {
  if (!list.length) return h("p", { class: "notice", id: "no-deliveries" }, "No delivery matches these filters.");
  const rows = list.map((d) => h("tr", {},
    h("td", { class: "id", "data-label": "Delivery" }, h("a", { href: "#/deliveries/" + d.deliveryId, class: "delivery-link" }, d.deliveryId)),
    h("td", { "data-label": "Status" }, statusCell(d.status)),
    h("td", { "data-label": "Attempts" }, d.attempts),
    h("td", { "data-label": "Last" }, dash(d.lastStatusCode) + (d.lastError ? " " + d.lastError : "")),
    h("td", { "data-label": "Host", class: "wrap" }, d.host),
    h("td", { "data-label": "Customer", class: "wrap" }, dash(d.customerId)),
    h("td", { "data-label": "Created" }, time(d.createdAt))));
  return h("div", { class: "scroll" }, h("table", { class: "rows", id: "deliveries" },
    h("thead", {}, h("tr", {}, ["Delivery", "Status", "Attempts", "Last", "Host", "Customer", "Created"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, rows)));
}

async function renderDeliveries() {
  const params = hashQuery();
  const field = (name, label, attrs) => h("label", { for: "f-" + name }, label,
    h("input", Object.assign({ id: "f-" + name, name, value: params.get(name) || "" }, attrs || {})));
  const status = h("select", { id: "f-status", name: "status" },
    ["", "failed", "pending", "delivering", "delivered"].map((s) =>
      h("option", { value: s, selected: (params.get("status") || "") === s }, s || "any")));
  const form = h("form", { class: "filters", id: "filters" },
    h("label", { for: "f-status" }, "Status", status),
    field("customerId", "Customer"),
    field("jobId", "Job"),
    field("host", "Host (name only)", { placeholder: "hooks.example.org" }),
    field("since", "Since", { placeholder: "2h or RFC 3339" }),
    field("until", "Until", { placeholder: "RFC 3339 or 10m" }),
    field("limit", "Per page", { inputmode: "numeric", placeholder: "50" }),
    h("button", { type: "submit", id: "search" }, "Search"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams();
    for (const k of FILTERS) {
      const v = (form.elements[k].value || "").trim();
      if (v) q.set(k, v);
    }
    location.hash = "#/deliveries" + (q.toString() ? "?" + q : "");
  });
  const results = h("div", { id: "results" }, h("p", { class: "muted" }, "Loading…"));
  const replayBox = h("div", { id: "bulk" });
  page("Deliveries", form, replayBox, results);

  const filter = filterOf(params);
  const query = new URLSearchParams(filter);
  if (params.get("limit")) query.set("limit", params.get("limit"));
  if (params.get("cursor")) query.set("cursor", params.get("cursor"));
  try {
    const list = await api("GET", "/v1/deliveries" + (query.toString() ? "?" + query : ""));
    const more = list.nextCursor
      ? h("div", { class: "actions" }, h("a", { href: "#/deliveries?" + withCursor(params, list.nextCursor), id: "next-page" }, "Next page →"))
      : null;
    // replaceChildren would print a null as the text "null".
    results.replaceChildren(...[h("p", { class: "muted" }, list.deliveries.length + " shown, newest first."), deliveriesTable(list.deliveries), more].filter(Boolean));
    if (filter.status) replayBox.replaceChildren(bulkReplay(filter));
  } catch (err) {
    showError(results, err);
  }
}

function withCursor(params, cursor) {
  const q = new URLSearchParams(params);
  q.set("cursor", cursor);
  return q.toString();
}

/** "Replay all matching": a dry run first, then the replay it previewed. */
function bulkReplay(filter) {
  const box = h("div", { class: "notice" });
  const rate = h("input", { id: "replay-rate", placeholder: "e.g. 50/s (optional)" });
  const preview = h("button", { type: "button", class: "secondary", id: "preview-replay" }, "Preview replay of every match");
  box.append(h("div", { class: "actions" }, preview, h("label", { for: "replay-rate" }, "Rate", rate)));
  const out = h("div", { id: "replay-preview" });
  box.append(out);
  preview.addEventListener("click", async () => {
    try {
      const body = { filter, dryRun: true };
      const dry = await api("POST", "/v1/replays", body);
      const go = h("button", { type: "button", class: "danger", id: "confirm-replay" },
        "Replay " + dry.matched + " deliveries");
      go.disabled = dry.matched === 0;
      go.addEventListener("click", async () => {
        go.disabled = true;
        try {
          const r = await api("POST", "/v1/replays", Object.assign({ filter, dryRun: false },
            rate.value.trim() ? { rate: rate.value.trim() } : {}));
          out.replaceChildren(h("p", { class: "ok", role: "status", id: "replay-result" },
            "Replayed " + r.replayed + " of " + r.matched + " deliveries" +
            (r.skipped ? "; " + r.skipped + " skipped (being attempted right now)." : ".")));
        } catch (err) {
          showError(out, err);
        }
      });
      out.replaceChildren(
        h("p", {}, dry.matched + " deliveries match. The newest " + dry.sample.length + ":"),
        deliveriesTable(dry.sample),
        h("div", { class: "actions" }, go));
      go.focus();
    } catch (err) {
      showError(out, err);
    }
  });
  return box;
}

// ---------------------------------------------------------------- one delivery

async function renderDelivery(id) {
  const body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  page("Delivery " + id, body);
  try {
    const d = await api("GET", "/v1/deliveries/" + encodeURIComponent(id));
    const meta = [
      ["Status", statusCell(d.status)],
      ["Attempts", d.attemptCount],
      ["Target", d.method + " " + d.url],
      ["Type", d.type + " (" + d.contentType + ")"],
      ["Customer", dash(d.customerId)],
      ["Job", dash(d.jobId)],
      ["Queued", time(d.queuedAt)],
      ["Next attempt", time(d.nextAttemptTime)],
      ["Completed", time(d.completedAt)],
    ];
    const headers = Object.entries(d.headers || {});
    const replayOut = h("div", { id: "replay-one-result" });
    const replay = h("button", { type: "button", id: "replay-one" }, "Replay this delivery");
    replay.addEventListener("click", async () => {
      replay.disabled = true;
      try {
        await api("POST", "/v1/deliveries/" + encodeURIComponent(id) + "/replay", {});
        replayOut.replaceChildren(h("p", { class: "ok", role: "status" }, "Replayed: queued for a fresh schedule with the same webhook-id."));
      } catch (err) {
        showError(replayOut, err);
      } finally {
        replay.disabled = false;
      }
    });
    body.replaceChildren(
      h("dl", { class: "meta" }, meta.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
      h("div", { class: "actions" }, replay, h("a", { href: "#/deliveries" }, "Back to deliveries")),
      replayOut,
      h("h2", {}, "Headers"),
      headers.length
        ? h("dl", { class: "meta" }, headers.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]))
        : h("p", { class: "muted" }, "None besides the signature headers."),
      h("h2", {}, "Attempts"),
      d.attempts.length
        ? h("ol", { class: "timeline", id: "attempts" }, d.attempts.map((a) => h("li", { class: "attempt" },
          h("div", { class: "head" },
            h("strong", {}, "#" + a.attempt),
            h("span", {}, time(a.startedAt)),
            h("span", {}, "HTTP " + dash(a.statusCode)),
            h("span", {}, a.durationMs + " ms"),
            h("span", { class: a.error ? "error" : "status-delivered" }, a.error || "ok")),
          a.responseSnippet ? h("pre", { "aria-label": "Response of attempt " + a.attempt }, a.responseSnippet) : null)))
        : h("p", { class: "muted" }, "No attempt yet."));
  } catch (err) {
    showError(body, err);
  }
}

// ---------------------------------------------------------------- destinations

async function renderDestinations() {
  const body = h("div", { id: "destinations" }, h("p", { class: "muted" }, "Loading…"));
  page("Open destinations", body);
  try {
    // Open and half open (a probe is out): every breaker that holds deliveries.
    const data = await api("GET", "/v1/destinations");
    const list = (data.destinations || []).filter((d) => d.state !== "closed");
    if (!list.length) {
      body.replaceChildren(h("p", { class: "notice", id: "destinations-none" }, "No destination is open: every circuit breaker is closed."));
      return;
    }
    body.replaceChildren(h("div", { class: "scroll" }, h("table", { class: "rows" },
      h("thead", {}, h("tr", {}, ["Origin", "State", "Failures", "Opened", "Next probe", "Last error", ""].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, list.map((d) => {
        const reset = h("button", { type: "button", class: "secondary" }, "Reset");
        reset.addEventListener("click", async () => {
          try {
            await api("POST", "/v1/destinations/reset", { origin: d.origin });
            flash("Reset " + d.origin + ": waiting deliveries are due now.");
            renderDestinations();
          } catch (err) {
            showError(body, err);
          }
        });
        return h("tr", {},
          h("td", { class: "wrap", "data-label": "Origin" }, d.origin),
          h("td", { "data-label": "State" }, d.state),
          h("td", { "data-label": "Failures" }, d.consecutiveFailures),
          h("td", { "data-label": "Opened" }, time(d.openedAt)),
          h("td", { "data-label": "Next probe" }, time(d.nextProbeTime)),
          h("td", { class: "wrap", "data-label": "Last error" }, dash(d.lastError)),
          h("td", {}, reset));
      })))));
  } catch (err) {
    if (err.status === 404) {
      body.replaceChildren(h("p", { class: "notice", id: "destinations-unavailable" },
        "Destinations are not available on this server: GET /v1/destinations answered 404 (this version has no circuit breakers)."));
    } else {
      showError(body, err);
    }
  }
}

// ---------------------------------------------------------------- customers

function renderCustomers() {
  const id = h("input", { id: "c-id", name: "customerId", required: true, autocomplete: "off" });
  const grace = h("input", { id: "c-grace", name: "gracePeriod", placeholder: "24h (0 to 7d)" });
  const out = h("div", { id: "rotate-result" });
  const form = h("form", { class: "filters", id: "rotate" },
    h("label", { for: "c-id" }, "Customer id", id),
    h("label", { for: "c-grace" }, "Grace period for the old secret", grace),
    h("button", { type: "submit", class: "danger" }, "Rotate signing secret"));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const cid = id.value.trim();
    if (!confirm("Rotate the signing secret of " + cid + "? The new secret is shown once.")) return;
    try {
      const body = grace.value.trim() ? { gracePeriod: grace.value.trim() } : {};
      const r = await api("POST", "/v1/customers/" + encodeURIComponent(cid) + "/rotate-secret", body);
      out.replaceChildren(h("div", { class: "ok", role: "status" },
        h("p", {}, "New secret of " + cid + " (shown this once; give it to the customer now):"),
        h("pre", { id: "new-secret" }, r.signingSecret)));
    } catch (err) {
      showError(out, err);
    }
  });
  page("Customers", h("p", { class: "muted" },
    "Rotating signs from now on with a new secret; the old one also signs until its grace period ends."), form, out);
}

// ---------------------------------------------------------------- routing

function route() {
  if (overviewTimer) { clearInterval(overviewTimer); overviewTimer = null; }
  if (!sessionStorage.getItem(TOKEN_KEY)) { renderLogin(); return; }
  document.getElementById("nav").hidden = false;
  const path = (location.hash.replace(/^#/, "") || "/").split("?")[0];
  let name = "overview";
  let render = renderOverview;
  const one = path.match(/^\/deliveries\/([0-9a-fA-F-]{36})$/);
  if (one) { name = "deliveries"; render = () => renderDelivery(one[1]); }
  else if (path.startsWith("/deliveries")) { name = "deliveries"; render = renderDeliveries; }
  else if (path.startsWith("/destinations")) { name = "destinations"; render = renderDestinations; }
  else if (path.startsWith("/customers")) { name = "customers"; render = renderCustomers; }
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.page === name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  Promise.resolve(render()).then(focusTitle);
}

document.getElementById("signout").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  location.hash = "#/";
  renderLogin();
});
window.addEventListener("hashchange", route);
route();
