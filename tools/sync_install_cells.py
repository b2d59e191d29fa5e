"""Write every chapter's Colab install cell from the one repository address in _config.yml.

The address lives in `_config.yml` (`repository.url`), which also drives the book's launch
buttons. A notebook opened in Colab cannot read that file before the package is installed, so
the cell carries the address literally; this script (``make sync-install``) rewrites it and
``tests/test_book_structure.py`` fails when a chapter disagrees with `_config.yml`.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
FIRST_LINE = "# Set-up: in Colab, install effsmall from the book's repository; elsewhere this does nothing."


def repository_url() -> str:
    return yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"].rstrip("/")


def install_cell(url: str | None = None) -> str:
    """The install cell's source. pip keeps what Colab already has (torch, triton, ipywidgets):
    the package's requirements are ranges Colab's versions satisfy, so nothing is replaced."""
    url = url or repository_url()
    return (f"{FIRST_LINE}\n"
            "# Colab keeps its own torch, triton and ipywidgets; only effsmall and what it lacks are added.\n"
            "import sys\n"
            "if \"google.colab\" in sys.modules:\n"
            f"    %pip install -q \"effsmall[triton] @ git+{url}\"")


def main() -> int:
    cell = install_cell()
    changed = 0
    for path in sorted((ROOT / "chapters").glob("*.ipynb")):
        nb = json.loads(path.read_text())
        code = next(c for c in nb["cells"] if c["cell_type"] == "code")
        if "".join(code["source"]) != cell:
            code["source"] = cell.splitlines(keepends=True)
            path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
            changed += 1
    print(f"install cells rewritten in {changed} chapter(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
