"""The browser explorers' Python side: the page fragment, the exported spec, input checks.

What the JavaScript computes is checked in a real browser by tests/browser (make check-widgets).
"""
import base64
import json
import re

import matplotlib
import pytest

from effsmall import hardware
from effsmall.attention import io_traffic
from effsmall.attention.viz import explorer
from effsmall.ssm.ssd_chunkwise import ssd_chunked_cost
from effsmall.widgets import Explorer, roofline_explorer, roofline_spec, ssd_explorer, ssd_spec, tiling_explorer, tiling_spec
from effsmall.widgets.tiling import io_inputs

matplotlib.use("Agg")


def spec_in(html: str) -> dict:
    """The JSON literal the fragment passes to render()."""
    m = re.search(r'render\(document\.getElementById\("[^"]+"\), (\{.*\})\);\n\}\)\(\);', html, re.S)
    return json.loads(m.group(1).replace("<\\/", "</"))


@pytest.mark.parametrize("make,kind", [(tiling_explorer, "tiling"), (roofline_explorer, "roofline"),
                                       (ssd_explorer, "ssd")])
def test_fragment_is_self_contained(make, kind):
    ex = make()
    html = ex._repr_html_()
    assert isinstance(ex, Explorer) and ex.kind == kind
    assert f'data-explorer="{kind}"' in html and f'id="{ex.id}"' in html
    assert "function mount(" in html and "function render(" in html  # common.js and the explorer's js, inlined
    assert "<script src" not in html and "import " not in html  # nothing fetched: works offline
    assert html.count("</script>") == 1  # the code cannot close its own tag early
    assert spec_in(html) == json.loads(json.dumps(ex.spec))
    png = re.search(r'src="data:image/png;base64,([^"]+)"', html).group(1)
    assert base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n"  # the static picture for readers without JS
    assert make(fallback=False).fallback_png is None


def test_each_explorer_gets_its_own_element():
    a, b = tiling_explorer(fallback=False), tiling_explorer(fallback=False)
    assert a.id != b.id


def test_tiling_spec_carries_io_traffic():
    spec = tiling_spec()
    assert {c["inputs"]["algorithm"] for c in spec["checks"]} == {"standard", "fa1", "fa2"}
    for c in spec["checks"]:
        inp = {k: v for k, v in c["inputs"].items() if k != "algorithm"}
        want = io_traffic(algorithm=c["inputs"]["algorithm"], **io_inputs(**inp))
        assert c["terms"] == want["terms"] and c["total"] == want["total"]
    assert spec["stat_bytes"] == 4 and spec["dtype_bytes"] == 2


def test_io_inputs_maps_the_controls():
    assert io_inputs(128, 32, 16) == dict(N=128, D=32, M=16384, block_m=None, block_n=None, causal=True,
                                          window=None, dtype_bytes=2)
    assert io_inputs(64, 16, 4, 8, 16, False, 32)["window"] == (32, None)


def test_roofline_spec_carries_devices_and_operations():
    spec = roofline_spec()
    assert [d["name"] for d in spec["devices"]] == list(hardware.DEVICES)
    h100 = spec["devices"][0]
    assert h100["bandwidth_Bps"] == hardware.get_device("H100 SXM").main_memory.bandwidth_Bps
    op = next(o for o in spec["ops"] if o["name"] == "matmul" and o["size"] == 1024 and o["dtype_bytes"] == 2)
    c = hardware.roofline_ops(1024, dtype_bytes=2)["matmul"]
    assert (op["flops"], op["bytes"]) == (c.flops, c.bytes)
    assert spec["measured"] and all(m["measured_flops_per_s"] > 0 for m in spec["measured"])


def test_ssd_spec_carries_ssd_chunked_cost():
    for c in ssd_spec()["checks"]:
        i = c["inputs"]
        assert c["cost"] == ssd_chunked_cost(1, i["L"], i["H"], i["P"], i["N"], i["Q"])


def test_chapter_entry_points_still_work():
    assert explorer(N=64, order="fa1").spec["defaults"]["order"] == "fa1"
    assert hardware.roofline_explorer(device="T4 (Colab)", dtype="fp16").kind == "roofline"


@pytest.mark.parametrize("kwargs,match", [
    (dict(N=8), "N must"), (dict(N=100.0), "N must"), (dict(D=512), "D must"), (dict(sram_kb=3), "sram_kb"),
    (dict(order="fa3"), "order"), (dict(block_m=-1), "block_m"), (dict(window=True), "window")])
def test_tiling_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiling_explorer(fallback=False, **kwargs)
    with pytest.raises(TypeError, match="causal"):
        tiling_explorer(causal="yes", fallback=False)


def test_roofline_bad_input():
    with pytest.raises(ValueError, match="dtype"):
        roofline_explorer(device="T4 (Colab)", dtype="bf16", fallback=False)
    with pytest.raises(ValueError, match="unknown device"):
        roofline_explorer(device="B200", fallback=False)
    with pytest.raises(ValueError, match="size"):
        roofline_explorer(size=1000, fallback=False)
    with pytest.raises(ValueError, match="op"):
        roofline_explorer(op="conv", fallback=False)


@pytest.mark.parametrize("kwargs,match", [(dict(L=1000), "L must"), (dict(Q=2048), "Q must"), (dict(N=20), "N must"),
                                          (dict(P=0), "P must"), (dict(H=65), "H must")])
def test_ssd_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ssd_explorer(fallback=False, **kwargs)
