/* wsgateway console. Every value from the server is put in the page as text
 * (text nodes, textContent, .value): never as HTML. Pages: #/overview, #/tenants,
 * #/tenants/<name>, #/connection[/<id>], #/failures. */
"use strict";

const REFRESH_MS = 2000;
const WINDOW_S = 15 * 60;
const state = { csrf: "", node: "", timer: 0, charts: [], samples: [], generation: 0 };

// ------------------------------------------------------------------ DOM helpers

function el(tag, attrs, ...kids) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid === undefined || kid === null) continue;
    node.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return node;
}

function fill(box, ...kids) {
  box.replaceChildren(...kids.flat(Infinity).filter((kid) => kid !== null && kid !== undefined && kid !== ""));
}

function say(text, bad) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.className = bad ? "bad" : "";
}

function fmt(value, digits) {
  if (value === null || value === undefined) return "–";
  return Number(value).toLocaleString(undefined, { maximumFractionDigits: digits === undefined ? 1 : digits });
}

function duration(seconds) {
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : `${m}m ${s % 60}s`;
}

function sum(obj) {
  return Object.values(obj || {}).reduce((a, b) => a + b, 0);
}

function table(headers, rows, attrs) {
  return el("table", attrs || {},
    el("thead", {}, el("tr", {}, headers.map((h) => (h instanceof Node ? h : el("th", { scope: "col" }, h))))),
    el("tbody", {}, rows));
}

// ------------------------------------------------------------------ API

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = state.csrf;
  const response = await fetch(`/console/api/${path}`, { method, headers, body, credentials: "same-origin" });
  if (response.status === 401) {
    window.location.reload(); // the session ended: the login form
    throw new ApiError(401, "Log in first");
  }
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) throw new ApiError(response.status, (data && data.message) || `HTTP ${response.status}`);
  return data;
}

function failed(error) {
  say(error instanceof ApiError ? `${error.status}: ${error.message}` : String(error), true);
}

// ------------------------------------------------------------------ router

function route() {
  clearInterval(state.timer);
  state.timer = 0;
  state.generation += 1;
  for (const chart of state.charts) chart.plot.destroy();
  state.charts = [];
  const parts = (window.location.hash.replace(/^#\/?/, "") || "overview").split("/");
  const page = parts[0];
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.page === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const main = document.getElementById("main");
  main.replaceChildren();
  say("");
  const rest = parts.slice(1).map(decodeURIComponent);
  if (page === "tenants" && rest.length) showTenant(main, rest[0]);
  else if (page === "tenants") showTenants(main, "connections");
  else if (page === "connection") showConnection(main, rest[0] || "");
  else if (page === "failures") showFailures(main);
  else showOverview(main);
}

function every(ms, fn) {
  const generation = state.generation;
  fn();
  state.timer = setInterval(() => { if (generation === state.generation) fn(); }, ms);
}

// ------------------------------------------------------------------ overview

const CHARTS = [
  { id: "connections", title: "Connections", unit: "", series: () => ["connections"],
    value: (s, key) => s.connections },
  { id: "messages", title: "Messages in and frames out (per s)", unit: "/s", series: () => ["messages in", "frames out"],
    value: (s, key) => (key === "messages in" ? s.messagesIn : s.framesOut) / s.dt },
  { id: "handshakes", title: "Handshakes by status (per s)", unit: "/s", series: (all) => statuses(all, "handshakes"),
    label: (key) => (key === "101" ? "101 accepted" : `${key} refused`),
    value: (s, key) => (s.handshakes[key] || 0) / s.dt },
  { id: "management", title: "Management calls by status (per s)", unit: "/s", series: (all) => statuses(all, "management"),
    value: (s, key) => (s.management[key] || 0) / s.dt },
  { id: "latency", title: "p99 POST-to-client latency (ms)", unit: "ms", series: () => ["p99"],
    value: (s) => s.p99Ms },
];

function statuses(samples, field) {
  const seen = new Set();
  for (const s of samples) for (const key of Object.keys(s[field])) seen.add(key);
  return [...seen].sort();
}

function palette() {
  const css = getComputedStyle(document.documentElement);
  const get = (name) => css.getPropertyValue(name).trim();
  return { fg: get("--fg"), line: get("--line"), colors: [1, 2, 3, 4, 5, 6, 7].map((i) => get(`--c${i}`)) };
}

function showOverview(main) {
  const totals = el("div", { class: "totals", id: "totals" });
  const nodes = el("div", { id: "nodes" });
  const charts = el("div", { class: "charts" });
  main.append(el("h2", {}, "Overview"), totals, el("h3", {}, "Nodes"), nodes,
    el("h3", {}, "Last 15 minutes, whole cluster"), charts);
  for (const spec of CHARTS) {
    const box = el("section", { class: "chart", id: `chart-${spec.id}`, "data-points": "0", "aria-label": spec.title },
      el("h3", {}, spec.title), el("div", { class: "plot" }));
    charts.append(box);
  }
  state.samples = [];
  every(REFRESH_MS, () => refreshOverview(totals, nodes, charts));
}

async function refreshOverview(totals, nodesBox, chartsBox) {
  const generation = state.generation;
  const last = state.samples.length ? state.samples[state.samples.length - 1].t : 0;
  const since = last ? last - 6 : 0; // a node a little late adds to the last points: fetch them again
  let data;
  try {
    data = await api("GET", `overview?since=${since}`);
  } catch (error) {
    failed(error);
    return;
  }
  if (generation !== state.generation) return;
  state.samples = state.samples.filter((s) => s.t <= since).concat(data.samples);
  const horizon = (state.samples.length ? state.samples[state.samples.length - 1].t : 0) - WINDOW_S;
  state.samples = state.samples.filter((s) => s.t > horizon);
  renderTotals(totals, data);
  renderNodes(nodesBox, data.nodes);
  renderCharts(chartsBox);
  say(`Updated ${new Date().toLocaleTimeString()}`);
}

function rate(sample, count) {
  return sample && sample.dt ? count / sample.dt : null;
}

function renderTotals(box, data) {
  const last = state.samples[state.samples.length - 1];
  const card = (label, value, id) => el("div", { id }, el("strong", {}, value), label);
  fill(box,
    card("nodes answering", `${data.totals.answering} / ${data.totals.nodes}`, "total-nodes"),
    card("connections", fmt(data.totals.connections, 0), "total-connections"),
    card("messages in/s", fmt(rate(last, last ? last.messagesIn : 0)), "total-messages"),
    card("frames out/s", fmt(rate(last, last ? last.framesOut : 0)), "total-frames"),
    card("handshakes/s", fmt(rate(last, last ? sum(last.handshakes) : 0)), "total-handshakes"),
    card("management calls/s", fmt(rate(last, last ? sum(last.management) : 0)), "total-management"),
  );
}

function linkState(node) {
  const registry = node.registry || {};
  if (!registry.backend) return el("span", { class: "muted" }, "not sampled yet");
  if (registry.backend === "memory") return el("span", {}, "in memory (single node)");
  if (registry.reachable && registry.subscribed) return el("span", { class: "good" }, "connected");
  return el("span", { class: "bad" }, registry.reachable ? "not subscribed" : "unreachable");
}

function renderNodes(box, nodes) {
  const headers = ["Node", "Uptime", "Connections", "Handshakes/s", "Messages in/s", "Frames out/s",
    "Management calls/s", "Redis link", "Ready"].map((h, i) => el("th", { scope: "col", class: i > 1 && i < 7 ? "num" : "" }, h));
  const rows = nodes.map((node) => {
    if (!node.answering) {
      return el("tr", { "data-node": node.node }, el("td", {}, node.node),
        el("td", { colspan: 8, class: "bad" }, "not answering"));
    }
    const s = node.last;
    return el("tr", { "data-node": node.node },
      el("td", {}, node.node, node.node === state.node ? el("span", { class: "muted" }, " (this node)") : null),
      el("td", {}, duration(node.uptimeS)),
      el("td", { class: "num" }, fmt(node.connections, 0)),
      el("td", { class: "num" }, fmt(rate(s, s ? sum(s.handshakes) : 0))),
      el("td", { class: "num" }, fmt(rate(s, s ? s.messagesIn : 0))),
      el("td", { class: "num" }, fmt(rate(s, s ? s.framesOut : 0))),
      el("td", { class: "num" }, fmt(rate(s, s ? sum(s.management) : 0))),
      el("td", {}, linkState(node)),
      el("td", {}, node.ready ? el("span", { class: "good" }, "ready") : el("span", { class: "bad" }, node.status)));
  });
  fill(box, table(headers, rows, { id: "nodes-table" }));
}

function renderCharts(box) {
  const samples = state.samples;
  const xs = samples.map((s) => s.t);
  const colors = palette();
  for (const spec of CHARTS) {
    const section = document.getElementById(`chart-${spec.id}`);
    const keys = spec.series(samples);
    const data = [xs, ...keys.map((key) => samples.map((s) => spec.value(s, key)))];
    let chart = state.charts.find((c) => c.id === spec.id);
    if (chart && chart.keys.join() !== keys.join()) {
      chart.plot.destroy();
      state.charts = state.charts.filter((c) => c !== chart);
      chart = null;
    }
    if (!chart) {
      const target = section.querySelector(".plot");
      target.replaceChildren();
      const axis = { stroke: colors.fg, grid: { stroke: colors.line }, ticks: { stroke: colors.line } };
      const plot = new uPlot({
        width: Math.max(300, section.clientWidth - 20), height: 180,
        scales: { x: { time: true } },
        axes: [axis, { ...axis, size: 60 }],
        series: [{}, ...keys.map((key, i) => ({
          label: spec.label ? spec.label(key) : key, stroke: colors.colors[i % colors.colors.length], width: 2,
          value: (u, v) => (v === null || v === undefined ? "–" : `${fmt(v, 2)}${spec.unit}`),
        }))],
      }, data, target);
      chart = { id: spec.id, keys, plot };
      state.charts.push(chart);
    } else {
      chart.plot.setData(data);
    }
    section.setAttribute("data-points", String(xs.length));
  }
}

// ------------------------------------------------------------------ tenants

const SORTS = [["name", "Tenant"], ["connections", "Connections"], ["traffic", "Messages/min"],
  ["throttled", "Throttled calls"]];

async function showTenants(main, sort) {
  const box = el("div", { id: "tenants" });
  fill(main, el("h2", {}, "Tenants"),
    el("p", { class: "muted" }, "Connections on every node; messages in and out in the last minute; calls refused by a usage plan."),
    box);
  let data;
  try {
    data = await api("GET", `tenants?sort=${encodeURIComponent(sort)}`);
  } catch (error) {
    failed(error);
    return;
  }
  const headers = SORTS.map(([key, label]) => el("th", {
    scope: "col", class: key === "name" ? "" : "num", "aria-sort": key === sort ? (key === "name" ? "ascending" : "descending") : "none",
  }, el("button", { type: "button", "data-sort": key, onclick: () => showTenants(main, key) }, label)));
  headers.push(el("th", { scope: "col", class: "num" }, "Nodes"));
  const rows = data.tenants.map((t) => el("tr", { "data-tenant": t.tenant },
    el("td", { class: "wrap" }, el("a", { href: `#/tenants/${encodeURIComponent(t.tenant)}` }, t.tenant)),
    el("td", { class: "num" }, fmt(t.connections, 0)),
    el("td", { class: "num" }, fmt(t.trafficPerMin, 0)),
    el("td", { class: "num" }, fmt(t.throttled, 0)),
    el("td", { class: "num" }, fmt(t.nodes, 0))));
  fill(box, table(headers, rows, { id: "tenants-table" }),
    el("p", { class: "muted" }, `${data.total} tenants`, data.total > data.tenants.length ? `, the first ${data.tenants.length} shown` : "",
      data.nodesNotAnswering.length ? `; not answering: ${data.nodesNotAnswering.join(", ")}` : ""));
  const focused = box.querySelector(`button[data-sort="${sort}"]`);
  if (focused && document.activeElement === document.body) focused.focus();
}

async function showTenant(main, name) {
  const usage = el("div", { id: "usage" });
  const list = el("div", { id: "connections" });
  main.append(el("h2", {}, "Tenant ", el("span", { id: "tenant-name" }, name)), usage, el("h3", {}, "Connections"), list);
  try {
    const u = await api("GET", `tenants/${encodeURIComponent(name)}`);
    fill(usage, el("dl", { class: "record" },
      el("dt", {}, "Plan"), el("dd", {}, u.plan === null ? "none" : u.plan),
      el("dt", {}, "Connections"), el("dd", {}, fmt(u.connections, 0)),
      el("dt", {}, "Messages today"), el("dd", {}, fmt(u.messagesToday, 0)),
      el("dt", {}, "Posts today"), el("dd", {}, fmt(u.postsToday, 0)),
      el("dt", {}, "Daily quota"), el("dd", {}, u.quotaPerDay ? fmt(u.quotaPerDay, 0) : "none"),
      el("dt", {}, "Left today"), el("dd", {}, u.remainingToday === null ? "–" : fmt(u.remainingToday, 0)),
      el("dt", {}, "Messages in and out, last minute"), el("dd", {}, fmt(u.trafficPerMin, 0)),
      el("dt", {}, "Throttled calls"), el("dd", { id: "throttled" }, fmt(u.throttled, 0))));
  } catch (error) {
    failed(error);
  }
  loadPage(list, name, null, []);
}

async function loadPage(box, name, token, previous) {
  const query = `limit=25${token ? `&nextToken=${encodeURIComponent(token)}` : ""}`;
  let data;
  try {
    data = await api("GET", `tenants/${encodeURIComponent(name)}/connections?${query}`);
  } catch (error) {
    failed(error);
    return;
  }
  const rows = data.connections.map((c) => el("tr", { "data-connection": c.connectionId },
    el("td", {}, el("a", { href: `#/connection/${encodeURIComponent(c.connectionId)}` }, c.connectionId)),
    el("td", { class: "wrap" }, c.principalId), el("td", {}, c.nodeId), el("td", {}, c.connectedAt),
    el("td", {}, c.lastActiveAt), el("td", {}, c.identity.sourceIp), el("td", { class: "wrap" }, c.identity.userAgent)));
  const pager = el("div", { class: "inline" },
    previous.length ? el("button", { type: "button", onclick: () => loadPage(box, name, previous[previous.length - 1], previous.slice(0, -1)) }, "Previous page") : null,
    data.nextToken ? el("button", { type: "button", id: "next-page", onclick: () => loadPage(box, name, data.nextToken, previous.concat([token])) }, "Next page") : null);
  fill(box,
    table(["Connection", "Principal", "Node", "Connected", "Last active", "Source IP", "User agent"], rows, { id: "connections-table" }),
    rows.length ? pager : el("p", { class: "muted" }, "No connections."));
}

// ------------------------------------------------------------------ connection

function showConnection(main, id) {
  const input = el("input", { id: "lookup-id", name: "id", size: 40, required: true, "aria-label": "Connection id" });
  input.value = id;
  const result = el("div", { id: "connection" });
  const form = el("form", { class: "inline", id: "lookup", onsubmit: (event) => {
    event.preventDefault();
    const wanted = input.value.trim();
    const target = `#/connection/${encodeURIComponent(wanted)}`;
    if (wanted && window.location.hash === target) route(); // look it up again
    else if (wanted) window.location.hash = target;
  } }, el("label", { for: "lookup-id" }, "Connection id"), input, el("button", { type: "submit" }, "Look up"));
  main.append(el("h2", {}, "Connection"), form, result);
  if (id) lookUp(result, id);
  else input.focus();
}

async function lookUp(box, id) {
  let c;
  try {
    c = await api("GET", `connections/${encodeURIComponent(id)}`);
  } catch (error) {
    fill(box, el("p", { class: "bad", id: "lookup-error" },
      error.status === 410 ? "No such connection on any node (gone)." : String(error.message)));
    return;
  }
  const fields = [["Tenant", el("a", { href: `#/tenants/${encodeURIComponent(c.tenant)}` }, c.tenant)],
    ["Principal", c.principalId], ["Node", c.nodeId], ["Connected at", c.connectedAt], ["Last active at", c.lastActiveAt],
    ["Source IP", c.sourceIp], ["User agent", c.userAgent]];
  const message = el("textarea", { id: "test-message", "aria-label": "Test message" });
  message.value = '{"test": true}';
  const sendButton = el("button", { type: "submit" }, "Send");
  const disconnect = el("button", { type: "button", class: "danger", id: "disconnect" }, "Disconnect");
  disconnect.addEventListener("click", async () => {
    try {
      await api("DELETE", `connections/${encodeURIComponent(c.connectionId)}`);
      say(`Disconnected ${c.connectionId} (close 1000).`);
      disconnect.disabled = true;
    } catch (error) {
      failed(error);
    }
  });
  const send = el("form", { id: "send", onsubmit: async (event) => {
    event.preventDefault();
    try {
      const answer = await api("POST", `connections/${encodeURIComponent(c.connectionId)}/messages`, message.value);
      say(`Sent ${answer.sent} bytes to ${c.connectionId}.`);
    } catch (error) {
      failed(error);
    }
  } }, el("h3", {}, "Send a test message"), message, sendButton);
  fill(box,
    el("h3", {}, "Record of ", el("span", { id: "record-id" }, c.connectionId)),
    el("dl", { class: "record", id: "record" }, fields.map(([k, v]) => [el("dt", {}, k), el("dd", { "data-field": k }, v)])),
    el("h3", {}, "Authorizer context"), el("pre", { id: "authorizer" }, JSON.stringify(c.authorizer, null, 2)),
    send, el("h3", {}, "Disconnect"),
    el("p", { class: "muted" }, "Closes the connection with 1000, as DELETE @connections does; its $disconnect runs once."),
    disconnect);
}

// ------------------------------------------------------------------ failures

function showFailures(main) {
  const box = el("div", { id: "failures" });
  main.append(el("h2", {}, "Recent failures"),
    el("p", { class: "muted" }, "The last 200 handler failures, refused handshakes and 5xx answers of every node."), box);
  every(5000, async () => {
    const generation = state.generation;
    let data;
    try {
      data = await api("GET", "failures");
    } catch (error) {
      failed(error);
      return;
    }
    if (generation !== state.generation) return;
    const rows = data.failures.map((f) => el("tr", {},
      el("td", {}, f.at), el("td", {}, f.node), el("td", {}, f.kind), el("td", {}, f.route),
      el("td", { class: "num" }, f.status || "–"), el("td", {}, f.requestId || "–"), el("td", {}, f.reason)));
    fill(box,
      table(["Time", "Node", "Kind", "Route", "Status", "Request id", "Reason"], rows, { id: "failures-table" }),
      rows.length ? null : el("p", { class: "muted" }, "No failures."),
      data.nodesNotAnswering.length ? el("p", { class: "bad" }, `Not answering: ${data.nodesNotAnswering.join(", ")}`) : null);
  });
}

// ------------------------------------------------------------------ start

async function start() {
  try {
    const session = await api("GET", "session");
    state.csrf = session.csrf;
    state.node = session.node;
    document.getElementById("served-by").textContent = `served by node ${session.node}`;
  } catch (error) {
    failed(error);
    return;
  }
  document.getElementById("logout").addEventListener("click", async () => {
    try {
      await api("POST", "logout");
    } finally {
      window.location.reload();
    }
  });
  window.addEventListener("hashchange", () => { route(); document.getElementById("main").focus(); });
  window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", route);
  let resizing = 0;
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => {
      for (const chart of state.charts) {
        const section = document.getElementById(`chart-${chart.id}`);
        chart.plot.setSize({ width: Math.max(300, section.clientWidth - 20), height: 180 });
      }
    }, 200);
  });
  route();
}

start();
