// Helpers shared by the explorers: DOM and SVG builders, labelled controls, number formats.
// Plain browser JavaScript, no libraries: the explorers must run in a static page with no kernel.

const SVG_NS = "http://www.w3.org/2000/svg";

// h("div", {class: "x"}, child, "text", ...) -> an HTML element
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "style") el.style.cssText = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c);
  return el;
}

// svg("rect", {x: 0, ...}) -> an SVG element
function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) el.setAttribute(k, v);
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c);
  return el;
}

// 1234567 -> "1,234,567"
function fmtInt(n) {
  return Math.round(n).toLocaleString("en-US");
}

// three significant digits with a decimal unit, as effsmall.hardware.human_bytes / human_rate
function fmtSI(x, unit) {
  const prefixes = ["", "K", "M", "G", "T", "P"];
  let e = x ? Math.floor(Math.log10(Math.abs(x)) / 3) : 0;
  e = Math.max(0, Math.min(e, 5));
  return `${Number((x / 1000 ** e).toPrecision(3))} ${prefixes[e]}${unit}`;
}

// A value shown to the reader and to the browser test: data-out names it, data-value is exact.
function output(name, cls) {
  return h("span", {"data-out": name, class: cls || "es-out"});
}
function setOut(root, name, value, text) {
  const el = root.querySelector(`[data-out="${name}"]`);
  if (!el) return;
  el.dataset.value = String(value);
  el.textContent = text === undefined ? String(value) : text;
}

// A labelled range slider. opts: {name, label, min, max, step, value, show(v) -> text}
function slider(opts, onChange) {
  const input = h("input", {type: "range", min: opts.min, max: opts.max, step: opts.step || 1,
                            value: opts.value, "data-control": opts.name, "aria-label": opts.label});
  const shown = h("span", {class: "es-val"});
  const get = () => Number(input.value);
  const update = () => { shown.textContent = opts.show ? opts.show(get()) : String(get()); };
  input.addEventListener("input", () => { update(); onChange(); });
  update();
  return {el: h("label", {class: "es-ctl"}, h("span", {class: "es-lab"}, opts.label), input, shown),
          input, get, refresh: update};
}

// A labelled drop-down. options: [[value, text], ...]
function dropdown(opts, onChange) {
  const sel = h("select", {"data-control": opts.name, "aria-label": opts.label});
  const setOptions = (options, value) => {
    sel.replaceChildren(...options.map(([v, t]) => h("option", {value: v}, t)));
    if (value !== undefined && options.some(([v]) => String(v) === String(value))) sel.value = value;
  };
  setOptions(opts.options, opts.value);
  sel.addEventListener("change", onChange);
  return {el: h("label", {class: "es-ctl"}, h("span", {class: "es-lab"}, opts.label), sel),
          input: sel, get: () => sel.value, setOptions};
}

function checkbox(opts, onChange) {
  const box = h("input", {type: "checkbox", "data-control": opts.name, checked: !!opts.value});
  box.addEventListener("change", onChange);
  return {el: h("label", {class: "es-ctl es-check"}, box, h("span", {}, opts.label)), input: box,
          get: () => box.checked};
}

// Log-scale axis: value -> pixel, for [lo, hi] onto [p0, p1]
function logScale(lo, hi, p0, p1) {
  const a = Math.log10(lo), b = Math.log10(hi);
  return (v) => p0 + (Math.log10(v) - a) / (b - a) * (p1 - p0);
}

// Replace the static fallback picture by the live explorer, or show what went wrong.
function mount(el, build) {
  try {
    const live = build();
    el.querySelector(".es-fallback")?.remove();
    el.append(live);
    // keys pressed in the explorer (arrows on a slider, digits in a box) are for it, not for the
    // notebook around it (JupyterLab's notebook takes arrow keys to move between cells)
    el.addEventListener("keydown", (e) => e.stopPropagation());
    el.dataset.ready = "1";
  } catch (err) {
    el.append(h("p", {class: "es-error", "data-out": "error"}, `explorer failed: ${err}`));
    throw err;
  }
}
