"""``lenbench doctor``: the environment a result depends on, in one place (as ``accelerate env`` and
``wandb doctor`` print theirs).

Four sections, each a list of plain dicts (:func:`environment`), so the CLI prints them and
``benchmarks/gpu_check.py`` stores them as JSON:

- versions: lenbench (and its git commit), Python, torch, numpy, Triton, platform;
- devices: the CPU (cores, torch threads) and every CUDA device (name, capability, memory);
- kernels: the C compiler and each compiled CPU kernel (built or not), Triton, FlexAttention;
- backends: which attention backend each PE of DAPE's Table 1 would take on the compute device, for
  training and evaluation at the 350M shape (the timing suite's), 512 and 4096 tokens; paths whose
  self-check has not run yet are taken as passing there and marked ``(check pending)``;
- parity: each self-checked path on the compute device (:mod:`lenbench.model.selfcheck`): its cached
  result, or, with ``check=True``, the check run now.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

import torch

TABLE1_PES = ("rope", "t5", "alibi", "kerple", "fire", "dape-kerple")  # DAPE Table 1 (suites/timing.yaml)
SHAPE = {"dim": 1024, "heads": 16}  # the 350M shape's attention (lenbench/model/sizes.py)
LENGTHS = (512, 4096)


def versions() -> list[dict[str, Any]]:
    """Software versions a result depends on."""
    import numpy

    from lenbench import __version__
    from lenbench.model.selfcheck import _triton_version
    from lenbench.results import git_hash

    rows = [("lenbench", f"{__version__} ({git_hash()})"), ("python", sys.version.split()[0]),
            ("torch", torch.__version__), ("torch CUDA", str(torch.version.cuda)), ("numpy", numpy.__version__),
            ("triton", _triton_version()), ("platform", platform.platform())]
    return [{"name": k, "value": v} for k, v in rows]


def devices() -> list[dict[str, Any]]:
    """The CPU and each CUDA device."""
    rows = [{"device": "cpu", "name": platform.processor() or platform.machine(),
             "detail": f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads"}]
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        props = torch.cuda.get_device_properties(i)
        rows.append({"device": f"cuda:{i}", "name": props.name,
                     "detail": f"sm{props.major}{props.minor}, {props.total_memory / 2**30:.1f} GiB, "
                               f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}"})
    return rows


def kernels() -> list[dict[str, Any]]:
    """Compiled kernels and optional fast paths: built / available or not, and why."""
    from lenbench import native
    from lenbench.model import dropout, small_attention
    from lenbench.model.attention import flex_available
    from lenbench.pe import dape_fused, dape_triton, fire_kernel

    cc = native.compiler()
    rows = [{"kernel": "C compiler", "status": cc or "none (the CPU kernels below fall back to PyTorch)"}]
    for name, ok in (("fused DAPE, CPU (dape_fused.c)", dape_fused.available),
                     ("small-head attention, CPU (small_attention.c)", small_attention.available),
                     ("FIRE bias, CPU (fire_bias.c)", fire_kernel.available),
                     ("dropout, CPU (dropout.c)", dropout.kernel_available)):
        rows.append({"kernel": name, "status": "built" if ok() else "not built"})
    triton = "importable" if dape_triton.importable() else "not installed"
    rows.append({"kernel": "Triton", "status": triton})
    rows.append({"kernel": "fused DAPE, CUDA (Triton)",
                 "status": "available" if dape_triton.available() else f"not available ({triton}, "
                           f"CUDA {'present' if torch.cuda.is_available() else 'absent'})"})
    for dev in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
        ok = flex_available(torch.device(dev))
        rows.append({"kernel": f"FlexAttention ({dev})", "status": "available" if ok else "not available"})
    return rows


def backends(device: torch.device) -> list[dict[str, Any]]:
    """Per Table 1 PE: the backend for training and for evaluation at each of :data:`LENGTHS`."""
    from lenbench.model import selfcheck
    from lenbench.model.attention import Attention
    from lenbench.pe.base import PEContext
    from lenbench.pe.registry import parse_pe_spec, pe_class

    pending = {p for p in selfcheck.PATHS if device.type in selfcheck.CHECKED_DEVICES and selfcheck.enabled()
               and selfcheck.lookup(p, device) is None}
    rows = []
    for name in TABLE1_PES:
        spec = parse_pe_spec(name)
        ctx = PEContext(dim=SHAPE["dim"], heads=SHAPE["heads"], causal=True, train_length=512, max_length=max(LENGTHS))
        pe = pe_class(spec)(ctx, **spec.options).to(device)
        layer = Attention(SHAPE["dim"], SHAPE["heads"], pe, causal=True).to(device)
        row: dict[str, Any] = {"pe": name}
        with selfcheck.deferred():
            for n in LENGTHS:
                with torch.enable_grad():
                    row[f"train {n}"] = _mark(layer.choose_backend(device, n), pending)
                with torch.no_grad():
                    row[f"eval {n}"] = _mark(layer.choose_backend(device, n), pending)
        rows.append(row)
    return rows


def _mark(backend: str, pending: set[str]) -> str:
    return f"{backend} (check pending)" if backend in pending else backend


def parity(device: torch.device, check: bool) -> list[dict[str, Any]]:
    """Each self-checked path on ``device``: ok / failed / not run, its error and tolerance."""
    from lenbench.model import selfcheck

    rows = []
    for path, what in selfcheck.PATHS.items():
        row: dict[str, Any] = {"path": path, "what": what}
        if device.type not in selfcheck.CHECKED_DEVICES:
            row["status"] = f"not checked on {device.type} (its tests cover it)"
        elif not selfcheck.enabled():
            row["status"] = f"skipped ({selfcheck.SWITCH}=0)"
        else:
            found = selfcheck.result(path, device) if check else selfcheck.lookup(path, device)
            if found is None:
                row["status"] = "not run yet (runs on first use; lenbench doctor --check runs it now)"
            else:
                row.update(status=("passed" if found.ok else "FAILED: turned off") + (" (cached)" if found.cached
                                                                                     else ""),
                           max_error=found.max_error, tolerance=found.tolerance, detail=found.detail)
        rows.append(row)
    return rows


def environment(check: bool = False) -> dict[str, list[dict[str, Any]]]:
    """Every section of the module docstring for the compute device."""
    from lenbench.devices import compute_device

    device = compute_device()
    return {"versions": versions(), "devices": devices(), "kernels": kernels(), "backends": backends(device),
            "parity": parity(device, check)}
