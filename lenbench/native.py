"""Build and load lenbench's optional C kernels (``lenbench/**/*.c``), compiled on first use.

Each kernel's C source ships with the package and is compiled with the system C compiler
(``$CC``, else ``cc``, ``gcc`` or ``clang``; ``-O3 -march=native``, OpenMP when it links) into a
cache folder (``$LENBENCH_KERNEL_CACHE``, else ``kernels/`` under ``$LENBENCH_CACHE``,
``$XDG_CACHE_HOME/lenbench`` or ``~/.cache/lenbench``). The library's name carries a key of the
source, the flags, the compiler and the CPU, so a shared home folder never serves a library built
for another CPU. Without a compiler, or with the kernel's switch set to ``0`` in the environment,
:func:`load` returns None and callers take their PyTorch path.

A kernel reads raw pointers with the sizes and strides it is given, so each wrapper checks its
inputs with :func:`require` before the call: a tensor of another shape, dtype, device or layout is a
one-line error, never an out-of-bounds read. The C entry points also refuse impossible sizes.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import torch

from lenbench.errors import LenbenchError
from lenbench.paths import cache_root

FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-shared", "-fPIC", "-pthread")
# Tried first: with OpenMP a kernel runs on PyTorch's own libgomp pool (same soname, already loaded).
OPENMP = "-fopenmp"


def cache_dir() -> Path:
    """``$LENBENCH_KERNEL_CACHE``, else ``kernels/`` in the cache (:func:`lenbench.paths.cache_root`)."""
    if os.environ.get("LENBENCH_KERNEL_CACHE"):
        return Path(os.environ["LENBENCH_KERNEL_CACHE"])
    return cache_root() / "kernels"


def _cpu_signature() -> str:
    """The CPU's model and feature flags (``-march=native`` depends on them)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    keep = [ln for ln in lines if ln.split(":")[0].strip() in ("model name", "flags", "Features")]
    return "\n".join(sorted(set(keep))) or platform.machine()


def compiler() -> str | None:
    """The C compiler kernels are built with, or None."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def build(source: Path, target_dir: Path | None = None) -> Path:
    """Compile ``source`` (or find it already compiled) and return the shared library's path.

    Raises ``RuntimeError`` with the compiler's message when it cannot be built.
    """
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler (cc, gcc or clang) on PATH")
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    parts = [source.read_bytes(), " ".join((*FLAGS, OPENMP)).encode(), version.encode(), _cpu_signature().encode()]
    key = hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]
    folder = target_dir or cache_dir()
    lib = folder / f"{source.stem}-{key}.so"
    if lib.exists():
        return lib
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{source.stem}-", suffix=".so")
    os.close(fd)
    try:
        for extra in ([OPENMP], []):  # without a libgomp to link, threads come from pthreads (or none)
            proc = subprocess.run([cc, *FLAGS, *extra, str(source), "-o", tmp, "-lm"], capture_output=True, text=True)
            if proc.returncode == 0:
                break
        else:
            raise RuntimeError(f"compiling {source.name} failed: {proc.stderr.strip()[-500:]}")
        os.replace(tmp, lib)  # atomic: concurrent builders each publish a whole library
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib


Signatures = tuple[tuple[str, tuple[Any, ...]], ...]


@cache
def load(source: Path, switch: str, signatures: Signatures) -> ctypes.CDLL | None:
    """The compiled ``source`` with each ``(function name, argument ctypes)`` of ``signatures`` set,
    or None when ``$switch`` is ``0`` or it cannot be built or loaded.

    Cached per process; tests call ``load.cache_clear()`` after changing the environment.
    """
    if os.environ.get(switch, "1") == "0":
        return None
    try:
        lib = ctypes.CDLL(str(build(source)))
    except (OSError, RuntimeError):
        return None
    for name, argtypes in signatures:
        getattr(lib, name).argtypes = list(argtypes)
    return lib


def require(
    kernel: str,
    name: str,
    t: torch.Tensor,
    shape: Sequence[int | None],
    dtype: torch.dtype = torch.float32,
    layout: str = "last",
    meaning: str = "",
) -> None:
    """Refuse, before ``kernel`` touches memory, an input it would misread: ``t`` must be a CPU tensor of
    ``dtype`` whose shape matches ``shape`` (None: any size) and whose ``layout`` is ``"last"``
    (last axis contiguous, the other strides given to the kernel), ``"contiguous"``, or ``"any"``
    (the wrapper copies it into the kernel's layout); ``meaning`` names the axes in the message."""
    if not isinstance(t, torch.Tensor):
        raise LenbenchError(f"{kernel} kernel: {name} must be a tensor, got {type(t).__name__}")
    want = "[" + ", ".join("*" if n is None else str(n) for n in shape) + "]" + (f" = [{meaning}]" if meaning else "")
    if t.dim() != len(shape) or any(n is not None and n != m for n, m in zip(shape, t.shape, strict=True)):
        raise LenbenchError(f"{kernel} kernel: {name} has shape {list(t.shape)}, expected {want}")
    if t.dtype != dtype or t.device.type != "cpu":
        raise LenbenchError(f"{kernel} kernel: {name} must be {dtype} on the CPU, got {t.dtype} on {t.device}")
    if any(s < 0 for s in t.stride()):
        raise LenbenchError(f"{kernel} kernel: {name} has a negative stride {list(t.stride())}")
    if layout == "contiguous" and not t.is_contiguous():
        raise LenbenchError(f"{kernel} kernel: {name} must be contiguous, got strides {list(t.stride())}")
    if layout == "last" and t.dim() and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise LenbenchError(f"{kernel} kernel: {name} needs a contiguous last axis, got strides {list(t.stride())}")


def check_status(kernel: str, status: int) -> None:
    """A kernel's return code: 0 fine, -2 (or -1 where documented) refused arguments, -1 out of memory."""
    if status == -2:
        raise LenbenchError(f"{kernel} kernel refused its sizes or strides (checked before reading memory)")
    if status:
        raise MemoryError(f"{kernel} kernel: out of memory")
