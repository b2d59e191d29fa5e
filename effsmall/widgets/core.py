"""An explorer is a page fragment: a static picture, the JavaScript beside this file, and a spec.

Why not a kernel-backed widget: the rendered book has no kernel, so ipywidgets callbacks never
run there, and front-end widget frameworks need a widget manager plus their own code fetched
from a CDN to draw even a saved state. An explorer is instead self-contained HTML: its
JavaScript (``effsmall/widgets/*.js``, read at display time and inlined) computes everything in
the browser from a JSON ``spec`` that the Python side builds with the package's own functions
(the formulas' constants, device specs, and the package's results for a few inputs, which the
JavaScript re-computes and compares on load). The same fragment runs in the static book, in
JupyterLab and in Colab; where scripts do not run (an untrusted notebook, a no-JS reader,
GitHub's viewer) the static picture stays.
"""
from __future__ import annotations

import base64
import html
import io
import itertools
import json
from importlib import resources

_COUNTER = itertools.count()

_CSS = """
.effsmall-explorer{font:13px/1.35 system-ui,-apple-system,"Segoe UI",sans-serif;border:1px solid #ccc;
 border-radius:6px;padding:8px 10px;margin:6px 0;max-width:780px;background:#fff;color:#222}
.effsmall-explorer .es-row{display:flex;flex-wrap:wrap;gap:4px 14px;align-items:center;margin:3px 0}
.effsmall-explorer .es-top{align-items:flex-start}
.effsmall-explorer .es-ctl{display:inline-flex;align-items:center;gap:5px;white-space:nowrap}
.effsmall-explorer .es-lab{font-weight:600}
.effsmall-explorer .es-val{min-width:4.5em;font-variant-numeric:tabular-nums}
.effsmall-explorer input[type=range]{width:110px}
.effsmall-explorer input[type=number]{width:9em}
.effsmall-explorer button{font:inherit;padding:1px 8px;border:1px solid #999;border-radius:4px;background:#f6f6f6;cursor:pointer}
.effsmall-explorer .es-svg{max-width:100%;height:auto}
.effsmall-explorer .es-info{flex:1;min-width:250px}
.effsmall-explorer .es-big{font-weight:700}
.effsmall-explorer .es-out{font-variant-numeric:tabular-nums}
.effsmall-explorer .es-table{border-collapse:collapse;margin:4px 0;font-size:12px}
.effsmall-explorer .es-table td,.effsmall-explorer .es-table th{padding:0 10px 0 0;text-align:left}
.effsmall-explorer .es-table td+td{text-align:right;font-variant-numeric:tabular-nums}
.effsmall-explorer .es-legend{font-size:11px;color:#555}
.effsmall-explorer .es-error{color:#b00;font-weight:600}
.effsmall-explorer .es-fallback img{max-width:100%}
"""


def _source(name: str) -> str:
    return resources.files("effsmall.widgets").joinpath(name).read_text(encoding="utf-8")


def png_of(fig, dpi: int = 80) -> bytes:
    """A matplotlib figure as PNG bytes (closed afterwards), for the static fallback."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


class Explorer:
    """A browser-side explorer: ``display(explorer)`` (or the last expression of a cell) shows it.

    ``kind`` names the JavaScript file (``tiling`` -> ``tiling.js``), ``spec`` is the JSON the
    script receives, ``fallback_png`` the picture shown until (or unless) the script runs.
    """

    def __init__(self, kind: str, spec: dict, fallback_png: bytes | None = None, alt: str = ""):
        self.kind, self.spec, self.fallback_png, self.alt = kind, spec, fallback_png, alt
        self.id = f"effsmall-{kind}-{next(_COUNTER)}"

    def html(self) -> str:
        spec = json.dumps(self.spec, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
        code = "\n".join([_source("common.js"), _source(f"{self.kind}.js")]).replace("</script", "<\\/script")
        fallback = ""
        if self.fallback_png:
            b64 = base64.b64encode(self.fallback_png).decode("ascii")
            fallback = (f'<div class="es-fallback"><img src="data:image/png;base64,{b64}" alt="{html.escape(self.alt)}">'
                        "<div><em>A static picture. The interactive explorer appears where this page runs JavaScript: "
                        "the online book, or a notebook in which this cell has been run.</em></div></div>")
        return (f'<style>{_CSS}</style>\n<div class="effsmall-explorer" id="{self.id}" data-explorer="{self.kind}" '
                # keys typed into the controls (arrows on a slider) are not notebook shortcuts in JupyterLab
                'data-lm-suppress-shortcuts="true" data-p-suppress-shortcuts="true">'
                f"{fallback}</div>\n<script>\n(function () {{\n{code}\nrender(document.getElementById("
                f'"{self.id}"), {spec});\n}})();\n</script>')

    def _repr_html_(self) -> str:
        return self.html()

    def __repr__(self) -> str:
        return f"<effsmall {self.kind} explorer: runs in the browser; display it in a notebook>"
