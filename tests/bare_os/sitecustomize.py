"""Make this Linux Python look like macOS/Windows to the book's I/O code: with this folder on
PYTHONPATH, ``os`` has no posix_fadvise, O_DIRECT, preadv or pread. CI runs chapter 14 this
way to prove the chapter works on systems without them."""
import os

for _name in ("posix_fadvise", "O_DIRECT", "preadv", "pread"):
    if hasattr(os, _name):
        delattr(os, _name)
