"""Explorers that run in the reader's browser: tiling (ch. 05), roofline (ch. 02), SSD chunks (ch. 11).

Each is an :class:`~effsmall.widgets.core.Explorer`: a static picture, the JavaScript beside
its Python module (``tiling.js``, ``roofline.js``, ``ssd.js``, with ``common.js``) and a JSON spec
built from the package's own functions. No kernel is needed, so the same explorer works in the
online book, JupyterLab and Colab.
"""
from effsmall.widgets.core import Explorer
from effsmall.widgets.roofline import roofline_explorer, roofline_spec
from effsmall.widgets.ssd import ssd_explorer, ssd_spec
from effsmall.widgets.tiling import tiling_explorer, tiling_spec

__all__ = ["Explorer", "roofline_explorer", "roofline_spec", "ssd_explorer", "ssd_spec", "tiling_explorer",
           "tiling_spec"]
