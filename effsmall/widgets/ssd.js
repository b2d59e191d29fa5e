// SSD chunk explorer (chapter 11): the (L × L) semiseparable matrix of a selective SSM cut into
// Q × Q chunks. Diagonal blocks are small masked attention (quadratic in Q); off-diagonal blocks
// have rank ≤ N and are computed through the chunk states (Mamba-2, §6). Costs follow
// effsmall.ssm.ssd_chunkwise.ssd_chunked_cost; `spec` comes from effsmall/widgets/ssd.py.

// FLOPs (multiply-add = 2) and HBM bytes of the four chunked steps, as ssd_chunked_cost.
function ssdChunkedCost(b, l, h, p, n, Q, g, bpe) {
  const nc = Math.ceil(l / Q);
  const flopsIntra = b * h * nc * (2 * Q * Q * n + 2 * Q * Q * p) / 2;  // causal half of each Q×Q block
  const flopsStates = b * h * nc * 2 * Q * p * n;  // chunk states Bᵀ(decay·x)
  const flopsOut = b * h * nc * 2 * Q * p * n;  // state to output C h
  const flopsPass = b * h * nc * 2 * p * n;  // state passing between chunks
  const io = bpe * (2 * b * l * h * p + 2 * b * l * g * n) + 4 * b * l * h;  // X, Y, B, C and fp32 dt·A
  const stateBytes = 4 * b * nc * h * p * n;  // fp32 (b, c, h, p, n) chunk states
  return {flops: flopsIntra + flopsStates + flopsOut + flopsPass, flops_intra: flopsIntra,
          flops_states: flopsStates + flopsOut + flopsPass, bytes_min: io, bytes_states: 2 * stateBytes,
          bytes_unfused: io + 2 * stateBytes};
}

function render(el, spec) {
  mount(el, () => build(spec));
}

function build(spec) {
  const d = spec.defaults, root = h("div", {class: "es-body"});
  const p2 = (v) => 2 ** v;
  const ctl = {
    L: slider({name: "L", label: "L", min: 6, max: 14, value: Math.log2(d.L), show: (v) => String(p2(v))}, () => update()),
    Q: slider({name: "Q", label: "chunk Q", min: 2, max: 10, value: Math.log2(d.Q), show: (v) => String(p2(v))}, () => update()),
    N: slider({name: "N", label: "state N", min: 16, max: 256, step: 16, value: d.N}, () => update()),
    P: slider({name: "P", label: "head dim P", min: 16, max: 128, step: 16, value: d.P}, () => update()),
    H: slider({name: "H", label: "heads H", min: 1, max: 64, value: d.H}, () => update()),
  };
  const matrix = svg("svg", {"data-role": "matrix", class: "es-svg", viewBox: "0 0 300 300", style: "width:270px"});
  const chart = svg("svg", {"data-role": "chart", class: "es-svg", viewBox: "0 0 360 220", style: "width:360px"});
  const info = h("div", {class: "es-info"},
    h("div", {}, output("chunks"), " chunks; off-diagonal blocks have rank ≤ ", output("rank")),
    h("table", {class: "es-table"},
      h("tr", {}, h("td", {}, "FLOPs, total"), h("td", {}, output("flops"))),
      h("tr", {}, h("td", {}, "  diagonal blocks (quadratic)"), h("td", {}, output("flops_intra"))),
      h("tr", {}, h("td", {}, "  states (chunk state, passing, output)"), h("td", {}, output("flops_states"))),
      h("tr", {}, h("td", {}, "bytes, fused (X, B, C, dt·A read, Y written)"), h("td", {}, output("bytes_min"))),
      h("tr", {}, h("td", {}, "bytes of states between kernels (unfused)"), h("td", {}, output("bytes_states"))),
      h("tr", {}, h("td", {}, "bytes, unfused total"), h("td", {}, output("bytes_unfused")))));
  const check = h("div", {class: "es-error", "data-out": "drift"});
  root.append(h("div", {class: "es-row"}, ...Object.values(ctl).map((c) => c.el)),
              h("div", {class: "es-row es-top"}, matrix, chart), info,
              h("div", {class: "es-legend"}, "orange: diagonal Q×Q blocks, masked attention inside a chunk; ",
                "blue: off-diagonal blocks, low rank, reached through the chunk states. ",
                "Right: FLOPs (blue) and unfused state bytes (orange) against Q for this L, N, P, H; black: this Q."),
              check);

  const cost = (inp, Q) => ssdChunkedCost(spec.batch, inp.L, inp.H, inp.P, inp.N, Q, spec.groups, spec.bytes_per_element);

  function update() {
    const inp = {L: p2(ctl.L.get()), Q: p2(ctl.Q.get()), N: ctl.N.get(), P: ctl.P.get(), H: ctl.H.get()};
    const c = cost(inp, inp.Q), nc = Math.ceil(inp.L / inp.Q);
    setOut(root, "chunks", nc, fmtInt(nc));
    setOut(root, "rank", Math.min(inp.Q, inp.N));
    for (const k of ["flops", "flops_intra", "flops_states"]) setOut(root, k, c[k], fmtSI(c[k], "FLOP"));
    for (const k of ["bytes_min", "bytes_states", "bytes_unfused"]) setOut(root, k, c[k], fmtSI(c[k], "B"));
    drawMatrix(inp, nc);
    drawChart(inp);
  }

  function drawMatrix(inp, nc) {
    const S = 300, shown = Math.min(nc, 16), cell = S / shown, parts = [];
    for (let i = 0; i < shown; i++) {
      for (let j = 0; j < i; j++) {
        parts.push(svg("rect", {x: j * cell, y: i * cell, width: cell, height: cell, fill: "#9ecae1",
                                stroke: "#fff", "stroke-width": 0.5, class: "offdiag"}));
      }
      // lower triangle of the diagonal block (rows t >= columns s inside the chunk)
      const x = i * cell, y = i * cell;
      parts.push(svg("path", {d: `M${x},${y} L${x},${y + cell} L${x + cell},${y + cell} Z`, fill: "#fdae6b",
                              stroke: "#fff", "stroke-width": 0.5, class: "diag"}));
    }
    parts.push(svg("rect", {x: 0, y: 0, width: S, height: S, fill: "none", stroke: "#333"}));
    if (shown < nc) parts.push(svg("text", {x: S - 4, y: 14, "font-size": 11, "text-anchor": "end"},
                                   `first ${shown} of ${nc} chunks`));
    parts.push(svg("text", {x: S - 4, y: S - 6, "font-size": 11, "text-anchor": "end"}, `L = ${inp.L}, Q = ${inp.Q}`));
    matrix.replaceChildren(...parts);
  }

  function drawChart(inp) {
    const W = 360, H = 220, L = 66, R = 60, T = 10, B = 32;
    const Qs = [4, 8, 16, 32, 64, 128, 256, 512, 1024], cs = Qs.map((q) => cost(inp, q));
    const X = logScale(Qs[0], Qs[Qs.length - 1], L, W - R);
    const fl = cs.map((c) => c.flops), sb = cs.map((c) => c.bytes_states);
    const Yf = logScale(Math.min(...fl) / 1.5, Math.max(...fl) * 1.5, H - B, T);
    const Yb = logScale(Math.min(...sb) / 1.5, Math.max(...sb) * 1.5, H - B, T);
    const line = (ys, Y, color, dash, name) => svg("polyline", {fill: "none", stroke: color, "stroke-width": 1.5,
      "stroke-dasharray": dash, "data-series": name, points: Qs.map((q, k) => `${X(q)},${Y(ys[k])}`).join(" ")});
    const text = (x, y, t, a, color) => svg("text", {x, y, "font-size": 10, "text-anchor": a, fill: color || "#000"}, t);
    chart.replaceChildren(
      svg("rect", {x: L, y: T, width: W - L - R, height: H - T - B, fill: "none", stroke: "#333"}),
      line(fl, Yf, "#1f77b4", "", "flops"), line(sb, Yb, "#ff7f0e", "4,3", "state_bytes"),
      svg("line", {x1: X(inp.Q), x2: X(inp.Q), y1: T, y2: H - B, stroke: "#000", "data-role": "cursor"}),
      ...Qs.filter((q, k) => k % 2 === 0).map((q) => text(X(q), H - B + 12, String(q), "middle")),
      text((L + W - R) / 2, H - 4, "chunk size Q", "middle"),
      text(L - 3, T + 9, fmtSI(Math.max(...fl), "FLOP"), "end", "#1f77b4"),
      text(L - 3, H - B, fmtSI(Math.min(...fl), "FLOP"), "end", "#1f77b4"),
      text(W - R + 3, T + 9, fmtSI(Math.max(...sb), "B"), "start", "#ff7f0e"),
      text(W - R + 3, H - B, fmtSI(Math.min(...sb), "B"), "start", "#ff7f0e"));
  }

  const bad = spec.checks.filter((c) => {
    const got = cost(c.inputs, c.inputs.Q);
    return Object.keys(c.cost).some((k) => got[k] !== c.cost[k]);
  });
  check.textContent = bad.length ? `these counts disagree with ssd_chunked_cost for ${JSON.stringify(bad.map((c) => c.inputs))}` : "";
  check.dataset.value = String(bad.length);
  update();
  return root;
}
