"""tools/check_book.py on a tiny built book: each kind of problem is reported, a clean book passes."""
import html
import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("bs4")   # the book's build environment has it; a bare GPU image may not
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("check_book", ROOT / "tools" / "check_book.py")
check_book = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_book)

PAGE = """<html><body><article id="top">
<h1 id="intro">A chapter</h1><p>Prose with <span class="math notranslate nohighlight">\\(O(n^2)\\)</span> math.</p>
{body}
<a href="#intro">up</a> <a href="other.html#sec">other</a>
<div class="cell_output docutils container"><pre>{output}</pre></div>
<img src="../_images/fig.png"/>
</article></body></html>"""


def build(tmp_path, body="", output="max |error| < 1e-5", width=600):
    root = tmp_path / "html"
    (root / "chapters").mkdir(parents=True)
    (root / "_images").mkdir()
    (root / "index.html").write_text("<html></html>")
    (root / "chapters" / "01_a.html").write_text(PAGE.format(body=body, output=html.escape(output)))
    (root / "chapters" / "other.html").write_text('<html><body><article><h2 id="sec">x</h2></article></body></html>')
    Image.new("RGB", (width, 100)).save(root / "_images" / "fig.png")
    return root


def run(root, capsys):
    code = check_book.main([str(root)])
    return code, capsys.readouterr().out


def test_clean_book_passes(tmp_path, capsys):
    code, out = run(build(tmp_path), capsys)
    assert code == 0, out


@pytest.mark.parametrize("kw, what", [
    (dict(output="Traceback (most recent call last):\n  ValueError"), "traceback"),
    (dict(output="/x.py:3: UserWarning: careful"), "warning"),
    (dict(output="<torch._C.Generator at 0x7f4393398890>"), "stray object repr"),
    (dict(body="<p>a title with $O(n^2)$ memory</p>"), "raw TeX"),
    (dict(body="<p>[FAIL] stretch line</p>"), "project-log"),
    (dict(body="<p>the acceptance line</p>"), "project-log"),
    (dict(body='<a href="missing.html">x</a>'), "broken link"),
    (dict(body='<a href="other.html#nope">x</a>'), "missing anchor"),
    (dict(body='<img src="../_images/none.png"/>'), "missing image"),
    (dict(width=1400), "wider than"),
])
def test_each_problem_is_reported(tmp_path, capsys, kw, what):
    code, out = run(build(tmp_path, **kw), capsys)
    assert code == 1 and what in out, out
