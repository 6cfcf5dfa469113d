"""A worker process that ends when its parent does, so no orphan keeps training after a killed grid.

On Linux the kernel sends the worker ``SIGKILL`` when its parent exits (``prctl(PR_SET_PDEATHSIG)``,
prctl(2)); elsewhere a daemon thread polls ``os.getppid()`` every ``every`` seconds and exits the
process when the parent is gone (the worker is re-parented, so its parent id changes). Either way the
worker's cell stops where it is: its lock is released with the process, its folder keeps the last
checkpoint, and rerunning the grid resumes it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent: int, every: float = 1.0) -> str:
    """Arrange for this process to end when ``parent`` (the pid that started it) exits -> how.

    Returns ``"pdeathsig"`` or ``"watchdog"``. If the parent is already gone, exits at once.
    """
    how = "pdeathsig" if sys.platform.startswith("linux") and _pdeathsig(signal.SIGKILL) else "watchdog"
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    if how == "watchdog":
        threading.Thread(target=_watch, args=(parent, every), name="lenbench-lifeline", daemon=True).start()
    return how


def _pdeathsig(sig: int) -> bool:
    """``prctl(PR_SET_PDEATHSIG, sig)`` through libc; False where it is unavailable or refused."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent: int, every: float) -> None:
    while os.getppid() == parent:
        time.sleep(every)
    os._exit(1)
