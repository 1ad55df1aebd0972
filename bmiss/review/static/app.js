// bmiss review: plain JavaScript on canvases, no build step, nothing loaded from elsewhere.
// The server sends decimated views (min/max per pixel column); zooming asks for the visible stretch.
"use strict";
(function () {
  const TOKEN = window.BMISS_TOKEN;
  const $ = (id) => document.getElementById(id);
  const S = {
    unit: 0, state: null, view: null, muap: null, overview: null,
    t0: 0, t1: null, mode: "zoom", busy: 0, drag: null,
  };
  // test/benchmark hooks: seq counts finished redraws; timings in ms
  window.bmiss = { seq: 0, firstPlotMs: null, lastEditMs: null, lastError: null, edits: [] };

  // ------------------------------------------------------------------ server
  async function api(path, body) {
    const url = path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(TOKEN);
    const opt = body === undefined ? {} : {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body)
    };
    const r = await fetch(url, opt);
    const d = await r.json();
    if (!r.ok) throw new Error(d.error || ("HTTP " + r.status));
    return d;
  }
  function status(msg, err) {
    const el = $("status");
    el.textContent = msg;
    el.className = err ? "err" : "";
    if (err) window.bmiss.lastError = msg;
  }

  // ------------------------------------------------------------------ canvases
  function fit(c) {
    const w = Math.max(100, Math.round(c.clientWidth));
    if (c.width !== w) c.width = w;
    return c.getContext("2d");
  }
  const fmt = (v, d) => (v === null || v === undefined || Number.isNaN(v)) ? "–" : Number(v).toFixed(d);
  const PAD = { l: 44, r: 8, t: 8, b: 20 };

  function xOf(c, t) { return PAD.l + (t - S.t0) / (S.t1 - S.t0) * (c.width - PAD.l - PAD.r); }
  function tOf(c, x) { return S.t0 + (x - PAD.l) / (c.width - PAD.l - PAD.r) * (S.t1 - S.t0); }
  function axes(ctx, c, y0, y1, yTicks, label) {
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, c.width, c.height);
    ctx.strokeStyle = "#ccc"; ctx.lineWidth = 1;
    ctx.strokeRect(PAD.l, PAD.t, c.width - PAD.l - PAD.r, c.height - PAD.t - PAD.b);
    ctx.fillStyle = "#555"; ctx.font = "11px sans-serif";
    ctx.textAlign = "right";
    for (const v of yTicks) {
      const y = yPix(c, v, y0, y1);
      ctx.fillText(fmt(v, Math.abs(v) < 10 && v % 1 ? 1 : 0), PAD.l - 4, y + 4);
      ctx.strokeStyle = "#eee"; ctx.beginPath(); ctx.moveTo(PAD.l, y); ctx.lineTo(c.width - PAD.r, y); ctx.stroke();
    }
    // time axis (s)
    const fs = S.view.fs, span = (S.t1 - S.t0) / fs;
    const step = niceStep(span / 8);
    ctx.textAlign = "center";
    for (let s = Math.ceil(S.t0 / fs / step) * step; s <= S.t1 / fs; s += step) {
      const x = xOf(c, s * fs);
      ctx.fillText(fmt(s, step < 1 ? (step < 0.1 ? 2 : 1) : 0), x, c.height - 6);
    }
    if (label) { ctx.textAlign = "left"; ctx.fillText(label, PAD.l + 4, PAD.t + 11); }
  }
  function niceStep(x) {
    const p = Math.pow(10, Math.floor(Math.log10(Math.max(x, 1e-9))));
    for (const m of [1, 2, 5, 10]) if (m * p >= x) return m * p;
    return 10 * p;
  }
  function yPix(c, v, y0, y1) { return PAD.t + (1 - (v - y0) / (y1 - y0)) * (c.height - PAD.t - PAD.b); }
  function yVal(c, y, y0, y1) { return y0 + (1 - (y - PAD.t) / (c.height - PAD.t - PAD.b)) * (y1 - y0); }

  function drawSource() {
    const c = $("source"), ctx = fit(c), v = S.view, src = v.source;
    let lo = Infinity, hi = -Infinity;
    const arrLo = src.kind === "raw" ? src.y : src.lo, arrHi = src.kind === "raw" ? src.y : src.hi;
    for (const a of arrLo) if (a !== null && a < lo) lo = a;
    for (const a of arrHi) if (a !== null && a > hi) hi = a;
    if (!isFinite(lo)) { lo = -1; hi = 1; }
    lo = Math.min(lo, -0.2); hi = Math.max(hi, 1.2);
    const padY = 0.05 * (hi - lo); S.sy = [lo - padY, hi + padY];
    const [y0, y1] = S.sy;
    axes(ctx, c, y0, y1, [0, 0.5, 1].concat(hi > 2 ? [Math.round(hi)] : []), "source (normalised: discharges ≈ 1)");
    ctx.save(); ctx.beginPath(); ctx.rect(PAD.l, PAD.t, c.width - PAD.l - PAD.r, c.height - PAD.t - PAD.b); ctx.clip();
    ctx.strokeStyle = "#1f4e9a"; ctx.lineWidth = 1; ctx.beginPath();
    if (src.kind === "raw") {
      src.y.forEach((y, k) => {
        const X = xOf(c, src.t0 + k), Y = yPix(c, y === null ? 0 : y, y0, y1);
        if (k === 0) ctx.moveTo(X, Y); else ctx.lineTo(X, Y);
      });
    } else {
      for (let k = 0; k < src.lo.length; k++) {
        const X = Math.round(xOf(c, src.t0 + (k + 0.5) * src.step)) + 0.5;
        ctx.moveTo(X, yPix(c, src.lo[k], y0, y1)); ctx.lineTo(X, yPix(c, src.hi[k], y0, y1) - 0.5);
      }
    }
    ctx.stroke();
    const outl = new Set(v.outliers);
    v.spikes.forEach((t, k) => {
      const X = xOf(c, t), Y = yPix(c, v.heights[k], y0, y1);
      ctx.beginPath(); ctx.arc(X, Y, 3.2, 0, 2 * Math.PI);
      ctx.fillStyle = outl.has(t) ? "#f39c12" : "#d62728"; ctx.fill();
    });
    if (S.drag && S.drag.canvas === c && S.drag.moved) {
      const d = S.drag;
      ctx.fillStyle = S.mode === "delete" ? "rgba(214,39,40,0.15)" : S.mode === "add" ? "rgba(44,160,44,0.15)" : "rgba(31,78,154,0.12)";
      ctx.strokeStyle = "#555";
      ctx.fillRect(Math.min(d.x0, d.x1), Math.min(d.y0, d.y1), Math.abs(d.x1 - d.x0), Math.abs(d.y1 - d.y0));
      ctx.strokeRect(Math.min(d.x0, d.x1), Math.min(d.y0, d.y1), Math.abs(d.x1 - d.x0), Math.abs(d.y1 - d.y0));
    }
    ctx.restore();
    const fs = v.fs;
    $("xinfo").textContent = `time ${fmt(S.t0 / fs, 2)}–${fmt(S.t1 / fs, 2)} s of ${fmt(v.n_samples / fs, 1)} s` +
      (src.kind === "raw" ? " · raw samples" : ` · ${src.step} samples per pixel (min/max)`) +
      ` · ${v.spikes.length} discharges shown`;
  }

  function drawRate() {
    const c = $("rate"), ctx = fit(c), v = S.view;
    const rates = v.rate_hz.filter((r) => r !== null);
    const sorted = rates.slice().sort((a, b) => a - b);
    const q = sorted.length ? sorted[Math.floor(0.98 * (sorted.length - 1))] : 20;
    const y1 = Math.max(10, Math.min(Math.max(q * 1.6, 10), 200)), y0 = 0;
    S.ry = [y0, y1];
    axes(ctx, c, y0, y1, [0, niceStep(y1 / 3), 2 * niceStep(y1 / 3)].filter((t) => t < y1), "");
    ctx.save(); ctx.beginPath(); ctx.rect(PAD.l, PAD.t, c.width - PAD.l - PAD.r, c.height - PAD.t - PAD.b); ctx.clip();
    const outl = new Set(v.outliers);
    v.rate_t.forEach((t, k) => {
      if (t < S.t0 || t > S.t1) return;
      const r = v.rate_hz[k]; if (r === null) return;
      const X = xOf(c, t), Y = yPix(c, Math.min(r, y1 * 0.99), y0, y1);
      ctx.beginPath(); ctx.arc(X, Y, 2.4, 0, 2 * Math.PI);
      ctx.fillStyle = outl.has(t) ? "#f39c12" : "#2a7a2a"; ctx.fill();
    });
    ctx.restore();
  }

  function drawMuap() {
    const c = $("muap"), ctx = fit(c), m = S.muap;
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, c.width, c.height);
    if (!m || !m.muap) {
      ctx.fillStyle = "#777"; ctx.fillText("too few discharges for a MUAP", 10, 20);
      $("muap-info").textContent = ""; return;
    }
    const [R, C] = m.grid, W = c.width / C, H = (c.height - 16) / R;
    const scale = m.ptp_uv > 0 ? 1.6 * H / m.ptp_uv : 1;
    ctx.strokeStyle = "#eee";
    for (let r = 0; r < R; r++) for (let q = 0; q < C; q++) ctx.strokeRect(q * W + 1, r * H + 1, W - 2, H - 2);
    ctx.strokeStyle = "#111"; ctx.lineWidth = 1;
    m.muap.forEach((tr, ch) => {
      const [r, q] = m.channel_map[ch], T = tr.length;
      ctx.beginPath();
      tr.forEach((y, k) => {
        const X = q * W + 0.06 * W + 0.88 * W * k / Math.max(T - 1, 1), Y = r * H + H / 2 - (y === null ? 0 : y) * scale;
        if (k === 0) ctx.moveTo(X, Y); else ctx.lineTo(X, Y);
      });
      ctx.stroke();
    });
    ctx.fillStyle = "#555"; ctx.font = "11px sans-serif";
    ctx.fillText(`largest peak-to-peak ${fmt(m.ptp_uv, 0)} µV · ${fmt(m.t_ms[0], 0)}…${fmt(m.t_ms[m.t_ms.length - 1], 0)} ms`, 4, c.height - 4);
    $("muap-info").textContent = `(${m.n} discharges)`;
  }

  function drawOverview() {
    const c = $("overview"), ctx = fit(c), o = S.overview;
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, c.width, c.height);
    if (!o) return;
    const n = o.rows.length, h = c.height / Math.max(n, 1);
    o.rows.forEach((cols, u) => {
      if (u === S.unit) { ctx.fillStyle = "#dde8f6"; ctx.fillRect(0, u * h, c.width, h); }
      const row = S.state && S.state.units[u];
      ctx.fillStyle = row && row.flagged ? "#c60" : "#333";
      for (const px of cols) ctx.fillRect(px * c.width / o.px, u * h + 0.15 * h, 1, Math.max(1, 0.7 * h));
    });
    // visible window of the selected unit
    ctx.strokeStyle = "#1f4e9a";
    if (S.t1) ctx.strokeRect(S.t0 / o.n_samples * c.width, S.unit * h, Math.max(2, (S.t1 - S.t0) / o.n_samples * c.width), h);
  }

  function fillTable() {
    const tb = $("unit-rows"); tb.innerHTML = "";
    S.state.units.forEach((u) => {
      const tr = document.createElement("tr");
      tr.className = (u.unit === S.unit ? "sel " : "") + (u.flagged ? "flag " : "") + (u.sil !== null && u.sil < 0.9 ? "bad" : "");
      tr.dataset.unit = u.unit;
      tr.innerHTML = `<td>${u.unit}${u.flagged ? "⚑" : ""}${u.edited ? "*" : ""}</td><td>${u.n}</td><td>${fmt(u.rate_hz, 1)}</td>` +
        `<td class="sil">${fmt(u.sil, 2)}</td><td>${fmt(u.pnr_db, 1)}</td><td>${fmt(u.cov_isi, 2)}</td>` +
        `<td>${u.duplicates.map((d) => d.unit).join(",")}</td>`;
      tr.onclick = () => select(u.unit);
      tb.appendChild(tr);
    });
    const sel = tb.querySelector("tr.sel"); if (sel) sel.scrollIntoView({ block: "nearest" });
    $("b-undo").disabled = !S.state.can_undo; $("b-redo").disabled = !S.state.can_redo;
    $("b-save").textContent = S.state.dirty ? "Save*" : "Save";
  }

  function fillSide() {
    const v = S.view, q = v.quality;
    $("title").textContent = `unit ${v.unit} of ${S.state.n_units} (${v.origin})` + (v.flagged ? " ⚑ flagged" : "") + (v.edited ? " · edited" : "");
    $("quality").innerHTML = `<tr><td>discharges</td><td>${q.n}</td></tr><tr><td>mean rate</td><td>${fmt(q.rate_hz, 2)} Hz</td></tr>` +
      `<tr><td>SIL</td><td>${fmt(q.sil, 3)}</td></tr><tr><td>PNR</td><td>${fmt(q.pnr_db, 1)} dB</td></tr>` +
      `<tr><td>CoV of ISI</td><td>${fmt(q.cov_isi, 3)}</td></tr><tr><td>rate outliers</td><td>${v.outliers.length}</td></tr>`;
    $("dups").innerHTML = v.duplicates.length ? v.duplicates.map((d) =>
      `<a href="#" data-u="${d.unit}">unit ${d.unit}</a>: ${fmt(100 * d.shared, 0)} % shared`).join("<br>") : "none";
    $("dups").querySelectorAll("a").forEach((a) => a.onclick = (e) => { e.preventDefault(); select(+a.dataset.u); });
    $("params").innerHTML = v.params.length ? "<tr><th>property</th><th>value</th><th>95 % interval</th></tr>" + v.params.map((p) =>
      `<tr><td>${p.name}</td><td>${fmt(p.value, 3)}</td><td>${p.ci95 ? fmt(p.ci95[0], 3) + " … " + fmt(p.ci95[1], 3) : "–"}</td></tr>`).join("")
      : "<tr><td class='small'>none in this decomposition</td></tr>";
    $("params-note").textContent = v.params_stale ? "(fitted before the edits)" : "";
  }

  function redraw() { drawSource(); drawRate(); drawOverview(); }

  // ------------------------------------------------------------------ loading
  async function loadUnitView() {
    const px = fit($("source")).canvas.width;
    const t1 = S.t1 === null ? "" : Math.round(S.t1);
    S.view = await api(`/api/unit/${S.unit}?t0=${Math.round(S.t0)}&t1=${t1}&px=${px}`);
    if (S.t1 === null) S.t1 = S.view.t1;
  }
  async function loadAll(withMuap) {
    S.busy++;
    try {
      const jobs = [api("/api/state").then((d) => { S.state = d; }),
                    api(`/api/overview?px=${fit($("overview")).canvas.width}`).then((d) => { S.overview = d; })];
      await Promise.all(jobs);
      if (S.unit >= S.state.n_units) S.unit = Math.max(0, S.state.n_units - 1);
      if (S.state.n_units === 0) { status("no units left"); return; }
      const muap = withMuap ? api(`/api/muap/${S.unit}`) : null;  // asked for at once, drawn when it comes
      await loadUnitView();
      fillTable(); fillSide(); redraw();
      if (muap) { S.muap = await muap; drawMuap(); }
    } finally { S.busy--; window.bmiss.seq++; }
  }
  let zoomTimer = null;
  function zoomTo(t0, t1) {
    const N = S.view.n_samples, minSpan = 20;
    if (t1 - t0 < minSpan) { const m = (t0 + t1) / 2; t0 = m - minSpan / 2; t1 = m + minSpan / 2; }
    if (t1 - t0 > N) { t0 = 0; t1 = N; }
    if (t0 < 0) { t1 -= t0; t0 = 0; }
    if (t1 > N) { t0 -= t1 - N; t1 = N; }
    S.t0 = Math.max(0, t0); S.t1 = t1;
    redraw();  // at once with the data we have, then ask for the detail
    clearTimeout(zoomTimer);
    zoomTimer = setTimeout(async () => {
      S.busy++;
      try { await loadUnitView(); redraw(); } catch (e) { status(e.message, true); } finally { S.busy--; window.bmiss.seq++; }
    }, 60);
  }
  async function select(u) {
    if (!S.state || u < 0 || u >= S.state.n_units) return;
    S.unit = u;
    try { await loadAll(true); } catch (e) { status(e.message, true); }
  }

  // ------------------------------------------------------------------ edits
  async function edit(body, label) {
    const t = performance.now();
    S.busy++;
    status(label + " …");
    try {
      const r = await api(body === "undo" || body === "redo" || body === "save" ? `/api/${body}` : "/api/edit",
        typeof body === "string" ? {} : Object.assign({ unit: S.unit }, body));
      S.state = r.state;
      const last = S.state.last;
      if (r.saved) status("saved " + r.saved);
      else if (typeof body !== "string" && r.result === 0) status(label + ": nothing selected");
      else status(last ? last.what : label);
      await loadAll(true);
      const ms = performance.now() - t;
      window.bmiss.lastEditMs = ms;
      window.bmiss.edits.push({ op: typeof body === "string" ? body : body.op, ms: ms, server_s: r.server_s || null });
    } catch (e) {
      status(label + ": " + e.message, true);
    } finally { S.busy--; window.bmiss.seq++; }
  }
  function topDuplicate() { const d = S.view && S.view.duplicates; return d && d.length ? d[0].unit : null; }
  const actions = {
    outliers: () => edit({ op: "remove_outliers" }, "remove outliers"),
    update: () => edit({ op: "update" }, "update filter"),
    split: () => edit({ op: "split" }, "split"),
    merge: () => {
      const v = $("merge-with").value;
      const other = v !== "" ? +v : topDuplicate();
      if (other === null) { status("merge: type the unit to merge into this one (no duplicate found)", true); return; }
      edit({ op: "merge", other: other }, `merge unit ${other}`);
    },
    flag: () => edit({ op: "flag" }, "flag"),
    delunit: () => edit({ op: "delete_unit" }, "delete unit"),
    undo: () => edit("undo", "undo"),
    redo: () => edit("redo", "redo"),
    save: () => edit("save", "save"),
  };
  function setMode(m) {
    S.mode = m;
    for (const k of ["zoom", "delete", "add"]) $("m-" + k).className = k === m ? "on" : "";
  }

  // ------------------------------------------------------------------ mouse
  function canvasXY(c, e) {
    const r = c.getBoundingClientRect();
    return [(e.clientX - r.left - c.clientLeft) * c.width / c.clientWidth, (e.clientY - r.top - c.clientTop) * c.height / c.clientHeight];
  }
  // page coordinates of sample t, value v on the source or rate plot (tests, benchmarks)
  window.bmiss.toClient = (id, t, v) => {
    const c = $(id), r = c.getBoundingClientRect(), [y0, y1] = id === "source" ? S.sy : S.ry;
    return [r.left + c.clientLeft + xOf(c, t) * c.clientWidth / c.width, r.top + c.clientTop + yPix(c, v, y0, y1) * c.clientHeight / c.height];
  };
  function attach(c, yRange) {
    c.addEventListener("mousedown", (e) => {
      const [x, y] = canvasXY(c, e);
      S.drag = { canvas: c, x0: x, y0: y, x1: x, y1: y, moved: false };
    });
    c.addEventListener("mousemove", (e) => {
      if (!S.drag || S.drag.canvas !== c) return;
      const [x, y] = canvasXY(c, e);
      S.drag.x1 = x; S.drag.y1 = y;
      if (Math.abs(x - S.drag.x0) > 4 || Math.abs(y - S.drag.y0) > 4) S.drag.moved = true;
      if (c.id === "source") drawSource();
    });
    window.addEventListener("mouseup", (e) => {
      const d = S.drag;
      if (!d || d.canvas !== c) return;
      S.drag = null;
      const ta = tOf(c, Math.min(d.x0, d.x1)), tb = tOf(c, Math.max(d.x0, d.x1));
      const [y0, y1] = yRange();
      const va = yVal(c, Math.max(d.y0, d.y1), y0, y1), vb = yVal(c, Math.min(d.y0, d.y1), y0, y1);
      if (!d.moved) {
        const t = Math.round(tOf(c, d.x0));
        if (S.mode === "delete") edit({ op: "delete_discharges", samples: [t] }, "delete discharge");
        else if (S.mode === "add" && c.id === "source") edit({ op: "add_discharges", samples: [t] }, "add discharge");
        return;
      }
      if (S.mode === "zoom" || c.id !== "source") { zoomTo(ta, tb); return; }
      const box = { t0: Math.round(ta), t1: Math.round(tb), lo: va, hi: vb };
      if (S.mode === "delete") edit(Object.assign({ op: "delete_discharges" }, box), "delete discharges (box)");
      else if (S.mode === "add") edit(Object.assign({ op: "add_discharges" }, box), "add discharges (box)");
    });
    c.addEventListener("wheel", (e) => {
      e.preventDefault();
      const [x] = canvasXY(c, e), t = tOf(c, x), f = e.deltaY > 0 ? 1.25 : 0.8;
      zoomTo(t - (t - S.t0) * f, t + (S.t1 - t) * f);
    }, { passive: false });
  }
  attach($("source"), () => S.sy);
  attach($("rate"), () => S.ry);
  $("overview").addEventListener("click", (e) => {
    const c = $("overview"), [, y] = canvasXY(c, e);
    select(Math.floor(y / (c.height / Math.max(1, S.overview.rows.length))));
  });

  // ------------------------------------------------------------------ buttons and keys
  $("m-zoom").onclick = () => setMode("zoom");
  $("m-delete").onclick = () => setMode("delete");
  $("m-add").onclick = () => setMode("add");
  for (const k of Object.keys(actions)) { const b = $("b-" + k); if (b) b.onclick = actions[k]; }
  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT") { if (e.key === "Enter") actions.merge(); return; }
    const k = e.key, ctrl = e.ctrlKey || e.metaKey;
    if (ctrl && (k === "z" || k === "Z")) { e.preventDefault(); (e.shiftKey ? actions.redo : actions.undo)(); return; }
    if (ctrl && (k === "y" || k === "Y")) { e.preventDefault(); actions.redo(); return; }
    if (ctrl && (k === "s" || k === "S")) { e.preventDefault(); actions.save(); return; }
    if (ctrl || e.altKey) return;
    const span = S.t1 - S.t0;
    const map = {
      j: () => select(S.unit + 1), ArrowDown: () => select(S.unit + 1),
      k: () => select(S.unit - 1), ArrowUp: () => select(S.unit - 1),
      ArrowLeft: () => zoomTo(S.t0 - 0.25 * span, S.t1 - 0.25 * span),
      ArrowRight: () => zoomTo(S.t0 + 0.25 * span, S.t1 + 0.25 * span),
      "+": () => zoomTo(S.t0 + 0.25 * span, S.t1 - 0.25 * span), "=": () => zoomTo(S.t0 + 0.25 * span, S.t1 - 0.25 * span),
      "-": () => zoomTo(S.t0 - 0.5 * span, S.t1 + 0.5 * span),
      "0": () => zoomTo(0, S.view.n_samples), Home: () => zoomTo(0, S.view.n_samples),
      z: () => setMode("zoom"), d: () => setMode("delete"), a: () => setMode("add"),
      o: actions.outliers, u: actions.update, s: actions.split, m: actions.merge, f: actions.flag,
      x: actions.delunit, Delete: actions.delunit,
    };
    if (map[k]) { e.preventDefault(); map[k](); }
  });
  window.addEventListener("resize", () => { if (S.view) { redraw(); drawMuap(); } });
  window.addEventListener("beforeunload", (e) => { if (S.state && S.state.dirty) { e.preventDefault(); e.returnValue = ""; } });

  setMode("zoom");
  loadAll(true).then(() => {
    window.bmiss.firstPlotMs = performance.now();
    status(`${S.state.n_units} units · ${S.state.method} · ${S.state.n_channels || "?"} channels · ${fmt(S.state.n_samples / S.state.fs, 1)} s`);
  }).catch((e) => status(e.message, true));
  window.bmiss.select = select;
  window.bmiss.zoomTo = zoomTo;
  window.bmiss.S = S;
})();
