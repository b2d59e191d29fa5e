"""Read the built book (``_build/html``) the way a reader sees it and fail on what a reader trips over.

    python tools/check_book.py [_build/html]        (``make check-book`` runs it after ``make book``)

Checks, on every page of the table of contents:

* **outputs**: no Python traceback or warning (``...Warning:``) in any cell output, and no stray
  object repr such as ``<torch._C.Generator at 0x...>`` (a cell whose last line returns a value);
* **TeX**: no raw TeX outside math (``$O(n^2)$`` or ``\\mathbf`` left in prose, titles or the
  bibliography);
* **images**: every ``<img>`` exists, and no figure is wider than the book's content column
  (a wider PNG is shrunk by the browser, and its fonts with it);
* **links**: every internal link points to an existing page, and its ``#anchor`` exists there;
* **project-log words**: no ``[PASS]``/``[FAIL]`` verdicts, "acceptance" or "issue #" — the book
  speaks to readers, not to its developers.

Exit status 1 with one line per problem; 0 and a one-line summary otherwise. Needs only the
standard library, BeautifulSoup and Pillow (both installed with the book's dependencies).
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

from bs4 import BeautifulSoup
from PIL import Image

# The content column of the sphinx-book-theme page at a 1400 px window, measured in headless
# Chromium: 772 px. A matplotlib figure saved at 100 dpi must be at most ~7.7 inches wide.
MAX_FIGURE_PX = 780

TRACEBACK = re.compile(r"Traceback \(most recent call last\)|\b\w*Warning: ")
STRAY_REPR = re.compile(r"<[\w.]+ (object )?at 0x[0-9a-f]+>")
RAW_TEX = re.compile(r"\$[^$\n]*[\\^_{}][^$\n]*\$|\\(frac|mathbf|mathcal|mathrm|operatorname|left|right|"
                     r"text|sqrt|sum|cdot|times|le|ge|alpha|beta|Theta)\b")
LOG_WORDS = re.compile(r"\[(PASS|FAIL)\]|\bacceptance\b|\bissue #\d*", re.IGNORECASE)
SKIP_TEXT = ("script", "style", "pre", "code", "math")  # where TeX and code legitimately live


def _is_math(tag) -> bool:
    cls = tag.get("class") or []
    return "math" in cls or tag.name in SKIP_TEXT or "MathJax" in " ".join(cls)


def _prose_text(soup: BeautifulSoup) -> str:
    """Visible prose: the article without code, outputs, math and scripts."""
    article = soup.find("article") or soup
    parts = []
    for s in article.find_all(string=True):
        if any(_is_math(p) for p in s.parents if getattr(p, "name", None)):
            continue
        if any("cell_output" in (p.get("class") or []) or "cell_input" in (p.get("class") or [])
               for p in s.parents if getattr(p, "name", None)):
            continue
        parts.append(str(s))
    return " ".join(parts)


def _outputs(soup: BeautifulSoup) -> list[str]:
    return [o.get_text() for o in soup.select(".cell_output")]


def check_page(page: Path, root: Path, anchors: dict[Path, set[str]]) -> list[str]:
    rel = page.relative_to(root)
    soup = BeautifulSoup(page.read_text(encoding="utf-8"), "html.parser")
    problems = []
    for text in _outputs(soup):
        for pat, what in ((TRACEBACK, "traceback or warning in an output"),
                          (STRAY_REPR, "stray object repr in an output")):
            m = pat.search(text)
            if m:
                problems.append(f"{rel}: {what}: {text[max(0, m.start() - 40):m.end() + 40]!r}")
    prose = _prose_text(soup)
    for m in RAW_TEX.finditer(prose):
        problems.append(f"{rel}: raw TeX outside math: {prose[max(0, m.start() - 30):m.end() + 30]!r}")
    article = soup.find("article") or soup
    full = article.get_text(" ")
    for m in LOG_WORDS.finditer(full):
        problems.append(f"{rel}: project-log wording: {full[max(0, m.start() - 50):m.end() + 50]!r}")
    for img in article.find_all("img"):
        src = img.get("src", "")
        if src.startswith(("data:", "http:", "https:")):
            continue
        path = (page.parent / unquote(src)).resolve()
        if not path.exists():
            problems.append(f"{rel}: missing image {src}")
            continue
        if path.suffix.lower() == ".png":
            with Image.open(path) as im:
                width = im.size[0]
            if width > MAX_FIGURE_PX:
                problems.append(f"{rel}: figure {path.name[:12]}… is {width} px wide, wider than the "
                                f"{MAX_FIGURE_PX} px content column (make figsize narrower)")
    for a in article.find_all("a", href=True):
        href = a["href"]
        parts = urlsplit(href)
        if parts.scheme or href.startswith(("mailto:", "//")):
            continue
        target = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
        if not target.exists():
            problems.append(f"{rel}: broken link {href}")
            continue
        if parts.fragment and target.suffix == ".html":
            ids = anchors.setdefault(target, _ids(target))
            if parts.fragment not in ids:
                problems.append(f"{rel}: link {href} points to a missing anchor")
    return problems


def _ids(page: Path) -> set[str]:
    return set(re.findall(r'\bid="([^"]+)"', page.read_text(encoding="utf-8")))


def book_pages(root: Path) -> list[Path]:
    pages = sorted((root / "chapters").glob("*.html")) + sorted((root / "book").glob("*.html"))
    return [p for p in pages if p.is_file()]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0] if argv else "_build/html").resolve()
    if not (root / "index.html").exists():
        print(f"check-book: no built book at {root} (run `make book` first)")
        return 2
    pages = book_pages(root)
    anchors: dict[Path, set[str]] = {}
    problems = [p for page in pages for p in check_page(page, root, anchors)]
    for p in problems:
        print(p)
    if problems:
        print(f"check-book: {len(problems)} problem(s) in {len(pages)} pages")
        return 1
    print(f"check-book: {len(pages)} pages read, no problems")
    return 0


if __name__ == "__main__":
    sys.exit(main())
