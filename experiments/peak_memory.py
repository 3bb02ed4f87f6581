"""The peak resident memory of this process alone, for the scripts that report memory.

``getrusage(RUSAGE_SELF).ru_maxrss`` is not that on Linux: a process started by another (Python's
``subprocess`` forks or vforks, then execs) keeps its parent's peak, so a script run from a 2 GB
pytest process reports at least 2 GB whatever it uses itself. ``VmHWM`` in ``/proc/self/status``
is the high-water mark of the process's own address space, which exec replaces; it is read where
it exists (Linux), and ``ru_maxrss`` elsewhere (macOS: bytes; BSDs: KiB).
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path


def peak_kib() -> int:
    """This process's peak resident set size in KiB (VmHWM on Linux, ru_maxrss elsewhere)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss // 1024 if sys.platform == "darwin" else rss
