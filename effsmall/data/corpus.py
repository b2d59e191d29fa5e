"""An offline corpus: text that every Python installation ships.

Two sources, in a fixed order so the corpus is the same on every run of the same Python:

1. the ``pydoc`` topic pages (``pydoc_data.topics``: the language reference sections that
   ``help("if")`` prints), sorted by topic name, about 0.5 MB;
2. the docstrings of a fixed list of pure-Python standard-library modules and of their public
   classes, functions and methods, walked in sorted name order.

No downloads. The text changes slightly between Python versions (documentation is edited), so
numbers measured on it are reproducible for one Python version.
"""
from __future__ import annotations

import importlib
import inspect
from functools import lru_cache

# Pure-Python modules with rich docstrings and no import side effects.
STDLIB_MODULES = (
    "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "collections", "concurrent.futures",
    "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib",
    "email", "enum", "fractions", "ftplib", "functools", "gettext", "glob", "gzip", "heapq", "hmac",
    "html", "http.client", "http.server", "imaplib", "inspect", "ipaddress", "json", "logging",
    "mailbox", "multiprocessing", "netrc", "numbers", "optparse", "pathlib", "pickle", "pickletools",
    "pprint", "pydoc", "queue", "random", "re", "sched", "secrets", "selectors", "shlex", "shutil",
    "smtplib", "socket", "socketserver", "statistics", "string", "subprocess", "tarfile", "tempfile",
    "textwrap", "threading", "timeit", "tokenize", "traceback", "typing", "unittest",
    "urllib.parse", "urllib.request", "uuid", "warnings", "wave", "weakref", "xml.dom.minidom",
    "zipfile",
)


def _docstrings(module_name: str) -> list[str]:
    try:
        mod = importlib.import_module(module_name)
    except Exception:  # a module missing from a minimal Python build is skipped
        return []
    docs = [inspect.getdoc(mod) or ""]
    for name in sorted(vars(mod)):
        if name.startswith("_"):
            continue
        obj = vars(mod)[name]
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if getattr(obj, "__module__", None) != mod.__name__:
            continue          # re-exported from elsewhere: keep each docstring once
        docs.append(f"{name}: {inspect.getdoc(obj) or ''}")
        if inspect.isclass(obj):
            for mname in sorted(vars(obj)):
                meth = vars(obj)[mname]
                if mname.startswith("_") or not inspect.isfunction(meth) or not meth.__doc__:
                    continue
                docs.append(f"{name}.{mname}: {inspect.cleandoc(meth.__doc__)}")
    return [d for d in docs if len(d) > 40]


@lru_cache(maxsize=1)
def corpus_documents() -> tuple[str, ...]:
    """The corpus as a tuple of documents (one pydoc topic or one docstring each)."""
    from pydoc_data.topics import topics

    docs = [topics[k].strip() for k in sorted(topics)]
    for m in STDLIB_MODULES:
        docs.extend(_docstrings(m))
    return tuple(docs)


@lru_cache(maxsize=1)
def load_corpus() -> str:
    """The whole corpus as one string, documents separated by a blank line (≈1 MB)."""
    return "\n\n".join(corpus_documents())
