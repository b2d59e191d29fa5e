// Roofline explorer (chapter 02): attainable FLOP/s = min(peak, intensity × bandwidth)
// (Williams, Waterman & Patterson 2009), as effsmall.hardware.roofline. Devices, operations and
// measured kernels all come from the Python side in `spec` (effsmall/widgets/roofline.py).

function roofline(intensity, peak, bandwidth) {
  return Math.min(peak, intensity * bandwidth);
}

function render(el, spec) {
  mount(el, () => build(spec));
}

function build(spec) {
  const d = spec.defaults, root = h("div", {class: "es-body"});
  const devOf = (name) => spec.devices.find((x) => x.name === name);
  const CUSTOM = "custom";
  const kernelOptions = [
    ...["elementwise add", "softmax", "matmul", "naive attention", "fused attention"].map((n) => [`op:${n}`, n]),
    ...spec.measured.map((m, k) => [`measured:${k}`, `${m.name} (measured)`]),
    [CUSTOM, "type FLOPs and bytes"]];
  const ctl = {
    device: dropdown({name: "device", label: "device", value: d.device,
                      options: spec.devices.map((x) => [x.name, x.name])}, () => { setDtypes(); update(); }),
    dtype: dropdown({name: "dtype", label: "dtype", options: [], value: d.dtype}, () => update()),
    kernel: dropdown({name: "kernel", label: "kernel", options: kernelOptions, value: `op:${d.op}`}, () => update()),
    size: slider({name: "size", label: "size", min: 0, max: spec.sizes.length - 1,
                  value: spec.sizes.indexOf(d.size), show: (v) => String(spec.sizes[v])}, () => update()),
  };
  const flopsIn = h("input", {type: "number", min: 1, value: 1e9, "data-control": "flops", "aria-label": "FLOPs"});
  const bytesIn = h("input", {type: "number", min: 1, value: 1e8, "data-control": "bytes", "aria-label": "bytes"});
  flopsIn.addEventListener("input", () => update());
  bytesIn.addEventListener("input", () => update());
  const custom = h("div", {class: "es-row", "data-role": "custom"},
    h("label", {class: "es-ctl"}, h("span", {class: "es-lab"}, "FLOPs"), flopsIn),
    h("label", {class: "es-ctl"}, h("span", {class: "es-lab"}, "bytes"), bytesIn));
  const plot = svg("svg", {"data-role": "plot", class: "es-svg", viewBox: "0 0 520 330", style: "width:520px"});
  const info = h("div", {class: "es-info"},
    h("div", {}, h("b", {}, output("kernel_name"))),
    h("div", {}, "FLOPs ", output("flops"), ", bytes ", output("bytes")),
    h("div", {}, "intensity ", output("intensity"), " FLOP/byte; ridge point ", output("ridge"), " FLOP/byte"),
    h("div", {}, "attainable ", output("attainable", "es-big"), " of peak ", output("peak"),
      " (", output("memory"), " ", output("bandwidth"), ")"),
    h("div", {}, "→ ", output("bound", "es-big"), ", at least ", output("time")),
    h("div", {}, output("measured")));
  const check = h("div", {class: "es-error", "data-out": "drift"});
  root.append(h("div", {class: "es-row"}, ...Object.values(ctl).map((c) => c.el)), custom, plot, info,
              h("div", {class: "es-legend"}, "black: the roof of the chosen device and dtype; dot: the kernel ",
                "(blue: memory-bound, red: compute-bound); grey: the chapter's other operations at this size; ",
                "diamond: the kernel's measured speed"), check);

  function setDtypes() {
    const dev = devOf(ctl.device.get()), keep = ctl.dtype.get() || d.dtype;
    const names = Object.keys(dev.peak_flops);
    ctl.dtype.setOptions(names.map((n) => [n, n]), names.includes(keep) ? keep : names.includes("fp16") ? "fp16" : names[0]);
  }

  function kernel(dtypeBytes, size) {
    const k = ctl.kernel.get();
    if (k === CUSTOM) {
      return {name: "your kernel", flops: Math.max(Number(flopsIn.value) || 1, 1e-9),
              bytes: Math.max(Number(bytesIn.value) || 1, 1e-9)};
    }
    if (k.startsWith("measured:")) return spec.measured[Number(k.split(":")[1])];
    const name = k.slice(3);
    const op = spec.ops.find((o) => o.name === name && o.size === size && o.dtype_bytes === dtypeBytes);
    return {name: `${name}, size ${size}`, flops: op.flops, bytes: op.bytes};
  }

  function update() {
    const dev = devOf(ctl.device.get()), dtype = ctl.dtype.get();
    const peak = dev.peak_flops[dtype], bw = dev.bandwidth_Bps, b = spec.dtype_bytes[dtype];
    const size = spec.sizes[ctl.size.get()];
    const kind = ctl.kernel.get();
    custom.style.display = kind === CUSTOM ? "" : "none";
    ctl.size.el.style.opacity = kind.startsWith("op:") ? "1" : "0.4";
    const k = kernel(b, size);
    const I = k.flops / k.bytes, att = roofline(I, peak, bw), ridge = peak / bw;
    const bound = I < ridge ? "memory-bound" : "compute-bound";
    const time = Math.max(k.flops / peak, k.bytes / bw);
    setOut(root, "kernel_name", k.name);
    setOut(root, "flops", k.flops, fmtSI(k.flops, "FLOP"));
    setOut(root, "bytes", k.bytes, fmtSI(k.bytes, "B"));
    setOut(root, "intensity", I, Number(I.toPrecision(3)).toString());
    setOut(root, "ridge", ridge, Number(ridge.toPrecision(3)).toString());
    setOut(root, "attainable", att, fmtSI(att, "FLOP/s"));
    setOut(root, "peak", peak, fmtSI(peak, "FLOP/s"));
    setOut(root, "memory", dev.memory);
    setOut(root, "bandwidth", bw, fmtSI(bw, "B/s"));
    setOut(root, "bound", bound);
    setOut(root, "time", time, time < 1e-3 ? `${Number((time * 1e6).toPrecision(3))} µs` : `${Number((time * 1e3).toPrecision(3))} ms`);
    const meas = k.measured_flops_per_s;
    setOut(root, "measured", meas || "", meas ? `measured on ${k.device} (${k.dtype}): ${fmtSI(meas, "FLOP/s")}, `
      + `${Math.round(100 * meas / roofline(I, devOf(k.device).peak_flops[k.dtype], devOf(k.device).bandwidth_Bps))}% of its roof` : "");
    draw(dev, dtype, peak, bw, I, att, bound, size, b, meas && k.device === dev.name ? meas : null);
  }

  function draw(dev, dtype, peak, bw, I, att, bound, size, b, meas) {
    const W = 520, H = 330, L = 62, R = 12, T = 12, B = 40;
    const xlo = 1e-2, xhi = 1e4, yhi = peak * 3, ylo = Math.min(xlo * bw, peak) / 3;
    const X = logScale(xlo, xhi, L, W - R), Y = logScale(ylo, yhi, H - B, T);
    const parts = [svg("rect", {x: L, y: T, width: W - L - R, height: H - T - B, fill: "none", stroke: "#333"})];
    for (let e = -2; e <= 4; e++) {  // decades on x
      parts.push(svg("line", {x1: X(10 ** e), x2: X(10 ** e), y1: T, y2: H - B, stroke: "#eee"}),
                 svg("text", {x: X(10 ** e), y: H - B + 13, "font-size": 10, "text-anchor": "middle"}, `1e${e}`));
    }
    for (let e = Math.ceil(Math.log10(ylo)); e <= Math.floor(Math.log10(yhi)); e++) {
      parts.push(svg("line", {x1: L, x2: W - R, y1: Y(10 ** e), y2: Y(10 ** e), stroke: "#eee"}),
                 svg("text", {x: L - 4, y: Y(10 ** e) + 3, "font-size": 10, "text-anchor": "end"}, fmtSI(10 ** e, "")));
    }
    const ridge = peak / bw;
    const roofPts = [[xlo, roofline(xlo, peak, bw)], [Math.min(Math.max(ridge, xlo), xhi), roofline(Math.min(Math.max(ridge, xlo), xhi), peak, bw)], [xhi, peak]];
    parts.push(svg("polyline", {points: roofPts.map(([x, y]) => `${X(x)},${Y(y)}`).join(" "), fill: "none",
                                stroke: "#000", "stroke-width": 2, "data-role": "roof"}));
    parts.push(svg("line", {x1: X(ridge), x2: X(ridge), y1: T, y2: H - B, stroke: "#888", "stroke-dasharray": "3,3"}));
    for (const o of spec.ops.filter((o) => o.size === size && o.dtype_bytes === b)) {
      const i = o.flops / o.bytes;
      if (i >= xlo && i <= xhi) parts.push(svg("circle", {cx: X(i), cy: Y(roofline(i, peak, bw)), r: 3, fill: "#aaa"},
                                                svg("title", {}, o.name)));
    }
    const xi = Math.min(Math.max(I, xlo), xhi);
    if (meas) parts.push(svg("path", {d: `M${X(xi)},${Y(meas) - 6} l6,6 l-6,6 l-6,-6 z`, fill: "#2ca02c", "data-role": "measured"}));
    parts.push(svg("circle", {cx: X(xi), cy: Y(Math.max(att, ylo)), r: 6, fill: bound === "memory-bound" ? "#1f77b4" : "#d62728",
                              stroke: "#000", "data-role": "point"}));
    parts.push(svg("text", {x: (L + W) / 2, y: H - 10, "font-size": 11, "text-anchor": "middle"},
                   `arithmetic intensity (FLOP / byte of ${dev.memory})`),
               svg("text", {x: 14, y: (T + H - B) / 2, "font-size": 11, "text-anchor": "middle",
                            transform: `rotate(-90 14 ${(T + H - B) / 2})`}, "attainable FLOP/s"),
               svg("text", {x: L + 6, y: T + 14, "font-size": 11}, `${dev.name}, ${dtype}`));
    plot.replaceChildren(...parts);
  }

  const bad = spec.checks.filter((c) => {
    const dev = devOf(c.device);
    return roofline(c.intensity, dev.peak_flops[c.dtype], dev.bandwidth_Bps) !== c.attainable;
  });
  check.textContent = bad.length ? "the roofline here disagrees with effsmall.hardware.roofline" : "";
  check.dataset.value = String(bad.length);
  setDtypes();
  update();
  return root;
}
