// The pykvstore dashboard: polls /api/stats and /api/history every few
// seconds and draws what they say. No framework, no network beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
const COLORS = ["#3b82c4", "#d9822b", "#2f9e6e", "#a855a8", "#c44b3b", "#6b7684", "#b8a12a"];
const sortState = {};
let last = null;

function size(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n.toFixed(0)) + " " + units[i];
}
function duration(s) {
  if (s === null || s === undefined) return "-";
  if (s >= 86400) return (s / 86400).toFixed(1) + "d";
  if (s >= 3600) return (s / 3600).toFixed(1) + "h";
  if (s >= 60) return (s / 60).toFixed(1) + "m";
  return s.toFixed(0) + "s";
}
function pct(x) { return x === null || x === undefined ? "-" : (100 * x).toFixed(1) + "%"; }
function dollars(x) { return "$" + x.toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 6 }); }
function say(text, kind) { const m = $("message"); m.textContent = text; m.className = kind || ""; }
function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function svgEl(tag, attrs, text) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

async function api(path, options) {
  const resp = await fetch(path, options);
  const data = await resp.json().catch(() => ({ error: resp.statusText }));
  if (!resp.ok) throw new Error(data.error || resp.statusText);
  return data;
}

async function act(path, payload, done) {
  try {
    const data = await api(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-PyKVStore-Token": $("token").value },
      body: JSON.stringify(payload),
    });
    say(done(data), "ok");
    await refresh();
  } catch (e) {
    say(e.message, "error");
  }
}

function sortedRows(tableId, rows) {
  const st = sortState[tableId];
  if (!st) return rows;
  return [...rows].sort((a, b) => {
    const x = a[st.key], y = b[st.key];
    const r = (x === null) - (y === null) || (x < y ? -1 : x > y ? 1 : 0);
    return st.asc ? r : -r;
  });
}

function fillTable(tableId, rows, cells) {
  const tbody = document.querySelector(`#${tableId} tbody`);
  tbody.replaceChildren();
  for (const row of sortedRows(tableId, rows)) {
    const tr = el("tr");
    for (const [key, value] of Object.entries(row)) if (typeof value === "string") tr.dataset[key] = value;
    for (const c of cells) {
      const td = typeof c === "function" ? c(row) : el("td", {}, row[c]);
      tr.appendChild(td);
    }
    tbody.appendChild(tr);
  }
}
const num = (text) => el("td", { class: "num" }, text);

function drawModels(models) {
  const svg = $("models-chart");
  svg.replaceChildren();
  const entries = Object.entries(models);
  const max = Math.max(1, ...entries.map(([, m]) => m.bytes));
  svg.setAttribute("height", 22 * entries.length + 4);
  entries.forEach(([name, m], i) => {
    const w = 400 * m.bytes / max;
    svg.appendChild(svgEl("rect", { x: 0, y: 22 * i + 2, width: Math.max(1, w), height: 16, fill: COLORS[i % COLORS.length] }));
    svg.appendChild(svgEl("text", { x: w + 6, y: 22 * i + 14 }, `${name}  ${size(m.bytes)}`));
  });
}

function drawHistory(history) {
  const svg = $("history");
  svg.replaceChildren();
  const W = 640, H = 160, pad = 28;
  const models = Object.entries(history.models);
  const times = models.flatMap(([, pts]) => pts.map((p) => p.t));
  $("history-legend").replaceChildren();
  if (!times.length) { svg.appendChild(svgEl("text", { x: pad, y: H / 2 }, "no hits or misses recorded yet")); return; }
  const t0 = Math.min(...times), t1 = Math.max(...times, t0 + history.period);
  const x = (t) => pad + (W - 2 * pad) * (t - t0) / (t1 - t0);
  const y = (r) => H - pad + (2 * pad - H) * r;
  svg.appendChild(svgEl("line", { x1: pad, y1: y(0), x2: W - pad, y2: y(0), stroke: "#ccd" }));
  svg.appendChild(svgEl("line", { x1: pad, y1: y(1), x2: W - pad, y2: y(1), stroke: "#eef" }));
  svg.appendChild(svgEl("text", { x: 2, y: y(1) + 4 }, "100%"));
  svg.appendChild(svgEl("text", { x: 2, y: y(0) + 4 }, "0%"));
  models.forEach(([name, pts], i) => {
    const color = COLORS[i % COLORS.length];
    const d = pts.map((p) => `${x(p.t).toFixed(1)},${y(p.rate).toFixed(1)}`).join(" ");
    svg.appendChild(svgEl("polyline", { points: d, fill: "none", stroke: color, "stroke-width": 2, "data-model": name }));
    for (const p of pts) svg.appendChild(svgEl("circle", { cx: x(p.t), cy: y(p.rate), r: 2.5, fill: color }));
    const item = el("span", { style: `color:${color}; margin-right:12px` }, `\u25A0 ${name}`);
    $("history-legend").appendChild(item);
  });
}

// The miss-ratio curve from /api/size: token hit rate against capacity, with the
// current capacity and the recommendation (the knee) marked.
function drawSizing(z) {
  const svg = $("sizing-chart");
  svg.replaceChildren();
  const W = 640, H = 200, pad = 34;
  if (!z || z.error || !z.curve || !z.curve.length) {
    svg.setAttribute("height", 30);
    svg.appendChild(svgEl("text", { x: 4, y: 20 }, (z && z.error) || "no traffic recorded yet"));
    $("sizing-summary").textContent = "";
    return;
  }
  svg.setAttribute("height", H);
  const xmax = Math.max(z.working_set, z.current_capacity || 0, z.recommended) * 1.05;
  const x = (c) => pad + (W - 2 * pad) * c / xmax;
  const y = (r) => H - pad + (2 * pad - H) * r;
  svg.appendChild(svgEl("line", { x1: pad, y1: y(0), x2: W - pad, y2: y(0), stroke: "#ccd" }));
  svg.appendChild(svgEl("line", { x1: pad, y1: y(1), x2: W - pad, y2: y(1), stroke: "#eef" }));
  svg.appendChild(svgEl("text", { x: 2, y: y(1) + 4 }, "100%"));
  svg.appendChild(svgEl("text", { x: 2, y: y(0) + 4 }, "0%"));
  svg.appendChild(svgEl("text", { x: W - pad - 60, y: H - 6 }, size(xmax)));
  const pts = [[0, 0], ...z.curve];
  svg.appendChild(svgEl("polyline", { id: "sizing-curve", points: pts.map(([c, r]) => `${x(c).toFixed(1)},${y(r).toFixed(1)}`).join(" "),
    fill: "none", stroke: COLORS[0], "stroke-width": 2 }));
  const mark = (c, label, color, id) => {
    svg.appendChild(svgEl("line", { id, x1: x(c), y1: y(0), x2: x(c), y2: y(1), stroke: color, "stroke-dasharray": "4 3" }));
    svg.appendChild(svgEl("text", { x: Math.min(x(c) + 4, W - 150), y: id === "sizing-knee" ? y(1) + 14 : y(1) + 28, fill: color }, label));
  };
  const at = (c) => { const row = z.rows.find((r) => r.capacity === c); return row ? pct(row.hit_rate) : "-"; };
  mark(z.recommended, `recommended ${size(z.recommended)} (${at(z.recommended)})`, COLORS[2], "sizing-knee");
  mark(z.current_capacity || 0, `current ${size(z.current_capacity || 0)} (${at(z.current_capacity) === "-" ? "0.0%" : at(z.current_capacity)})`, COLORS[1], "sizing-current");
  $("sizing-summary").textContent = `${z.puts.toLocaleString()} prompts recorded; working set ${size(z.working_set)}; ` +
    `with room for everything ${pct(z.max_hit_rate)} of prompt tokens would be served`;
}

function render(s) {
  $("path").textContent = s.path;
  const fill = s.capacity_bytes ? s.used_bytes / s.capacity_bytes : 0;
  $("fill-bar").style.width = Math.min(100, 100 * fill) + "%";
  $("fill-bar").classList.toggle("warn", fill > 0.9);
  $("used").textContent = size(s.used_bytes);
  $("used").dataset.bytes = s.used_bytes;
  $("capacity").textContent = size(s.capacity_bytes);
  $("capacity").dataset.bytes = s.capacity_bytes;
  $("free").textContent = size(s.free_bytes);
  $("fill-pct").textContent = pct(fill);
  $("chunks").textContent = s.chunks;
  $("pinned").textContent = `${s.pinned_chunks} (${size(s.pinned_bytes)})`;
  // The 0 GB tier serves nothing: show what a bucket would have served where the real figures stand.
  const w = s.would_have_served;
  $("avoided-label").textContent = w ? "would have avoided (a 0 GB bucket, shadow mode)" : "prefill tokens avoided";
  $("tokens-avoided").textContent = (w ? w.tokens : s.tokens_avoided).toLocaleString();
  $("cost-avoided").textContent = dollars(w ? w.cost : s.cost_avoided);
  $("evictions").textContent = Object.entries(s.evictions).map(([c, e]) => `${c} ${e.chunks} (${size(e.bytes)})`).join(", ");
  for (const id of ["resize-btn"]) $(id).disabled = s.read_only;

  const byModel = { ...s.by_model };
  if (w) for (const [model, m] of Object.entries(w.by_model))
    byModel[model] = { chunks: 0, tokens: 0, bytes: 0, hit_rate_hour: null, ...byModel[model], hit_rate: m.hit_rate, cost_avoided: m.cost };
  const models = Object.entries(byModel).map(([model, m]) => ({ model, ...m }));
  drawModels(s.by_model);
  fillTable("models", models, ["model", (r) => num(r.chunks), (r) => num(r.tokens.toLocaleString()),
    (r) => num(size(r.bytes)), (r) => num(pct(r.hit_rate)), (r) => num(pct(r.hit_rate_hour)),
    (r) => num(dollars(r.cost_avoided))]);

  const clearButton = (r) => {
    const td = el("td");
    const b = el("button", { class: "clear-btn" }, "clear");
    b.disabled = s.read_only;
    b.onclick = () => act("/api/clear", { model: r.model, tag: r.tag },
      (d) => `cleared ${d.chunks} chunks (${size(d.bytes)}) of ${r.model} ${r.tag || "(untagged)"}`);
    td.appendChild(b);
    return td;
  };
  fillTable("tags", s.by_tag, ["model", (r) => el("td", {}, r.tag || "(untagged)"), (r) => num(r.chunks),
    (r) => num(size(r.bytes)), (r) => num(r.hits), (r) => num(duration(r.idle_s)), (r) => num(r.pinned_chunks),
    (r) => num(r.next_expiry ? duration(r.next_expiry - s.now) : "never"), clearButton]);
  fillTable("stale", s.stale, ["model", (r) => el("td", {}, r.tag || "(untagged)"), (r) => num(size(r.bytes)),
    (r) => num(duration(r.idle_s)), clearButton]);
  $("updated").textContent = "updated " + new Date().toLocaleTimeString();
}

async function refresh() {
  const price = encodeURIComponent($("price").value || "0");
  const stale = encodeURIComponent($("stale-after").value || "7d");
  try {
    const [s, h, z] = await Promise.all([api(`/api/stats?price=${price}&stale_after=${stale}`), api("/api/history?hours=6"),
      api(`/api/size?price=${price}`).catch((e) => ({ error: e.message }))]);
    last = s;
    render(s);
    drawHistory(h);
    drawSizing(z);
  } catch (e) {
    say(e.message, "error");
  }
}

document.querySelectorAll("table.sortable th[data-key]").forEach((th) => {
  th.onclick = () => {
    const id = th.closest("table").id;
    const prev = sortState[id];
    sortState[id] = { key: th.dataset.key, asc: prev && prev.key === th.dataset.key ? !prev.asc : false };
    th.closest("tr").querySelectorAll("th").forEach((h) => h.classList.remove("sorted", "asc"));
    th.classList.add("sorted");
    if (sortState[id].asc) th.classList.add("asc");
    if (last) render(last);
  };
});
$("resize-btn").onclick = () => act("/api/resize", { capacity: $("capacity-input").value.trim() },
  (d) => `capacity now ${size(d.capacity_bytes)}; evicted ${d.chunks} chunks`);
$("price").oninput = refresh;
$("stale-after").onchange = refresh;
$("token").value = sessionStorage.getItem("pykvstore-token") || "";
$("token").oninput = () => sessionStorage.setItem("pykvstore-token", $("token").value);
refresh();
setInterval(refresh, 3000);
