// locft's dashboard: plain JS, inline SVG charts, data from the server's /locft/ endpoints.
"use strict";

const TOKEN_KEY = "locft-token";
const PHASE_COLORS = ["#2f5fd0", "#d06a2f", "#1a7f37", "#8e44ad", "#b26a00", "#c62828", "#00838f",
                      "#6d4c41", "#546e7a", "#ad1457", "#558b2f", "#283593"];
const state = { selectedRound: null, rounds: [], promoted: null, factTimer: null };

// ---- plumbing ----------------------------------------------------------------------------

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
const $ = id => document.getElementById(id);

class ApiRefused extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, body) {
  const headers = { "Content-Type": "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  const response = await fetch(path, body === undefined ? { headers } :
    { method: "POST", headers, body: JSON.stringify(body) });
  const data = await response.json().catch(() => null);
  if (response.status === 401) {
    showTokenBar(token ? "The token was refused: enter the right one (serve.api_token)." :
      "This server needs its API token (serve.api_token) to show or change anything.");
  }
  if (!response.ok) {
    throw new ApiRefused(response.status, (data && data.error && data.error.message) || ("HTTP " + response.status));
  }
  return data;
}

function say(text, isError) {
  const box = $("message");
  box.textContent = text;
  box.className = isError ? "error" : "";
  box.hidden = false;
}

function showTokenBar(why) {
  $("token-why").textContent = why;
  $("token-bar").hidden = false;
}

function fmtTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit" });
}
function fmtSeconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 90) return s.toFixed(1) + " s";
  if (s < 5400) return (s / 60).toFixed(1) + " min";
  return (s / 3600).toFixed(1) + " h";
}
function fmtNum(v, digits = 3) {
  return typeof v === "number" && isFinite(v) ? v.toFixed(digits) : (v === null || v === undefined ? "–" : esc(v));
}
const badge = (text, kind) => `<span class="badge b-${esc(kind || text)}">${esc(text)}</span>`;

// ---- charts --------------------------------------------------------------------------------

// A line chart as an SVG string. series: [{name, color, points: [[x, y], ...]}]
function lineChart(series, opts) {
  const W = 600, H = 220, L = 52, R = 12, T = 12, B = 30;
  const pts = series.flatMap(s => s.points).filter(p => p[1] !== null && isFinite(p[1]));
  if (!pts.length) return `<p class="hint">No points to draw.</p>`;
  let x0 = Math.min(...pts.map(p => p[0])), x1 = Math.max(...pts.map(p => p[0]));
  // the data's own range (a loss from 10.8 to 9.7 is a curve, not a flat line near the top)
  let y0 = Math.min(...pts.map(p => p[1])), y1 = Math.max(...pts.map(p => p[1]));
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  const pad = (y1 - y0) * 0.05;
  y0 = Math.max(y0 >= 0 ? 0 : -Infinity, y0 - pad); y1 += pad;
  const sx = x => L + (x - x0) / (x1 - x0) * (W - L - R);
  const sy = y => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  let svg = `<svg class="chart ${esc(opts.cls || "")}" viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(opts.title || "chart")}">`;
  for (let i = 0; i <= 4; i++) {
    const y = y0 + (y1 - y0) * i / 4;
    svg += `<line x1="${L}" x2="${W - R}" y1="${sy(y)}" y2="${sy(y)}" stroke="#eceef1"/>`;
    svg += `<text x="${L - 6}" y="${sy(y) + 3}" text-anchor="end">${y.toFixed(y1 - y0 < 0.1 ? 4 : 3)}</text>`;
  }
  svg += `<text x="${L}" y="${H - 8}">${esc(x0)}</text><text x="${W - R}" y="${H - 8}" text-anchor="end">${esc(x1)}</text>`;
  svg += `<text x="${(L + W - R) / 2}" y="${H - 8}" text-anchor="middle">${esc(opts.xlabel || "")}</text>`;
  for (const s of series) {
    const line = s.points.filter(p => p[1] !== null && isFinite(p[1]));
    if (!line.length) continue;
    const d = line.map(p => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
    svg += `<polyline class="series" data-series="${esc(s.name)}" fill="none" stroke="${s.color}" stroke-width="2" points="${d}"/>`;
    if (line.length < 60) svg += line.map(p => `<circle cx="${sx(p[0]).toFixed(1)}" cy="${sy(p[1]).toFixed(1)}" r="2.5" fill="${s.color}"><title>${esc(s.name)} ${esc(p[0])}: ${p[1].toFixed(4)}</title></circle>`).join("");
  }
  svg += `</svg><div class="legend">` + series.filter(s => s.points.length).map(s => `<span><i style="background:${s.color}"></i>${esc(s.name)}</span>`).join("") + `</div>`;
  return svg;
}

function phasesBar(timings) {
  if (!timings) return "";
  const parts = Object.entries(timings).filter(([k, v]) => k !== "total" && typeof v === "number" && v >= 0.05);
  const total = parts.reduce((a, [, v]) => a + v, 0);
  if (!total) return "";
  const color = i => PHASE_COLORS[i % PHASE_COLORS.length];
  return `<div class="phases">` + parts.map(([k, v], i) => `<span title="${esc(k)} ${v.toFixed(1)} s" style="width:${(100 * v / total).toFixed(2)}%;background:${color(i)}"></span>`).join("") +
    `</div><div class="legend">` + parts.map(([k, v], i) => `<span><i style="background:${color(i)}"></i>${esc(k)} ${fmtSeconds(v)}</span>`).join("") + `</div>`;
}

function checkChips(gate) {
  if (!gate || !gate.checks || !gate.checks.length) return "";
  return `<div class="checks">` + gate.checks.map(c => {
    const kind = c.gated === false ? "info" : (c.passed ? "ok" : "fail");
    const value = typeof c.value === "number" ? c.value.toFixed(3) : "–";
    const thr = typeof c.threshold === "number" ? ` vs ${c.threshold.toFixed(3)}` : "";
    return `<span class="check ${kind}" title="${esc(c.detail)}">${esc(c.name)} ${value}${thr}</span>`;
  }).join("") + `</div>`;
}

function capabilitySummary(gate) {
  if (!gate || !gate.capability || !gate.capability.length) return "";
  return `<div class="checks">` + gate.capability.map(t => {
    const delta = typeof t.delta === "number" ? (t.delta >= 0 ? "+" : "") + (100 * t.delta).toFixed(1) + " pts" : "–";
    return `<span class="check info">${esc(t.task)} ${delta}</span>`;
  }).join("") + `</div>`;
}

// ---- header, live round --------------------------------------------------------------------

async function loadOverview() {
  const o = await api("/locft/overview");
  state.promoted = o.promoted.id;
  $("promoted-version").textContent = "v" + o.promoted.id;
  $("served-version").textContent = "v" + o.served.version;
  $("facts-chip").textContent = `facts ${o.facts.active} active · ${o.facts.pending} pending · ${o.facts.retracted} retracted`;
  $("daemon-chip").textContent = o.daemon ? `daemon pid ${o.daemon.pid} · next round ${o.daemon.next_round_at || "not scheduled"}` :
    "no daemon (locft serve)";
  const moves = o.history.slice(-8).reverse();
  $("promotions").innerHTML = `<h3>Promoted pointer</h3><table><tr><th>when</th><th>action</th><th>version</th><th>from</th><th>by</th><th>reason</th></tr>` +
    moves.map(m => `<tr><td>${fmtTime(m.created_at)}</td><td>${esc(m.action)}${m.forced ? " (forced)" : ""}</td><td>v${esc(m.version_id)}</td>` +
      `<td>${m.previous_version_id === null ? "–" : "v" + esc(m.previous_version_id)}</td><td>${esc(m.actor || "")}</td><td>${esc(m.reason || "")}</td></tr>`).join("") + `</table>`;
}

async function loadLive() {
  const live = await api("/locft/live");
  const box = $("live");
  if (!live.running) {
    box.innerHTML = `<p class="hint">No round is running. The promoted version is v${esc(live.promoted_version)}; this server answers with v${esc(live.served_version)}.</p>`;
    return live;
  }
  const r = live.running, p = live.progress || {};
  const pct = p.total ? Math.min(100, 100 * (p.done || 0) / p.total) : 0;
  let html = `<div class="round-head">${badge("running")} <b>round ${esc(r.id)}</b> <span class="when">${esc(r.trigger)} · started ${fmtTime(r.started_at)}</span></div>`;
  html += p.phase ? `<p>phase <b id="live-phase">${esc(p.phase)}</b>${p.total ? ` ${esc(p.done)}/${esc(p.total)}` : ""}` +
    `${p.detail ? " · " + esc(p.detail) : ""}${typeof p.loss === "number" ? " · loss " + p.loss.toFixed(4) : ""}</p>` :
    `<p class="hint">No progress reported yet (a round run by <code>locft round run</code> reports on its own terminal).</p>`;
  if (p.total) html += `<div class="progress"><div style="width:${pct.toFixed(1)}%"></div></div>`;
  if (live.loss_points && live.loss_points.length) {
    html += lineChart([{ name: "training loss (step)", color: "#2f5fd0", points: live.loss_points }],
      { xlabel: "step", cls: "live-loss", title: "live training loss" });
  }
  box.innerHTML = html;
  return live;
}

// ---- history ---------------------------------------------------------------------------------

async function loadRounds() {
  const rounds = (await api("/locft/rounds?limit=50")).data;
  state.rounds = rounds;
  if (!rounds.length) {
    $("timeline").innerHTML = `<p class="hint">No rounds yet: <code>locft round run</code>, or request one above.</p>`;
    return;
  }
  $("timeline").innerHTML = rounds.map(r => {
    const v = r.version ? `version v${esc(r.version.id)} (${esc(r.version.state)}, ${esc(r.version.fact_count)} facts)` : "no version";
    return `<div class="round${state.selectedRound === r.id ? " selected" : ""}" data-round="${esc(r.id)}">
      <div class="round-head">${badge(r.outcome)} <b>round ${esc(r.id)}</b> <span>${v}</span>
        <span class="when">${esc(r.trigger)} · ${fmtTime(r.started_at)} · ${fmtSeconds(r.seconds)}</span></div>
      ${r.error ? `<div class="hint">${esc(r.error)}</div>` : ""}
      ${checkChips(r.gate)}${capabilitySummary(r.gate)}${phasesBar(r.timings)}</div>`;
  }).join("");
  for (const el of document.querySelectorAll(".round[data-round]")) {
    el.addEventListener("click", () => showRound(Number(el.dataset.round)));
  }
  if (state.selectedRound === null) showRound(rounds[0].id);
}

async function showRound(id) {
  state.selectedRound = id;
  for (const el of document.querySelectorAll(".round[data-round]")) el.classList.toggle("selected", Number(el.dataset.round) === id);
  const r = await api(`/locft/rounds/${id}`);
  const g = r.gate;
  $("round-section").hidden = false;
  $("round-title").textContent = `Round ${r.id}: ${r.outcome}`;
  const loss = (g && g.loss_per_epoch) || r.loss_history || [];
  const replay = (g && g.replay_loss_per_epoch) || [];
  let html = `<div class="grid2"><div><h3>Loss per epoch</h3>`;
  html += loss.length ? lineChart([
    { name: "edit loss", color: "#2f5fd0", points: loss.map((y, i) => [i + 1, y]) },
    { name: "replay loss", color: "#d06a2f", points: replay.map((y, i) => [i + 1, y]).filter(p => p[1] !== null) },
  ], { xlabel: "epoch", cls: "round-loss", title: `round ${r.id} loss per epoch` }) : `<p class="hint">No training recorded for this round.</p>`;
  html += `</div><div>`;
  if (r.version) {
    html += `<h3>Version v${esc(r.version.id)} · ${esc(r.version.state)} · ${esc(r.version.fact_count)} facts</h3>`;
    if (r.version.id !== state.promoted && r.version.state !== "rejected") {
      html += `<button class="promote" data-version="${esc(r.version.id)}">Promote v${esc(r.version.id)}</button> `;
    }
    if (r.version.state === "rejected") html += `<button class="promote quiet" data-version="${esc(r.version.id)}" data-force="1">Promote v${esc(r.version.id)} past its gates…</button>`;
  }
  if (g) {
    html += `<h3>Gate checks ${badge(g.passed ? "passed" : "failed")}</h3><table><tr><th>check</th><th class="num">value</th><th class="num">threshold</th><th></th><th>detail</th></tr>` +
      g.checks.map(c => `<tr><td>${esc(c.name)}</td><td class="num">${fmtNum(c.value)}</td><td class="num">${fmtNum(c.threshold)}</td>` +
        `<td>${c.gated === false ? badge("info") : badge(c.passed ? "ok" : "fail")}</td><td class="hint">${esc(c.detail)}</td></tr>`).join("") + `</table>`;
    if (g.capability.length) {
      html += `<h3>Capability against the base model</h3><table><tr><th>task</th><th class="num">base</th><th class="num">candidate</th><th class="num">delta</th><th class="num">items lost / gained</th><th class="num">p</th></tr>` +
        g.capability.map(t => `<tr><td>${esc(t.task)}</td><td class="num">${fmtNum(t.base, 4)}</td><td class="num">${fmtNum(t.candidate, 4)}</td>` +
          `<td class="num">${typeof t.delta === "number" ? (100 * t.delta).toFixed(2) + " pts" : "–"}</td>` +
          `<td class="num">${t.lost ?? "–"} / ${t.gained ?? "–"}</td><td class="num">${fmtNum(t.p_worse, 3)}</td></tr>`).join("") + `</table>`;
    }
    const m = Object.entries(g.metrics || {}).filter(([, v]) => typeof v === "number");
    html += `<h3>Candidate metrics</h3><table>` + m.map(([k, v]) => `<tr><td>${esc(k)}</td><td class="num">${fmtNum(v, 4)}</td></tr>`).join("") + `</table>`;
  }
  html += `<h3>Duration ${fmtSeconds(r.seconds)}</h3>${phasesBar(r.timings)}</div></div>`;
  if (r.version) html += `<h3>Facts of v${esc(r.version.id)}</h3><div id="round-facts" class="hint">loading…</div>`;
  $("round-detail").innerHTML = html;
  bindPromoteButtons($("round-detail"));
  if (r.version) loadVersionFacts(r.version.id);
}

async function loadVersionFacts(id) {
  const vf = await api(`/locft/versions/${id}/facts`);
  const mark = c => c === true ? `<span class="yes">yes</span>` : c === false ? `<span class="no">no</span>` : `<span class="unknown">not measured</span>`;
  const rows = vf.facts.slice(0, 200).map(f => `<tr><td>${esc(f.fact_id)}</td><td class="prompt">${esc(f.prompt)}</td><td>${esc(f.answer)}</td><td>${mark(f.correct)}</td></tr>`).join("");
  $("round-facts").innerHTML = `<p class="hint">${vf.correct} of ${vf.facts.length} answered correctly${vf.sampled ? " (a sample was measured)" : ""}${vf.facts.length > 200 ? "; the first 200 shown" : ""}.</p>` +
    `<table><tr><th>id</th><th>prompt</th><th>answer</th><th>answered</th></tr>${rows}</table>`;
}

// ---- versions ----------------------------------------------------------------------------

async function loadVersions() {
  const versions = (await api("/locft/versions")).data;
  $("versions").innerHTML = `<table><tr><th>version</th><th>state</th><th class="num">facts</th><th>gates</th><th>created</th><th>round</th><th></th></tr>` +
    versions.map(v => `<tr data-version-row="${esc(v.id)}"><td>v${esc(v.id)}</td><td>${badge(v.state)}</td><td class="num">${esc(v.fact_count)}</td>` +
      `<td>${v.id === 0 ? "–" : v.gate ? badge(v.gate.passed ? "passed" : "failed") : "not gated"}</td><td>${fmtTime(v.created_at)}</td>` +
      `<td>${v.round_id ?? "–"}</td><td>${v.state === "promoted" ? "" : `<button class="promote small${v.state === "rejected" ? " quiet" : ""}" data-version="${esc(v.id)}"${v.state === "rejected" ? ' data-force="1"' : ""}>promote</button>`}</td></tr>`).join("") + `</table>`;
  bindPromoteButtons($("versions"));
}

function bindPromoteButtons(root) {
  for (const b of root.querySelectorAll("button.promote")) {
    b.addEventListener("click", ev => { ev.stopPropagation(); promote(Number(b.dataset.version), b.dataset.force === "1"); });
  }
}

// ---- actions -----------------------------------------------------------------------------

async function act(what, fn) {
  try {
    const text = await fn();
    say(text, false);
  } catch (err) {
    say(`${what} refused: ${err.message}`, true);
  }
  refreshAll();
}

function promote(version, force) {
  const question = force ? `Version ${version} failed its gates. Promote it anyway (logged as forced)?` : `Promote version ${version}? It will be served within a second.`;
  if (!confirm(question)) return;
  act("promote", async () => {
    const r = await api("/locft/promote", { version, force, author: "dashboard", reason: force ? "forced from the dashboard" : "from the dashboard" });
    return r.changed ? `Promoted version ${r.version_id} (was ${r.previous_version_id}); serving v${r.served_version}.` : `Version ${r.version_id} was already promoted.`;
  });
}

$("rollback").addEventListener("click", () => {
  if (!confirm("Roll back to the previously promoted version?")) return;
  act("rollback", async () => {
    const r = await api("/locft/rollback", { author: "dashboard", reason: "from the dashboard" });
    return `Rolled back to version ${r.version_id} (was ${r.previous_version_id}); serving v${r.served_version}.`;
  });
});

$("request-round").addEventListener("click", () => {
  if (!confirm("Ask the daemon for a round now?")) return;
  act("round request", async () => {
    const r = await api("/locft/rounds", { author: "dashboard", reason: "from the dashboard" });
    return `Round requested (request ${r.id}); the daemon picks it up within its poll interval.`;
  });
});

// ---- facts -------------------------------------------------------------------------------

async function loadFacts() {
  const q = encodeURIComponent($("fact-search").value.trim());
  const status = $("fact-status").value;
  const page = await api(`/locft/facts?status=${status}&limit=100${q ? "&search=" + q : ""}`);
  $("fact-counts").textContent = `${page.counts.active} active, ${page.counts.pending} pending, ${page.counts.retracted} retracted` +
    ` · "in versions" looks at the newest ${page.versions_checked.length}`;
  const mark = c => c === true ? `<span class="yes">yes</span>` : c === false ? `<span class="no">no</span>` : `<span class="unknown">–</span>`;
  $("facts").innerHTML = `<table><tr><th>id</th><th>prompt</th><th>answer</th><th>status</th><th>in versions</th><th>promoted v${esc(page.promoted)} answers</th><th></th></tr>` +
    page.data.map(f => `<tr data-fact="${esc(f.fact_id)}"><td>${esc(f.fact_id)}</td><td class="prompt">${esc(f.prompt)}</td><td>${esc(f.answer)}</td>` +
      `<td>${badge(f.status, f.status === "active" ? "ok" : "retired")}${f.pending ? " " + badge("pending: " + f.pending, "candidate") : ""}</td>` +
      `<td>${f.in_versions.length ? f.in_versions.map(v => "v" + v).join(", ") : "–"}</td><td>${mark(f.promoted_correct)}</td>` +
      `<td>${f.status === "active" ? `<button class="small quiet edit" data-id="${esc(f.fact_id)}">edit</button> <button class="small danger retract" data-id="${esc(f.fact_id)}">retract</button>` : ""}</td></tr>`).join("") +
    `</table>` + (page.data.length ? "" : `<p class="hint">No facts match.</p>`);
  for (const b of $("facts").querySelectorAll("button.retract")) {
    b.addEventListener("click", () => {
      if (!confirm(`Retract fact ${b.dataset.id}? The next round trains without it.`)) return;
      act("retract", async () => { await api(`/locft/facts/${b.dataset.id}/retract`, { author: "dashboard" }); return `Fact ${b.dataset.id} retracted.`; });
    });
  }
  for (const b of $("facts").querySelectorAll("button.edit")) {
    b.addEventListener("click", () => {
      const row = page.data.find(f => String(f.fact_id) === b.dataset.id);
      const answer = prompt(`New answer for: ${row.prompt}`, row.answer);
      if (answer === null || answer.trim() === row.answer) return;
      act("edit", async () => {
        const r = await api(`/locft/facts/${b.dataset.id}/revise`, { answer, author: "dashboard" });
        return r.changed ? `Fact ${b.dataset.id} is now revision ${r.revision.revision}: ${r.revision.answer}` : "Nothing changed.";
      });
    });
  }
}

$("fact-search").addEventListener("input", () => { clearTimeout(state.factTimer); state.factTimer = setTimeout(() => loadFacts().catch(() => {}), 250); });
$("fact-status").addEventListener("change", () => loadFacts().catch(() => {}));

// ---- token -------------------------------------------------------------------------------

$("token-button").addEventListener("click", () => showTokenBar("The API token (serve.api_token), kept in this tab only."));
$("token-bar").addEventListener("submit", ev => {
  ev.preventDefault();
  const value = $("token-input").value.trim();
  if (value) sessionStorage.setItem(TOKEN_KEY, value); else sessionStorage.removeItem(TOKEN_KEY);
  $("token-input").value = "";
  $("token-bar").hidden = true;
  refreshAll();
});
$("token-forget").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); $("token-bar").hidden = true; });

// ---- refresh -------------------------------------------------------------------------------

async function refreshAll() {
  try {
    await loadOverview();
  } catch (err) {
    if (err.status !== 401) say("cannot reach the server: " + err.message, true);
    return;
  }
  await Promise.allSettled([loadLive(), loadRounds(), loadVersions(), loadFacts()]);
  if (state.selectedRound !== null) showRound(state.selectedRound).catch(() => {});
  document.body.dataset.loaded = "1";
}

let lastRunning = null;
async function tick() {
  try {
    await loadOverview();
    const live = await loadLive();
    const running = live.running ? live.running.id : null;
    if (running !== lastRunning) { lastRunning = running; refreshAll(); }  // a round began or ended
  } catch (err) { /* shown by api() */ }
}

refreshAll();
setInterval(tick, 2000);
