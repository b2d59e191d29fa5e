"""Positioned reads and page-cache control that work on Linux, macOS and Windows.

LLM in a Flash reads many small, scattered pieces of a file at once. The fast way differs by
operating system, and some calls do not exist everywhere:

| need | Linux | macOS | Windows |
|---|---|---|---|
| read at an offset, no shared file position, GIL released | ``os.preadv`` | ``os.preadv`` (or ``os.pread``) | none: seek + read under a lock |
| no readahead, queue reads, drop cached pages | ``posix_fadvise`` | none | none |
| bypass the page cache | ``O_DIRECT`` | ``fcntl(F_NOCACHE)`` | none (buffered) |

Every function here takes the best call the platform has and falls back to a documented,
slower or weaker one, so the book's code runs everywhere. Where the page cache cannot be
bypassed or dropped, :func:`cache_control` says so, and results carry that note: a "cold"
read measured there may come from RAM.
"""
from __future__ import annotations

import os
import threading

__all__ = ["open_read", "pread_into", "advise", "drop_cache", "cache_control", "open_uncached",
           "HAVE_FADVISE"]

HAVE_FADVISE = hasattr(os, "posix_fadvise")


def open_read(path) -> int:
    """A read-only file descriptor (binary mode on Windows)."""
    return os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))


_seek_locks: dict[int, threading.Lock] = {}
_seek_locks_guard = threading.Lock()


def _seek_lock(fd: int) -> threading.Lock:
    with _seek_locks_guard:
        return _seek_locks.setdefault(fd, threading.Lock())


def pread_into(fd: int, buf, offset: int) -> int:
    """Read ``len(buf)`` bytes at ``offset`` into the writable buffer ``buf``; return bytes read.

    ``os.preadv`` where it exists (one system call, no shared file position, so threads can
    read one descriptor at once); else ``os.pread`` and a copy; else (Windows) ``lseek`` +
    ``readv``/``read`` under a per-descriptor lock, which keeps the answer right but serializes
    the reads of that descriptor.
    """
    if hasattr(os, "preadv"):
        return os.preadv(fd, [buf], offset)
    view = memoryview(buf).cast("B")
    if hasattr(os, "pread"):
        data = os.pread(fd, len(view), offset)
    else:
        with _seek_lock(fd):
            os.lseek(fd, offset, os.SEEK_SET)
            data = b""
            while len(data) < len(view):          # read() may return less than asked
                part = os.read(fd, len(view) - len(data))
                if not part:
                    break
                data += part
    view[:len(data)] = data
    return len(data)


def pread(fd: int, n: int, offset: int) -> bytes:
    """``n`` bytes at ``offset`` (fewer at the end of the file), as :func:`pread_into`."""
    buf = bytearray(n)
    got = pread_into(fd, buf, offset)
    return bytes(buf[:got])


def advise(fd: int, offset: int, length: int, advice: str) -> bool:
    """``posix_fadvise(fd, offset, length, POSIX_FADV_<advice>)`` if the OS has it; returns whether
    it was applied. ``advice``: ``"RANDOM"`` (no readahead), ``"WILLNEED"`` (queue the reads
    now), ``"DONTNEED"`` (drop the cached pages). Advice is a hint: skipping it changes speed,
    never results."""
    if not HAVE_FADVISE:
        return False
    os.posix_fadvise(fd, offset, length, getattr(os, f"POSIX_FADV_{advice}"))
    return True


def _set_nocache(fd: int) -> bool:
    """macOS: turn off page caching for this descriptor (``fcntl(F_NOCACHE, 1)``)."""
    try:
        import fcntl
    except ImportError:          # Windows
        return False
    flag = getattr(fcntl, "F_NOCACHE", None)
    if flag is None:
        return False
    try:
        fcntl.fcntl(fd, flag, 1)
    except OSError:
        return False
    return True


def drop_cache(fd: int) -> bool:
    """Make the next reads of ``fd`` come from the device: ``DONTNEED`` where available, else
    ``F_NOCACHE`` (macOS: later reads skip the cache). False when neither exists (Windows): the
    next reads may be served from RAM."""
    return advise(fd, 0, 0, "DONTNEED") or _set_nocache(fd)


def cache_control() -> str:
    """How this platform can keep reads off the page cache, for results' ``mode`` notes."""
    if HAVE_FADVISE:
        return "fadvise(DONTNEED)"
    try:
        import fcntl
        if hasattr(fcntl, "F_NOCACHE"):
            return "F_NOCACHE"
    except ImportError:
        pass
    return "buffered (page cache not bypassed)"


def open_uncached(path, probe_buf) -> tuple[int, str] | None:
    """A descriptor whose reads bypass the page cache, and how: ``O_DIRECT`` (Linux, if the
    filesystem accepts it; ``probe_buf`` must be page-aligned, e.g. an ``mmap``) or
    ``F_NOCACHE`` (macOS). None when the platform or filesystem offers neither."""
    flag = getattr(os, "O_DIRECT", 0)
    if flag:
        try:
            fd = os.open(path, os.O_RDONLY | flag)
        except OSError:
            fd = None
        if fd is not None:
            try:
                pread_into(fd, probe_buf, 0)
                return fd, "O_DIRECT"
            except OSError:
                os.close(fd)
    fd = open_read(path)
    if _set_nocache(fd):
        return fd, "F_NOCACHE"
    os.close(fd)
    return None
