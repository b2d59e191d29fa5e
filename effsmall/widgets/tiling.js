// Tiling explorer (chapter 05): the tile grid of tiled attention, the loop order walked tile by
// tile, and the HBM bytes each step moves. The loops below are the ones
// effsmall.attention.tiled.tiled_attention runs (fa1: Algorithm 1 of FlashAttention, outer loop
// over K/V blocks; fa2: outer loop over Q blocks), so the byte counts equal
// effsmall.attention.io_traffic term by term. `spec` comes from effsmall/widgets/tiling.py.

// Algorithm 1's block sizes for SRAM of M bytes: B_c = ceil(M / 4D) elements' worth, B_r = min(B_c, D).
function defaultBlocks(N, D, M, dtypeBytes) {
  const bn = Math.ceil(M / (4 * D * dtypeBytes));
  const bm = Math.min(bn, D);
  return [Math.max(1, Math.min(bm, N)), Math.max(1, Math.min(bn, N))];
}

// For each Q block i the K/V blocks jlo[i]..jhi[i] it must visit (jhi < jlo: none).
// window = [left, right] in tokens, null or negative = unbounded; causal forces right <= 0.
function kvBlockRange(N, bm, bn, causal, window) {
  const bound = (w) => (w === null || w === undefined || w < 0 ? null : w);
  const left = window ? bound(window[0]) : null;
  let right = window ? bound(window[1]) : null;
  if (causal) right = right === null ? 0 : Math.min(right, 0);
  const Tr = Math.ceil(N / bm), jlo = [], jhi = [];
  for (let i = 0; i < Tr; i++) {
    const first = i * bm, last = Math.min((i + 1) * bm, N) - 1;  // rows of Q block i
    const lo = left === null ? 0 : Math.max(first - left, 0);
    const hi = right === null ? N - 1 : Math.min(last + right, N - 1);
    jlo.push(Math.floor(lo / bn));
    jhi.push(hi < lo ? Math.floor(lo / bn) - 1 : Math.floor(hi / bn));
  }
  return [jlo, jhi];
}

// The HBM events of one head, in program order: [op, name, rows] with op "read" | "write" |
// "compute" (then name is [i, j]).
function hbmEvents(p) {
  const {N, bm, bn, order, jlo, jhi} = p;
  const Tr = Math.ceil(N / bm), Tc = Math.ceil(N / bn), ev = [];
  const rows = (b, n, B) => Math.min((b + 1) * B, n) - b * B;
  if (order === "fa2") {
    for (let i = 0; i < Tr; i++) {
      if (jhi[i] >= jlo[i]) ev.push(["read", "Q", rows(i, N, bm)]);
      for (let j = jlo[i]; j <= jhi[i]; j++) {
        ev.push(["read", "K", rows(j, N, bn)], ["read", "V", rows(j, N, bn)], ["compute", [i, j], 0]);
      }
      ev.push(["write", "O", rows(i, N, bm)], ["write", "lse", rows(i, N, bm)]);
    }
  } else {
    ev.push(["write", "O", N], ["write", "l", N], ["write", "m", N]);  // line 2: O = 0, l = 0, m = -inf
    for (let j = 0; j < Tc; j++) {
      const rowsOf = [];
      for (let i = 0; i < Tr; i++) if (jlo[i] <= j && j <= jhi[i]) rowsOf.push(i);
      if (!rowsOf.length) continue;
      ev.push(["read", "K", rows(j, N, bn)], ["read", "V", rows(j, N, bn)]);
      for (const i of rowsOf) {
        for (const name of ["Q", "O", "l", "m"]) ev.push(["read", name, rows(i, N, bm)]);
        ev.push(["compute", [i, j], 0]);
        for (const name of ["O", "l", "m"]) ev.push(["write", name, rows(i, N, bm)]);
      }
    }
  }
  return ev;
}

// Bytes per term ("read Q", ...) and one step per computed tile with the running byte total,
// split the way effsmall.attention.viz.tile_trace splits the implementation's own log.
function traffic(p, spec) {
  const rowBytes = {Q: p.D * spec.dtype_bytes, K: p.D * spec.dtype_bytes, V: p.D * spec.dtype_bytes,
                    O: p.D * spec.dtype_bytes, l: spec.stat_bytes, m: spec.stat_bytes, lse: spec.stat_bytes};
  const terms = {}, steps = [];
  let pending = {reads: [], writes: []}, total = 0;
  for (const [op, name, rows] of hbmEvents(p)) {
    if (op === "compute") {
      steps.push({i: name[0], j: name[1], reads: pending.reads, writes: pending.writes, bytes: total});
      pending = {reads: [], writes: []};
      continue;
    }
    const b = rows * rowBytes[name];
    terms[`${op} ${name}`] = (terms[`${op} ${name}`] || 0) + b;
    total += b;
    if (op === "write" && steps.length) {
      steps[steps.length - 1].writes.push(name);
      steps[steps.length - 1].bytes = total;
    } else pending[op === "read" ? "reads" : "writes"].push(name);
  }
  if (steps.length) steps[steps.length - 1].bytes = total;
  const sum = (prefix) => Object.entries(terms).filter(([k]) => k.startsWith(prefix)).reduce((a, [, v]) => a + v, 0);
  return {terms, steps, reads: sum("read"), writes: sum("write"), total};
}

// Standard attention: S and P are written to and read back from HBM.
function standardTraffic(N, D, b) {
  const row = D * b;
  const terms = {"read Q": N * row, "read K": N * row, "write S": N * N * b, "read S": N * N * b,
                 "write P": N * N * b, "read P": N * N * b, "read V": N * row, "write O": N * row};
  const total = Object.values(terms).reduce((a, v) => a + v, 0);
  return {terms, total};
}

// Everything the explorer shows for one set of inputs (also what the self-check compares).
function tilingModel(inp, spec) {
  const M = inp.sram_kb * 1024;
  const [dm, dn] = defaultBlocks(inp.N, inp.D, M, spec.dtype_bytes);
  const bm = inp.block_m || dm, bn = inp.block_n || dn;
  const window = inp.window > 0 ? [inp.window, null] : null;
  const [jlo, jhi] = kvBlockRange(inp.N, bm, bn, inp.causal, window);
  const p = {N: inp.N, D: inp.D, bm, bn, jlo, jhi};
  const fa = {fa1: traffic({...p, order: "fa1"}, spec), fa2: traffic({...p, order: "fa2"}, spec)};
  return {...p, M, order: inp.order, causal: inp.causal, window, fa, cur: fa[inp.order],
          standard: standardTraffic(inp.N, inp.D, spec.dtype_bytes),
          Tr: Math.ceil(inp.N / bm), Tc: Math.ceil(inp.N / bn)};
}

function render(el, spec) {
  mount(el, () => build(spec));
}

function build(spec) {
  const d = spec.defaults, root = h("div", {class: "es-body"});
  const state = {step: 0, timer: null};
  const pow2 = (v) => 2 ** v;
  const ctl = {
    N: slider({name: "N", label: "N", min: 16, max: spec.max_N, step: 16, value: d.N}, () => update(true)),
    D: slider({name: "D", label: "D", min: 16, max: 256, step: 16, value: d.D}, () => update(true)),
    sram: slider({name: "sram_kb", label: "SRAM M", min: 1, max: 8, value: Math.log2(d.sram_kb),
                  show: (v) => `${pow2(v)} KB`}, () => update(true)),
    bm: slider({name: "block_m", label: "B_r", min: 0, max: 256, step: 8, value: d.block_m,
                show: (v) => (v ? String(v) : "Alg. 1")}, () => update(true)),
    bn: slider({name: "block_n", label: "B_c", min: 0, max: 256, step: 8, value: d.block_n,
                show: (v) => (v ? String(v) : "Alg. 1")}, () => update(true)),
    order: dropdown({name: "order", label: "loop order", value: d.order,
                     options: [["fa2", "fa2: Q blocks outside"], ["fa1", "fa1: K/V blocks outside"]]}, () => update(true)),
    causal: checkbox({name: "causal", label: "causal", value: d.causal}, () => update(true)),
    window: slider({name: "window", label: "window", min: 0, max: spec.max_N, step: 16, value: d.window,
                    show: (v) => (v ? `${v} keys back` : "none")}, () => update(true)),
  };
  const stepCtl = slider({name: "step", label: "step", min: 0, max: 0, value: 0, show: (v) => String(v + 1)},
                         () => { state.step = stepCtl.get(); draw(); });
  const btn = (name, text, title, fn) => h("button", {type: "button", "data-control": name, title, onclick: fn}, text);
  const go = (s) => { state.step = Math.max(0, Math.min(s, model.cur.steps.length - 1)); draw(); };
  const play = () => {
    if (state.timer) { clearInterval(state.timer); state.timer = null; draw(); return; }
    if (state.step >= model.cur.steps.length - 1) state.step = 0;
    state.timer = setInterval(() => {
      if (state.step >= model.cur.steps.length - 1) { clearInterval(state.timer); state.timer = null; }
      else state.step += 1;
      draw();
    }, spec.play_ms);
    draw();
  };
  const playBtn = btn("play", "▶ play", "walk the loop order", play);
  const buttons = h("div", {class: "es-row"},
    btn("first", "|◀", "first tile", () => go(0)), btn("back", "◀ step", "previous tile", () => go(state.step - 1)),
    playBtn, btn("next", "step ▶", "next tile", () => go(state.step + 1)),
    btn("last", "▶|", "last tile", () => go(model.cur.steps.length - 1)), stepCtl.el);

  const grid = svg("svg", {"data-role": "grid", class: "es-svg", viewBox: "0 0 100 100"});
  const chart = svg("svg", {"data-role": "chart", class: "es-svg", viewBox: "0 0 300 150", style: "width:420px"});
  const info = h("div", {class: "es-info"},
    h("div", {}, h("b", {}, "tile "), output("tile"), " — step ", output("step"), " of ", output("steps")),
    h("div", {}, "read from HBM: ", output("step_reads")), h("div", {}, "written to HBM: ", output("step_writes")),
    h("div", {}, "HBM bytes so far: ", output("bytes_so_far", "es-big")), h("div", {}, "of ", output("total"),
    " (reads ", output("reads"), ", writes ", output("writes"), ")"),
    h("div", {}, "B_r = ", output("block_m"), ", B_c = ", output("block_n"), "; tiles computed ", output("tiles"),
      ", skipped ", output("skipped")),
    h("table", {class: "es-table", "data-role": "terms"}),
    h("div", {}, "standard attention: ", output("standard_total"), "; fa1: ", output("fa1_total"),
      "; fa2: ", output("fa2_total")));
  const legend = h("div", {class: "es-legend"},
    "blue: S tile being computed (light: done, hatched grey: skipped by the mask); ",
    "green: block on chip, orange: block moved to or from HBM in this step");
  const check = h("div", {class: "es-error", "data-out": "drift"});
  root.append(h("div", {class: "es-row"}, ...Object.values(ctl).map((c) => c.el)), buttons,
              h("div", {class: "es-row es-top"}, grid, info), chart, legend, check);

  let model;
  const inputs = () => ({N: ctl.N.get(), D: ctl.D.get(), sram_kb: pow2(ctl.sram.get()), block_m: ctl.bm.get(),
                         block_n: ctl.bn.get(), order: ctl.order.get(), causal: ctl.causal.get(),
                         window: ctl.window.get()});

  function update(reset) {
    model = tilingModel(inputs(), spec);
    if (reset) state.step = Math.min(state.step, Math.max(0, model.cur.steps.length - 1));
    stepCtl.input.max = Math.max(0, model.cur.steps.length - 1);
    const c = model.cur;
    setOut(root, "block_m", model.bm); setOut(root, "block_n", model.bn);
    setOut(root, "total", c.total, `${fmtInt(c.total)} B`);
    setOut(root, "reads", c.reads, fmtInt(c.reads)); setOut(root, "writes", c.writes, fmtInt(c.writes));
    setOut(root, "tiles", c.steps.length); setOut(root, "skipped", model.Tr * model.Tc - c.steps.length);
    setOut(root, "steps", c.steps.length);
    for (const k of ["fa1", "fa2"]) setOut(root, `${k}_total`, model.fa[k].total, `${fmtSI(model.fa[k].total, "B")}`);
    setOut(root, "standard_total", model.standard.total, fmtSI(model.standard.total, "B"));
    const table = root.querySelector('[data-role="terms"]');
    table.replaceChildren(h("tr", {}, h("th", {}, `${model.order} term`), h("th", {}, "bytes")),
      ...Object.entries(c.terms).map(([k, v]) => h("tr", {}, h("td", {}, k),
        h("td", {"data-out": `term:${k}`, "data-value": String(v)}, fmtInt(v)))));
    draw();
  }

  function draw() {
    const {Tr, Tc, jlo, jhi, cur} = model;
    const steps = cur.steps, s = Math.min(state.step, Math.max(0, steps.length - 1));
    state.step = s;
    stepCtl.input.value = s; stepCtl.refresh();
    playBtn.textContent = state.timer ? "❚❚ pause" : "▶ play";
    const st = steps[s] || {i: -1, j: -1, reads: [], writes: [], bytes: 0};
    setOut(root, "step", steps.length ? s + 1 : 0);
    setOut(root, "tile", steps.length ? `(${st.i}, ${st.j})` : "none");
    setOut(root, "step_reads", st.reads.join(", ") || "nothing");
    setOut(root, "step_writes", st.writes.join(", ") || "nothing");
    setOut(root, "bytes_so_far", st.bytes, `${fmtInt(st.bytes)} B`);
    // grid: Tc columns of K/V blocks, Tr rows of Q blocks; Q left, O right, K and V on top
    const cell = Math.min(12, 320 / Math.max(Tr, Tc)), x0 = 2.4 * cell, y0 = 2.4 * cell;
    const W = x0 + (Tc + 2.4) * cell, H = y0 + (Tr + 0.4) * cell;
    grid.setAttribute("viewBox", `0 0 ${W} ${H}`);
    grid.style.width = `${Math.min(420, Math.max(220, W * 1.2))}px`;
    const done = new Set(steps.slice(0, s).map((t) => `${t.i},${t.j}`));
    const moved = new Set([...st.reads, ...st.writes]);
    const parts = [svg("defs", {}, svg("pattern", {id: "es-hatch", width: 4, height: 4, patternUnits: "userSpaceOnUse"},
      svg("path", {d: "M0,4 L4,0", stroke: "#999", "stroke-width": 0.6})))];
    for (let i = 0; i < Tr; i++) {
      for (let j = 0; j < Tc; j++) {
        const skip = !(jlo[i] <= j && j <= jhi[i]);
        const isCur = i === st.i && j === st.j;
        const cls = skip ? "skip" : isCur ? "current" : done.has(`${i},${j}`) ? "done" : "todo";
        const fill = {skip: "url(#es-hatch)", current: "#08519c", done: "#9ecae1", todo: "#ffffff"}[cls];
        parts.push(svg("rect", {x: x0 + j * cell, y: y0 + i * cell, width: cell, height: cell, fill,
                                stroke: "#888", "stroke-width": 0.3, class: `tile ${cls}`}));
      }
    }
    const strip = (x, y, w, hh, name, active) => svg("rect", {x, y, width: w, height: hh, stroke: "#555",
      "stroke-width": 0.3, fill: active ? (moved.has(name) ? "#e6550d" : "#31a354") : "#fff", class: `blk ${name}`});
    for (let i = 0; i < Tr; i++) {
      parts.push(strip(x0 - 1.9 * cell, y0 + i * cell, 0.8 * cell, cell, "Q", i === st.i));
      parts.push(strip(x0 + (Tc + 1.1) * cell, y0 + i * cell, 0.8 * cell, cell, "O", i === st.i));
    }
    for (let j = 0; j < Tc; j++) {
      parts.push(strip(x0 + j * cell, y0 - 2.3 * cell, cell, 0.8 * cell, "V", j === st.j));
      parts.push(strip(x0 + j * cell, y0 - 1.3 * cell, cell, 0.8 * cell, "K", j === st.j));
    }
    const label = (x, y, t) => svg("text", {x, y, "font-size": cell * 0.8, "text-anchor": "middle"}, t);
    parts.push(label(x0 - 1.5 * cell, y0 - 0.3 * cell, "Q"), label(x0 + (Tc + 1.5) * cell, y0 - 0.3 * cell, "O"),
               label(x0 - 0.6 * cell, y0 - 0.65 * cell, "K"), label(x0 - 0.6 * cell, y0 - 1.65 * cell, "V"));
    grid.replaceChildren(...parts);
    drawChart(s);
  }

  // running HBM bytes of both loop orders, step by step; the cursor marks the current step
  function drawChart(s) {
    const W = 300, H = 150, L = 46, B = 22, T = 8, R = 8;
    const a = model.fa.fa1.steps, b = model.fa.fa2.steps;
    const n = Math.max(a.length, b.length, 1), top = Math.max(model.fa.fa1.total, model.fa.fa2.total, 1);
    const X = (k) => L + (k / Math.max(n - 1, 1)) * (W - L - R), Y = (v) => H - B - (v / top) * (H - B - T);
    const line = (steps, color, name) => svg("polyline", {fill: "none", stroke: color, "stroke-width": 1.5,
      "data-series": name, points: steps.map((t, k) => `${X(k).toFixed(1)},${Y(t.bytes).toFixed(1)}`).join(" ")});
    const text = (x, y, t, anchor) => svg("text", {x, y, "font-size": 9, "text-anchor": anchor || "start"}, t);
    chart.replaceChildren(
      svg("line", {x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#333"}),
      svg("line", {x1: L, y1: T, x2: L, y2: H - B, stroke: "#333"}),
      line(a, "#1f77b4", "fa1"), line(b, "#ff7f0e", "fa2"),
      svg("line", {x1: X(s), y1: T, x2: X(s), y2: H - B, stroke: "#000", "stroke-width": 0.7, "data-role": "cursor"}),
      text(L - 3, T + 8, fmtSI(top, "B"), "end"), text(L - 3, H - B, "0", "end"),
      text((L + W) / 2, H - 6, "tile step", "middle"),
      text(L + 6, T + 10, "fa1", "start"), svg("rect", {x: L + 22, y: T + 4, width: 10, height: 3, fill: "#1f77b4"}),
      text(L + 40, T + 10, "fa2", "start"), svg("rect", {x: L + 56, y: T + 4, width: 10, height: 3, fill: "#ff7f0e"}),
      text(L + 76, T + 10, "HBM bytes so far", "start"));
  }

  // The Python side sends io_traffic's own results for a few inputs: any difference is a bug here.
  const bad = [];
  for (const c of spec.checks) {
    const m = tilingModel(c.inputs, spec);
    const got = c.inputs.algorithm === "standard" ? m.standard : m.fa[c.inputs.algorithm];
    if (JSON.stringify(Object.entries(got.terms).sort()) !== JSON.stringify(Object.entries(c.terms).sort())) bad.push(c.inputs);
  }
  check.textContent = bad.length ? `these counts disagree with io_traffic for ${JSON.stringify(bad)}` : "";
  check.dataset.value = String(bad.length);
  update(true);
  return root;
}
