// The kvstore dashboard. Every piece of data (keys, values, pod names, event
// messages) is put on the page with textContent, never as HTML: a key such as
// <img src=x onerror=alert(1)> shows as those characters.
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function cell(row, text, className) {
  const td = el("td", text, className);
  row.appendChild(td);
  return td;
}

// ------------------------------------------------------------ cluster view
function sparkline(values, color) {
  const canvas = el("canvas", null, "spark");
  canvas.width = 90;
  canvas.height = 22;
  const numbers = values.filter((v) => typeof v === "number");
  const ctx = canvas.getContext("2d");
  if (!ctx || numbers.length < 2) return canvas;
  const max = Math.max(...numbers, 1e-9);
  ctx.strokeStyle = color;
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  values.forEach((v, i) => {
    const x = (i / Math.max(1, values.length - 1)) * (canvas.width - 2) + 1;
    const y = canvas.height - 2 - ((typeof v === "number" ? v : 0) / max) * (canvas.height - 4);
    if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  });
  ctx.stroke();
  return canvas;
}

function last(values) {
  for (let i = values.length - 1; i >= 0; i--) if (typeof values[i] === "number") return values[i];
  return null;
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "never";
  if (seconds < 1) return "now";
  return seconds < 120 ? `${seconds.toFixed(0)}s ago` : `${Math.round(seconds / 60)}m ago`;
}

function historyText(pod) {
  const parts = [];
  if (pod.history_id) parts.push(String(pod.history_id).slice(0, 8));
  for (const field of ["epoch", "history", "fork"]) {
    if (pod[field] !== undefined && pod[field] !== null) {
      const value = typeof pod[field] === "object" ? JSON.stringify(pod[field]) : pod[field];
      parts.push(`${field} ${value}`);
    }
  }
  return parts.join(" · ") || "—";
}

function renderPods(view) {
  const tbody = $("pods").tBodies[0];
  const maxLag = Math.max(100, ...view.pods.map((p) => p.lag || 0));
  const ordinals = new Map(view.pods.map((p) => [p.name, p.ordinal]));
  const rows = view.pods.map((pod) => {
    const tr = el("tr");
    tr.dataset.pod = pod.name;
    tr.dataset.up = String(pod.up);
    cell(tr, pod.serving ? `${pod.name} ●` : pod.name, "name mono").title = pod.address;
    cell(tr, pod.ready ? "1/1" : "0/1", "ready");
    const status = cell(tr, pod.state === "Ready" ? "Running" : pod.state, "status");
    status.dataset.state = pod.state;
    status.appendChild(el("span", pod.reason, "reason"));
    cell(tr, pod.restarts, "restarts");
    cell(tr, pod.member && pod.member !== "voter" ? `${pod.role} (${pod.member})` : pod.role, "role");
    cell(tr, pod.revision ?? "—", "revision mono");
    cell(tr, historyText(pod), "history mono");
    cell(tr, pod.lsn ?? "—", "lsn mono");
    const lag = cell(tr, null, "lag");
    if (typeof pod.lag === "number") {
      const bar = el("span", null, "bar");
      const fill = el("span");
      fill.style.width = `${Math.min(100, (pod.lag / maxLag) * 100)}%`;  // CSSOM: allowed by the CSP
      bar.appendChild(fill);
      lag.append(bar, String(pod.lag));
    } else {
      lag.textContent = "—";
    }
    cell(tr, pod.serving ? "this pod" : ago(pod.last_contact_seconds), "contact");
    let follows = pod.follows ? pod.follows : "—";
    if (pod.follows && ordinals.has(pod.follows) && ordinals.get(pod.follows) !== 0) follows += " (cascade)";
    if (pod.follows && pod.upstream_connected === false) follows += " (disconnected)";
    cell(tr, follows, "follows mono");
    const rps = pod.samples.map((s) => s[1]);
    const p99 = pod.samples.map((s) => s[2]);
    const rpsCell = cell(tr, null, "rps");
    rpsCell.append(sparkline(rps, "#2563eb"), last(rps) === null ? "—" : String(Math.round(last(rps))));
    const p99Cell = cell(tr, null, "p99");
    p99Cell.append(sparkline(p99, "#b45309"), last(p99) === null ? "—" : `${last(p99)} ms`);
    return tr;
  });
  tbody.replaceChildren(...rows);
}

function renderTopology(view) {
  const byName = new Map(view.pods.map((p) => [p.name, p]));
  const children = new Map();
  const roots = [];
  for (const pod of view.pods) {
    if (pod.follows && byName.has(pod.follows) && pod.follows !== pod.name) {
      if (!children.has(pod.follows)) children.set(pod.follows, []);
      children.get(pod.follows).push(pod);
    } else {
      roots.push(pod);
    }
  }
  const item = (pod, depth) => {
    const li = el("li");
    li.dataset.pod = pod.name;
    li.appendChild(el("span", `${pod.name} (${pod.role}${pod.up ? "" : ", down"}) lsn ${pod.lsn ?? "?"}`,
                      pod.up ? "" : "down"));
    const kids = children.get(pod.name) || [];
    if (kids.length && depth < 16) {
      const ul = el("ul");
      kids.forEach((kid) => ul.appendChild(item(kid, depth + 1)));
      li.appendChild(ul);
    }
    return li;
  };
  $("topology").replaceChildren(...roots.map((pod) => item(pod, 0)));
}

function renderEvents(view) {
  const items = view.events.map((event) => {
    const li = el("li");
    li.dataset.kind = event.kind;
    li.dataset.pod = event.pod;
    const when = new Date(event.time * 1000);
    li.append(el("span", when.toLocaleTimeString(), "time"), el("span", event.pod, "badge"),
              el("span", event.kind, `badge kind-${String(event.kind).replace(/[^a-z_]/g, "")}`),
              el("span", event.message, "message"));
    return li;
  });
  $("events").replaceChildren(...items);
}

function render(view) {
  const me = view.pods.find((p) => p.serving);
  $("served-by").textContent = `served by ${view.served_by}${me ? ` (${me.role})` : ""}`;
  const primaryUp = view.pods.some((p) => p.role === "primary" && p.up);
  $("primary-lsn").textContent = view.primary_lsn === null ? ""
    : primaryUp ? `primary LSN ${view.primary_lsn}` : `primary down · highest LSN known ${view.primary_lsn}`;
  $("leader").textContent = view.leader ? `· ${view.leader}` : "";
  // Pods of more than one template revision: a rolling update is under way (or halted).
  $("rollout").textContent = view.rollout ? "· rollout in progress: " + Object.entries(view.rollout)
    .map(([revision, pods]) => `${pods.join(", ")} at ${revision}`).join("; ") : "";
  renderPods(view);
  renderTopology(view);
  renderEvents(view);
}

function connect() {
  const live = $("live");
  const source = new EventSource("live");
  source.onmessage = (message) => {
    live.dataset.state = "live";
    live.textContent = `live · ${new Date().toLocaleTimeString()}`;
    render(JSON.parse(message.data));
  };
  source.onerror = () => {
    live.dataset.state = "lost";
    live.textContent = "connection lost: retrying";
  };
}

// ------------------------------------------------------------- key browser
const pages = { stack: [], current: null, next: null };

function keyUrl(key, params) {
  const query = new URLSearchParams(params).toString();
  return `/v1/kv/${encodeURIComponent(key)}${query ? `?${query}` : ""}`;
}

function toHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(" ");
}

function fromHex(text) {
  const digits = text.replace(/\s+/g, "");
  if (digits.length % 2 || /[^0-9a-fA-F]/.test(digits)) throw new Error("the value is not hex (pairs of 0-9a-f)");
  const out = new Uint8Array(digits.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(digits.slice(2 * i, 2 * i + 2), 16);
  return out;
}

let shownValue = null;  // the bytes of the last value read, shown as text or hex

function showValue() {
  if (shownValue === null) return;
  if ($("format").value === "hex") {
    $("value").value = toHex(shownValue);
    return;
  }
  try {
    $("value").value = new TextDecoder("utf-8", { fatal: true }).decode(shownValue);
  } catch (err) {  // not text: hex is the only honest rendering
    $("format").value = "hex";
    $("value").value = toHex(shownValue);
  }
}

function showAnswer(method, url, response, body, millis) {
  const rows = [["request", `${method} ${url}`], ["status", `${response.status} ${response.statusText}`]];
  const h = (name) => response.headers.get(name);
  const answeredBy = h("X-Kv-Answered-By");
  if (answeredBy) rows.push(["answered by", `${answeredBy} (forwarded by the pod serving this page)`]);
  else if (h("X-Kv-Pod")) rows.push(["answered by", h("X-Kv-Pod")]);
  if (h("X-Kv-Role")) rows.push(["role", h("X-Kv-Role")]);
  if (h("X-Kv-Lsn")) rows.push(["X-Kv-Lsn", h("X-Kv-Lsn")]);
  if (h("X-Kv-Primary-Lsn")) rows.push(["X-Kv-Primary-Lsn", h("X-Kv-Primary-Lsn")]);
  if (h("ETag")) rows.push(["version (ETag)", h("ETag")]);
  if (h("Retry-After")) rows.push(["Retry-After", `${h("Retry-After")} s`]);
  rows.push(["time", `${millis.toFixed(1)} ms`]);
  if (body) rows.push(["body", body]);
  const dl = $("answer");
  dl.replaceChildren();
  for (const [name, value] of rows) {
    const dd = el("dd", value);
    if (name === "status" && response.status >= 400) dd.className = "error";
    dl.append(el("dt", name), dd);
  }
}

function showProblem(message) {
  $("answer").replaceChildren(el("dt", "error"), el("dd", message, "error"));
}

async function call(method, url, options, quiet = false) {
  const started = performance.now();
  let response;
  try {
    response = await fetch(url, { method, cache: "no-store", ...options });
  } catch (err) {
    showProblem(`${method} ${url}: ${err.message} (is the pod serving this page down?)`);
    return null;
  }
  const bytes = new Uint8Array(await response.arrayBuffer());
  const isJson = (response.headers.get("Content-Type") || "").startsWith("application/json");
  const text = isJson ? new TextDecoder().decode(bytes) : "";
  if (!quiet) showAnswer(method, url, response, text, performance.now() - started);
  return { response, bytes, json: isJson && text ? JSON.parse(text) : null };
}

function versionFrom(etag) {
  const match = /^"?(\d+)"?$/.exec(etag || "");
  return match ? match[1] : "";
}

async function listKeys(startAfter, quiet = false) {
  const params = { limit: $("page-size").value };
  if ($("prefix").value) params.prefix = $("prefix").value;
  if (startAfter) params.start_after = startAfter;
  const url = `/v1/kv?${new URLSearchParams(params).toString()}`;
  const result = await call("GET", url, {}, quiet);
  if (!result || !result.json || !result.response.ok) return;
  if ($("follow").checked && !quiet) {  // watch from just after what this listing shows
    const h = (name) => result.response.headers.get(name);
    follow(params.prefix || "", Number(h("X-Kv-Lsn")) + 1, h("X-Kv-History"));
  }
  pages.current = startAfter;
  pages.next = result.json.more ? result.json.next_start_after : null;
  const items = result.json.keys.map((key, i) => {
    const li = el("li");
    const button = el("button", key);
    button.type = "button";
    button.addEventListener("click", () => { $("key").value = key; getKey(); });
    li.append(button, el("span", `v${result.json.versions[i]}`, "version"));
    return li;
  });
  $("keylist").replaceChildren(...(items.length ? items : [el("li", "no keys", "muted")]));
  $("next").disabled = pages.next === null;
  $("prev").disabled = pages.stack.length === 0;
  $("page-info").textContent = `page ${pages.stack.length + 1}`;
}

// ------------------------------------------------------ following a prefix live
// GET /v1/watch streams one JSON object a line; every change re-lists the page shown.
const watching = { controller: null };

function stopFollowing(why = "") {
  if (watching.controller) watching.controller.abort();
  watching.controller = null;
  $("following").textContent = why;
}

function onWatchLine(line, relist) {
  if (line.type === "put" || line.type === "delete") {
    $("following").textContent = `live: v${line.version} ${line.type} ${line.key}`;
    relist();
  } else if (line.type === "error") {
    $("following").textContent = `the watch ended (${line.error}): ${line.message}; List again to follow`;
  }
}

async function follow(prefix, fromLsn, history) {
  stopFollowing("following…");
  const controller = new AbortController();
  watching.controller = controller;
  const params = { values: "false", from_lsn: String(fromLsn) };
  if (prefix) params.prefix = prefix;
  if (history) params.history = history;
  let pending = null;
  const relist = () => {  // at most one listing per 300 ms, however fast the changes come
    if (!pending) pending = setTimeout(() => { pending = null; listKeys(pages.current, true); }, 300);
  };
  try {
    const response = await fetch(`/v1/watch?${new URLSearchParams(params)}`,
                                 { cache: "no-store", signal: controller.signal });
    if (!response.ok) {
      const body = await response.json();
      return stopFollowing(`not following: ${body.error}: ${body.message}`);
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffered = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += value;
      for (let end = buffered.indexOf("\n"); end >= 0; end = buffered.indexOf("\n")) {
        onWatchLine(JSON.parse(buffered.slice(0, end)), relist);
        buffered = buffered.slice(end + 1);
      }
    }
    if (watching.controller === controller && !$("following").textContent.startsWith("the watch ended")) {
      $("following").textContent = "the watch ended (the pod went away?); List again to follow";
    }
  } catch (err) {
    if (err.name !== "AbortError") $("following").textContent = `not following: ${err.message}`;
  }
}

async function getKey() {
  const key = $("key").value;
  if (!key) return showProblem("type a key first");
  const params = $("consistency").value === "strong" ? { consistency: "strong" } : {};
  const result = await call("GET", keyUrl(key, params));
  if (!result) return;
  if (result.response.ok) {
    shownValue = result.bytes;
    showValue();
    $("version").value = versionFrom(result.response.headers.get("ETag"));
  }
}

function writeOptions() {
  const headers = {};
  const condition = $("condition").value;
  if (condition === "match") {
    const version = $("version").value.trim();
    if (!/^\d+$/.test(version)) throw new Error("compare-and-set needs the version to expect (a number)");
    headers["If-Match"] = `"${version}"`;
  } else if (condition === "create") {
    headers["If-None-Match"] = "*";
  }
  const params = $("w").value ? { w: $("w").value } : {};
  return { headers, params };
}

async function write(method) {
  const key = $("key").value;
  if (!key) return showProblem("type a key first");
  let options;
  let body;
  try {
    options = writeOptions();
    if (method === "PUT") {
      body = $("format").value === "hex" ? fromHex($("value").value) : new TextEncoder().encode($("value").value);
    }
  } catch (err) {
    return showProblem(err.message);
  }
  const result = await call(method, keyUrl(key, options.params), { headers: options.headers, body });
  if (result && result.response.ok && result.json) {
    $("version").value = method === "PUT" ? String(result.json.version) : "";
  }
}

function start() {
  connect();
  $("list").addEventListener("click", () => { pages.stack = []; listKeys(null); });
  $("prefix").addEventListener("keydown", (e) => { if (e.key === "Enter") { pages.stack = []; listKeys(null); } });
  $("next").addEventListener("click", () => { pages.stack.push(pages.current); listKeys(pages.next); });
  $("prev").addEventListener("click", () => { listKeys(pages.stack.pop()); });
  $("follow").addEventListener("change", () => {
    if ($("follow").checked) listKeys(pages.current);
    else stopFollowing();
  });
  $("get").addEventListener("click", getKey);
  $("put").addEventListener("click", () => write("PUT"));
  $("delete").addEventListener("click", () => write("DELETE"));
  $("format").addEventListener("change", () => {
    if (shownValue !== null) { showValue(); return; }
    try {  // convert what was typed
      $("value").value = $("format").value === "hex"
        ? toHex(new TextEncoder().encode($("value").value))
        : new TextDecoder("utf-8", { fatal: true }).decode(fromHex($("value").value));
    } catch (err) {
      showProblem(`cannot show this value as ${$("format").value}: ${err.message}`);
    }
  });
  $("value").addEventListener("input", () => { shownValue = null; });
}

document.addEventListener("DOMContentLoaded", start);
