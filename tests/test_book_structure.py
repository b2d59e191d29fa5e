"""The book's structure: every chapter follows the template and is in the table of contents."""
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))
SETUP_FIRST_LINE = "# Set-up: in Colab, install effsmall from the book's repository; elsewhere this does nothing."
NUMBERING = {
    "01": "why_efficiency", "02": "memory_hierarchy_roofline", "03": "quadratic_attention",
    "04": "safe_online_softmax", "05": "tiled_attention_io", "06": "backward_recomputation",
    "07": "flashattention_triton", "08": "state_space_models", "09": "selective_scan",
    "10": "semiseparable_matrices", "11": "chunked_ssd_triton", "12": "small_language_models",
    "13": "making_models_smaller", "14": "llm_in_a_flash", "15": "parallelism", "16": "decoding",
}


def toc_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [c["file"] for part in toc["parts"] for c in part["chapters"]]


def test_toc_lists_only_existing_files_and_every_chapter():
    files = toc_files()
    for f in files:
        assert (ROOT / f).with_suffix(".ipynb").exists() or (ROOT / f).with_suffix(".md").exists(), f
    listed = {f for f in files if f.startswith("chapters/")}
    assert listed == {f"chapters/{p.stem}" for p in CHAPTERS}


def test_there_are_chapters():
    assert len(CHAPTERS) >= 2


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_follows_template(path):
    m = re.fullmatch(r"(\d\d)_(\w+)", path.stem)
    assert m and NUMBERING.get(m.group(1)) == m.group(2), f"{path.name} does not match the book's numbering"
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    assert cells[0]["cell_type"] == "markdown" and "".join(cells[0]["source"]).startswith("# ")
    code = [c for c in cells if c["cell_type"] == "code"]
    assert "".join(code[0]["source"]).startswith(SETUP_FIRST_LINE), "first code cell must be the Colab set-up"
    text = "\n".join("".join(c["source"]) for c in cells)
    assert "effsmall" in text
    assert "## Exercises" in text and ":class: dropdown" in text, "exercises with hidden solutions"
    assert "## Summary" in text
    assert all(c.get("execution_count") for c in code[1:]), "committed with outputs (run `make execute`)"
    for c in code:  # no stored errors
        assert not any(o.get("output_type") == "error" for o in c.get("outputs", [])), path.name


def test_install_cells_use_the_repository_in_config():
    """One address: `_config.yml`'s repository (the launch buttons' too) is what every chapter installs."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("sync", ROOT / "tools" / "sync_install_cells.py")
    sync = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync)
    want = sync.install_cell()
    assert sync.repository_url() in want
    for path in CHAPTERS:
        code = next(c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
        assert "".join(code["source"]) == want, f"{path.name}: run `make sync-install`"


def test_package_keeps_colab_widgets():
    """Colab ships ipywidgets 7: the package must not force an upgrade that breaks its widgets."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    widgets = next(d for d in deps if d.startswith("ipywidgets"))
    assert widgets.replace(" ", "") == "ipywidgets>=7.6"


@pytest.mark.parametrize("svg", sorted((ROOT / "book" / "static").glob("*.svg")), ids=lambda p: p.name)
def test_static_svgs_are_well_formed(svg):
    import xml.dom.minidom

    xml.dom.minidom.parse(str(svg))  # a malformed SVG renders as a broken image in the book
