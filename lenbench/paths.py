"""Where lenbench keeps what it can rebuild: one cache folder, below every user of it.

Tokenized corpora, trained tokenizers (:mod:`lenbench.data`), compiled C kernels
(:mod:`lenbench.native`) and the fast-path self-check results (:mod:`lenbench.model.selfcheck`)
all live under :func:`cache_root`.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$LENBENCH_CACHE``, else ``$XDG_CACHE_HOME/lenbench``, else ``~/.cache/lenbench``."""
    if os.environ.get("LENBENCH_CACHE"):
        return Path(os.environ["LENBENCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lenbench"
