"""The explorers in the built book, with no kernel: they respond to sliders, drop-downs and
buttons, their drawings change, and the counts they display equal the package's functions
(io_traffic and tile_trace, the roofline of effsmall.hardware, ssd_chunked_cost)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from effsmall import costs, hardware
from effsmall.attention import io_traffic
from effsmall.attention.tiled import kv_block_range
from effsmall.attention.viz import tile_trace
from effsmall.widgets.tiling import io_inputs
from effsmall.ssm.ssd_chunkwise import ssd_chunked_cost

SHOTS = Path(__file__).resolve().parents[2] / "_build" / "widget-screenshots"

PAGES = {"tiling": "chapters/05_tiled_attention_io.html", "roofline": "chapters/02_memory_hierarchy_roofline.html",
         "ssd": "chapters/11_chunked_ssd_triton.html"}


# ------------------------------------------------------------------ helpers
def open_explorer(browser, book_url, kind):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    if not browser.current_url.startswith(f"{book_url}/{PAGES[kind]}"):
        browser.get(f"{book_url}/{PAGES[kind]}")
    sel = f'.effsmall-explorer[data-explorer="{kind}"]'
    el = WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.CSS_SELECTOR, sel) if d.execute_script(
            f"const e = document.querySelector('{sel}'); return e && e.dataset.ready === '1';") else False)
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'});", el)
    return el


def out(el, name):
    from selenium.webdriver.common.by import By

    return el.find_element(By.CSS_SELECTOR, f'[data-out="{name}"]').get_attribute("data-value")


def control(el, name):
    from selenium.webdriver.common.by import By

    return el.find_element(By.CSS_SELECTOR, f'[data-control="{name}"]')


def set_range(browser, el, name, value):
    """Move a slider to ``value`` the way a drag does: set it and fire its input event."""
    box = control(el, name)
    browser.execute_script("arguments[0].value = arguments[1];"
                           "arguments[0].dispatchEvent(new Event('input', {bubbles: true}));", box, str(value))
    assert box.get_attribute("value") == str(value), f"slider {name} did not take {value}"


def choose(el, name, value):
    from selenium.webdriver.support.ui import Select

    Select(control(el, name)).select_by_value(value)


def tick(el, name, on):
    box = control(el, name)
    if box.is_selected() != on:
        box.click()


def drawing(el, role):
    from selenium.webdriver.common.by import By

    return el.find_element(By.CSS_SELECTOR, f'svg[data-role="{role}"]').get_attribute("innerHTML")


def script_errors(browser):
    """Uncaught JavaScript errors on the page, less the theme's own (its launch-button script
    declares THEBE_JS_URL twice on pages with code cells; that has nothing to do with us)."""
    return [e["message"] for e in browser.get_log("browser")
            if "Uncaught" in e["message"] and "THEBE_JS_URL" not in e["message"]]


# ------------------------------------------------------------------ every explorer
@pytest.mark.parametrize("kind", list(PAGES))
def test_explorer_loads_live_with_no_kernel(browser, book_url, kind):
    browser.get(f"{book_url}/{PAGES[kind]}")
    el = open_explorer(browser, book_url, kind)
    assert out(el, "drift") == "0", el.find_element("css selector", '[data-out="drift"]').text
    assert not el.find_elements("css selector", ".es-fallback"), "the static picture should give way to the explorer"
    assert script_errors(browser) == []
    el.screenshot(str(SHOTS / f"{kind}-start.png"))


# ------------------------------------------------------------------ tiling (chapter 05)
TILING_CASES = [  # each differs from the chapter's starting point and from the case before
    dict(N=128, D=32, sram_kb=16, block_m=0, block_n=0, causal=False, window=0),
    dict(N=512, D=64, sram_kb=64, block_m=0, block_n=0, causal=False, window=0),
    dict(N=256, D=128, sram_kb=2, block_m=0, block_n=0, causal=True, window=0),
    dict(N=400, D=48, sram_kb=8, block_m=24, block_n=40, causal=True, window=0),
    dict(N=1024, D=64, sram_kb=256, block_m=64, block_n=128, causal=True, window=256),
    dict(N=208, D=16, sram_kb=4, block_m=8, block_n=56, causal=False, window=32),
]


def set_tiling(browser, el, c):
    for name in ("N", "D", "block_m", "block_n", "window"):
        set_range(browser, el, name, c[name])
    set_range(browser, el, "sram_kb", int(math.log2(c["sram_kb"])))
    tick(el, "causal", c["causal"])


def shown_terms(el):
    rows = el.find_elements("css selector", '[data-out^="term:"]')
    return {r.get_attribute("data-out")[5:]: int(r.get_attribute("data-value")) for r in rows}


@pytest.mark.parametrize("case", TILING_CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_tiling_counts_equal_io_traffic(browser, book_url, case):
    el = open_explorer(browser, book_url, "tiling")
    before = drawing(el, "grid")
    set_tiling(browser, el, case)
    args = io_inputs(**case)
    for order in ("fa1", "fa2"):
        choose(el, "order", order)
        want = io_traffic(algorithm=order, **args)
        assert (int(out(el, "block_m")), int(out(el, "block_n"))) == (want["block_m"], want["block_n"])
        assert shown_terms(el) == want["terms"]
        assert int(out(el, "total")) == want["total"]
        assert (int(out(el, "reads")), int(out(el, "writes"))) == (want["reads"], want["writes"])
        assert int(out(el, f"{order}_total")) == want["total"]
        jlo, jhi = kv_block_range(case["N"], case["N"], want["block_m"], want["block_n"], case["causal"], args["window"])
        tiles = int((jhi - jlo + 1).clamp(min=0).sum())
        assert int(out(el, "tiles")) == tiles
        assert int(out(el, "skipped")) == math.ceil(case["N"] / want["block_m"]) * math.ceil(case["N"] / want["block_n"]) - tiles
    assert int(out(el, "standard_total")) == io_traffic(algorithm="standard", **args)["total"]
    assert drawing(el, "grid") != before
    assert script_errors(browser) == []


@pytest.mark.parametrize("order", ["fa1", "fa2"])
def test_tiling_step_buttons_follow_the_implementation(browser, book_url, order):
    """Each press of "step" shows the next tile; the running byte count equals the bytes that
    tiled_attention's own HBMCounter logged up to that tile (tile_trace)."""
    el = open_explorer(browser, book_url, "tiling")
    set_tiling(browser, el, dict(N=64, D=16, sram_kb=16, block_m=16, block_n=16, causal=True, window=0))
    choose(el, "order", order)
    control(el, "first").click()
    steps = tile_trace(64, 16, 16, 16, order, causal=True)
    assert int(out(el, "steps")) == len(steps)
    seen = set()
    for s, want in enumerate(steps):
        assert int(out(el, "step")) == s + 1
        assert out(el, "tile") == f"({want['i']}, {want['j']})"
        assert int(out(el, "bytes_so_far")) == want["bytes"]
        assert out(el, "step_reads") == (", ".join(want["reads"]) or "nothing")
        assert out(el, "step_writes") == (", ".join(want["writes"]) or "nothing")
        seen.add(drawing(el, "grid"))
        control(el, "next").click()
    assert len(seen) == len(steps), "every step draws a different picture"
    assert int(out(el, "bytes_so_far")) == io_traffic(64, 16, 1, algorithm=order, block_m=16, block_n=16, causal=True)["total"]
    el.screenshot(str(SHOTS / f"tiling-{order}-last-step.png"))


def test_tiling_play_walks_the_tiles(browser, book_url):
    from selenium.webdriver.support.ui import WebDriverWait

    el = open_explorer(browser, book_url, "tiling")
    set_tiling(browser, el, dict(N=128, D=32, sram_kb=16, block_m=16, block_n=16, causal=True, window=0))
    choose(el, "order", "fa1")
    control(el, "first").click()
    cursor = drawing(el, "chart")
    control(el, "play").click()
    WebDriverWait(el.parent, 20).until(lambda d: int(out(el, "step")) >= 4)
    control(el, "play").click()  # pause
    stopped = out(el, "step")
    assert drawing(el, "chart") != cursor
    WebDriverWait(el.parent, 3, poll_frequency=0.5).until(lambda d: out(el, "step") == stopped)
    assert 4 <= int(stopped) <= int(out(el, "steps"))


def test_tiling_keyboard_moves_a_slider(browser, book_url):
    from selenium.webdriver.common.keys import Keys

    el = open_explorer(browser, book_url, "tiling")
    set_tiling(browser, el, dict(N=128, D=32, sram_kb=16, block_m=0, block_n=0, causal=True, window=0))
    choose(el, "order", "fa2")
    control(el, "N").send_keys(Keys.ARROW_RIGHT)
    assert control(el, "N").get_attribute("value") == "144"
    assert int(out(el, "total")) == io_traffic(algorithm="fa2", **io_inputs(144, 32, 16))["total"]


# ------------------------------------------------------------------ roofline (chapter 02)
ROOF_CASES = [("H100 SXM", "bf16", "fused attention", 16384), ("H100 SXM", "fp32", "matmul", 256),
              ("A100 SXM", "fp16", "naive attention", 16384), ("T4 (Colab)", "fp16", "softmax", 1024),
              ("Laptop CPU (M1 Max class)", "fp32", "matmul", 64), ("Phone (flagship 2024 class)", "int8", "elementwise add", 65536)]


def check_roof(el, dev, dtype, flops, nbytes):
    spec = hardware.get_device(dev)
    peak, bw = spec.peak(dtype), spec.main_memory.bandwidth_Bps
    c = costs.Cost(flops, nbytes)
    assert float(out(el, "flops")) == flops and float(out(el, "bytes")) == nbytes
    assert float(out(el, "intensity")) == pytest.approx(c.intensity, rel=1e-15)
    assert float(out(el, "attainable")) == pytest.approx(hardware.roofline(c.intensity, peak, bw), rel=1e-15)
    assert float(out(el, "ridge")) == pytest.approx(spec.ridge_point(dtype), rel=1e-15)
    assert float(out(el, "time")) == pytest.approx(hardware.roofline_time(c, peak, bw), rel=1e-15)
    assert out(el, "bound") == ("memory-bound" if c.intensity < spec.ridge_point(dtype) else "compute-bound")


@pytest.mark.parametrize("dev,dtype,op,size", ROOF_CASES)
def test_roofline_matches_effsmall_hardware(browser, book_url, dev, dtype, op, size):
    from effsmall.widgets.roofline import SIZES

    el = open_explorer(browser, book_url, "roofline")
    before = drawing(el, "plot")
    choose(el, "device", dev)
    choose(el, "dtype", dtype)
    choose(el, "kernel", f"op:{op}")
    set_range(browser, el, "size", SIZES.index(size))
    c = hardware.roofline_ops(size, dtype_bytes=hardware.DTYPE_BYTES[dtype])[op]
    check_roof(el, dev, dtype, c.flops, c.bytes)
    assert drawing(el, "plot") != before


def test_roofline_typed_kernel_moves_the_point(browser, book_url):
    el = open_explorer(browser, book_url, "roofline")
    choose(el, "device", "H100 SXM")
    choose(el, "dtype", "bf16")
    choose(el, "kernel", "custom")
    for flops, nbytes, bound in ((2e9, 4e9, "memory-bound"), (8e12, 1e9, "compute-bound")):
        point = el.find_element("css selector", '[data-role="point"]').get_attribute("cx")
        for name, value in (("flops", flops), ("bytes", nbytes)):
            box = control(el, name)
            box.clear()
            box.send_keys(repr(value))
        check_roof(el, "H100 SXM", "bf16", flops, nbytes)
        assert out(el, "bound") == bound
        assert el.find_element("css selector", '[data-role="point"]').get_attribute("cx") != point
    el.screenshot(str(SHOTS / "roofline-typed.png"))


def test_roofline_measured_kernel(browser, book_url):
    from effsmall.widgets.roofline import roofline_spec

    el = open_explorer(browser, book_url, "roofline")
    m = roofline_spec()["measured"]
    assert m, "the book's measured attention kernels are in the spec"
    choose(el, "device", "H100 SXM")
    choose(el, "dtype", "bf16")
    choose(el, "kernel", "measured:0")
    check_roof(el, "H100 SXM", "bf16", m[0]["flops"], m[0]["bytes"])
    assert float(out(el, "measured")) == m[0]["measured_flops_per_s"]
    assert el.find_elements("css selector", '[data-role="measured"]')
    el.screenshot(str(SHOTS / "roofline-measured.png"))


# ------------------------------------------------------------------ SSD chunks (chapter 11)
SSD_CASES = [dict(L=16384, Q=128, N=128, P=64, H=32), dict(L=64, Q=4, N=16, P=16, H=1),
             dict(L=1024, Q=256, N=256, P=128, H=64), dict(L=512, Q=1024, N=48, P=80, H=7),
             dict(L=8192, Q=32, N=64, P=32, H=24)]


@pytest.mark.parametrize("case", SSD_CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_ssd_counts_equal_ssd_chunked_cost(browser, book_url, case):
    el = open_explorer(browser, book_url, "ssd")
    before = drawing(el, "matrix"), drawing(el, "chart")
    set_range(browser, el, "L", int(math.log2(case["L"])))
    set_range(browser, el, "Q", int(math.log2(case["Q"])))
    for name in ("N", "P", "H"):
        set_range(browser, el, name, case[name])
    want = ssd_chunked_cost(1, case["L"], case["H"], case["P"], case["N"], case["Q"])
    for key, value in want.items():
        assert int(out(el, key)) == value, key
    nc = math.ceil(case["L"] / case["Q"])
    assert int(out(el, "chunks")) == nc
    assert int(out(el, "rank")) == min(case["Q"], case["N"])
    shown = min(nc, 16)
    assert len(el.find_elements("css selector", 'svg[data-role="matrix"] .diag')) == shown
    assert len(el.find_elements("css selector", 'svg[data-role="matrix"] .offdiag')) == shown * (shown - 1) // 2
    assert (drawing(el, "matrix"), drawing(el, "chart")) != before
    el.screenshot(str(SHOTS / f"ssd-L{case['L']}-Q{case['Q']}.png"))
