"""Fast attention paths prove themselves: a parity check against ``explicit`` on first use per device.

lenbench's CUDA-only paths have only run in tests on CPU (Triton under its interpreter) when they are
first used on a GPU. So the first time a process would use one of them on a device type listed in
:data:`CHECKED_DEVICES`, a small check compares it with the reference on that device:

- ``dape_fused``: the fused DAPE v1 kernel (Triton on CUDA) against ``explicit`` attention over
  :meth:`~lenbench.pe.dape.DAPE.scores`, outputs and gradients to q, k, v and every PE parameter,
  for DAPE-Kerple (Toeplitz bias, causal and bidirectional) and DAPE-FIRE (full bias); fp32 on both
  sides, tolerance :data:`TOLERANCE` ``["dape_fused"]`` relative to the reference's largest value;
- ``flex``: compiled FlexAttention with each static bias's ``score_mod`` (ALiBi, Kerple, T5, FIRE),
  causal and bidirectional, against ``explicit`` with the materialized bias; fp32 inputs (and on CUDA
  the gradients to q, k, v), then bf16 inputs against fp32 ``explicit`` on the same rounded inputs;
- ``bf16``: attention under bf16 autocast, whose position terms must stay fp32 (issue 16): for ALiBi,
  Kerple, FIRE, T5 and DAPE-Kerple the bias (or DAPE's logits) comes out fp32 under autocast, and the
  layer's output is within bf16 tolerance of the fp32 layer.

A check's result is cached in memory and on disk (``selfcheck.json`` in lenbench's cache folder) under
a key naming the device, its compute capability, the torch, Triton and lenbench versions and a hash of
the attention sources (:func:`device_key`): a new driver stack, card or source edit checks again. A
failed check turns its path off for that device (attention falls back to ``explicit``, ``sdpa_bias`` or
fp32), prints one warning line, and every cell run in the process records it (:func:`cell_record`).
``LENBENCH_SELFCHECK=0`` skips the checks (the paths are then trusted, and cells say so).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lenbench.paths import cache_root

SWITCH = "LENBENCH_SELFCHECK"
PATHS = {
    "dape_fused": "fused DAPE kernel (Triton on CUDA) vs explicit",
    "flex": "compiled FlexAttention (static-bias score_mod) vs explicit",
    "bf16": "bf16 autocast with fp32 position terms vs fp32",
}
# Device types whose paths must prove themselves before use; tests add "cpu" to exercise the machinery.
CHECKED_DEVICES: tuple[str, ...] = ("cuda",)
# Largest allowed |fast - reference| / max(1, max |reference|), per path.
TOLERANCE = {"dape_fused": 1e-4, "flex": 1e-3, "flex_bf16": 3e-2, "bf16": 3e-2}
SOURCES = ("model/attention.py", "model/selfcheck.py", "pe/dape_fused.py", "pe/dape_triton.py",
           "pe/dape_triton_kernels.py", "pe/dape_layout.py", "pe/bias.py", "pe/dape.py", "pe/base.py")


@dataclass(frozen=True)
class CheckResult:
    """One path's parity check on one device."""

    path: str
    ok: bool
    max_error: float  # relative, see TOLERANCE
    tolerance: float
    detail: str  # the worst case, or why the check could not run
    key: str  # :func:`device_key`
    cached: bool = False  # read from the disk cache rather than run in this process

    def warning(self) -> str:
        """The one-line warning a failed check prints and cells record."""
        return (f"{self.path} failed its parity check on {self.key.split('|')[0]} "
                f"(max error {self.max_error:.3g} > {self.tolerance:g}: {self.detail}); it is turned off")


_results: dict[tuple[str, str], CheckResult] = {}
# The attention module the checks compare against; :mod:`lenbench.model.attention` registers its class
# when imported (this module sits below it: attention asks it, never the other way round).
_attention: Any = None


def use_attention(cls: Any) -> None:
    """Called by :mod:`lenbench.model.attention` at import: the class whose backends the checks compare."""
    global _attention
    _attention = cls


def attention_class() -> Any:
    if _attention is None:
        raise RuntimeError("lenbench.model.attention is not imported; the self-checks compare its backends")
    return _attention
_running: set[str] = set()
_warned: set[tuple[str, str]] = set()


def enabled() -> bool:
    return os.environ.get(SWITCH, "1") != "0"


def source_hash() -> str:
    """sha256 (12 hex) of the attention sources a check covers (:data:`SOURCES`)."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for rel in SOURCES:
        path = root / rel
        digest.update(rel.encode() + (path.read_bytes() if path.exists() else b""))
    return digest.hexdigest()[:12]


def _triton_version() -> str:
    try:
        import triton
    except ImportError:
        return "none"
    return str(triton.__version__)


_keys: dict[tuple[str, int | None], str] = {}


def device_key(device: torch.device) -> str:
    """``<device name>|<capability>|torch <v>|triton <v>|lenbench <v>|src <hash>`` (computed once per device)."""
    if (device.type, device.index) not in _keys:
        _keys[(device.type, device.index)] = _device_key(device)
    return _keys[(device.type, device.index)]


def _device_key(device: torch.device) -> str:
    from lenbench import __version__

    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        name, capability = torch.cuda.get_device_name(index), f"sm{major}{minor}"
    else:
        import platform

        name, capability = f"{device.type}:{platform.machine()}", "-"
    return "|".join((name, capability, f"torch {torch.__version__}", f"triton {_triton_version()}",
                     f"lenbench {__version__}", f"src {source_hash()}"))


def cache_path() -> Path:
    return cache_root() / "selfcheck.json"


def _read_cache() -> dict[str, Any]:
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(result: CheckResult) -> None:
    """Merge ``result`` into the cache file (atomic replace; a lost race only repeats a check later)."""
    data = _read_cache()
    entry = {k: v for k, v in asdict(result).items() if k not in ("key", "cached")}
    data.setdefault(result.key, {})[result.path] = entry
    path = cache_path()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)


_deferred = False


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within: :func:`allowed` runs no new check; an unchecked path counts as allowed (``lenbench doctor``
    shows which backends a PE *would* use, and marks the checks still pending)."""
    global _deferred
    before, _deferred = _deferred, True
    try:
        yield
    finally:
        _deferred = before


def allowed(path: str, device: torch.device) -> bool:
    """Whether ``path`` may serve ``device``: True off the checked device types, with the checks
    switched off, inside the path's own check, or once its check passed (running it on first use)."""
    if device.type not in CHECKED_DEVICES or not enabled() or path in _running:
        return True
    if device.type == "cuda" and not torch.cuda.is_available():
        return True  # a routing question about a device this process cannot run on: nothing to check
    if _deferred:
        found = lookup(path, device)
        return found is None or found.ok
    if torch.compiler.is_compiling():  # never run a check inside a trace: a path not yet proven is not used
        found = _results.get((device_key(device), path))
        return found is not None and found.ok
    return result(path, device).ok


def lookup(path: str, device: torch.device) -> CheckResult | None:
    """The known result of ``path`` on ``device`` (this process, then the disk cache), without running it."""
    if path not in PATHS:
        raise ValueError(f"unknown self-checked path {path!r} (known: {', '.join(PATHS)})")
    key = device_key(device)
    found = _results.get((key, path))
    if found is None:
        stored = _read_cache().get(key, {}).get(path)
        if isinstance(stored, dict):
            with contextlib.suppress(TypeError):
                found = CheckResult(**stored, key=key, cached=True)
    return found


def result(path: str, device: torch.device) -> CheckResult:
    """The check of ``path`` on ``device``: from this process, the disk cache, or run now."""
    key = device_key(device)
    found = lookup(path, device)
    if found is None:
        found = run_check(path, device)
        _write_cache(found)
    _results[(key, path)] = found
    if not found.ok and (key, path) not in _warned:
        _warned.add((key, path))
        sys.stderr.write(f"lenbench: warning: {found.warning()}\n")
    return found


def run_check(path: str, device: torch.device) -> CheckResult:
    """Run the check of ``path`` on ``device`` now (no cache); an exception inside is a failed check."""
    key = device_key(device)
    _running.add(path)
    try:
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            torch.manual_seed(0)
            error, detail = CHECKS[path](device)
    except Exception as exc:  # a crash on the device is a failed proof, not a crashed cell
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        error, detail = float("inf"), f"{type(exc).__name__}: {first}"
    finally:
        _running.discard(path)
    tolerance = TOLERANCE[path]
    return CheckResult(path, bool(error <= tolerance), float(error), tolerance, detail, key)


def known() -> list[CheckResult]:
    """Every check result this process has used, in the order first used."""
    return list(_results.values())


def cell_record() -> dict[str, Any]:
    """What a cell stores: every check this process used (path -> ok, error, tolerance, device) and the
    warnings of failed ones; ``{"skipped": True}`` when ``LENBENCH_SELFCHECK=0``."""
    if not enabled():
        return {"skipped": True, "checks": {}, "warnings": []}
    checks = {r.path: {"ok": r.ok, "max_error": r.max_error, "tolerance": r.tolerance,
                       "device": r.key.split("|")[0], "cached": r.cached} for r in known()}
    return {"checks": checks, "warnings": [r.warning() for r in known() if not r.ok]}


def forget() -> None:
    """Drop this process's results (the disk cache stays): tests start from a clean slate."""
    _results.clear()
    _warned.clear()


# --------------------------------------------------------------------------- the checks


def relative_error(fast: torch.Tensor, reference: torch.Tensor) -> float:
    """``max |fast - reference| / max(1, max |reference|)``, in fp32; NaN or a shape change is ``inf``."""
    if fast.shape != reference.shape:
        return float("inf")
    fast, reference = fast.detach().float(), reference.detach().float()
    diff = (fast - reference).abs().max().item() if fast.numel() else 0.0
    if diff != diff:  # NaN
        return float("inf")
    return diff / max(1.0, reference.abs().max().item() if reference.numel() else 0.0)


def _pe(spec: str, device: torch.device, dim: int, heads: int, causal: bool, n: int) -> Any:
    from lenbench.pe.base import PEContext
    from lenbench.pe.registry import parse_pe_spec, pe_class

    parsed = parse_pe_spec(spec)
    ctx = PEContext(dim=dim, heads=heads, causal=causal, train_length=n, max_length=n)
    return pe_class(parsed)(ctx, **parsed.options).to(device)


def _qkv(device: torch.device, heads: int, n: int, d: int, grad: bool) -> list[torch.Tensor]:
    return [torch.randn(2, heads, n, d, device=device).requires_grad_(grad) for _ in range(3)]


def _worst(cases: Iterator[tuple[str, float]]) -> tuple[float, str]:
    """(largest error, ``worst: <case>``) over ``(case, error)`` pairs."""
    worst, where = -1.0, "no case"
    for name, error in cases:
        if error > worst:
            worst, where = error, name
    return max(worst, 0.0), f"worst: {where}"


def check_dape_fused(device: torch.device) -> tuple[float, str]:
    """Fused DAPE (:func:`lenbench.pe.dape_fused.dape_attention`) vs ``explicit``: outputs and gradients."""
    from lenbench.pe import dape_fused

    Attention = attention_class()  # noqa: N806

    def cases() -> Iterator[tuple[str, float]]:
        for spec, causal, n in (("dape-kerple:hidden=8", True, 70), ("dape-kerple:variant=concat,hidden=8", False, 45),
                                ("dape-fire:hidden=8", True, 40), ("dape-alibi:variant=add_residual", False, 33)):
            heads, dim = 4, 64
            pe = _pe(spec, device, dim, heads, causal, n)
            q, k, v = _qkv(device, heads, n, dim // heads, True)
            pos = torch.arange(n, device=device)
            ref_layer = Attention(dim, heads, pe, causal, "explicit").to(device)
            grad = torch.randn(2, heads, n, dim // heads, device=device)
            leaves = [q, k, v, *[p for p in pe.parameters() if p.requires_grad]]
            outs = [dape_fused.dape_attention(pe, q, k, v, pos, causal), ref_layer.explicit(q, k, v, pos)]
            grads = [torch.autograd.grad(out, leaves, grad, allow_unused=True) for out in outs]
            name = f"{spec} {'causal' if causal else 'bidirectional'} N={n}"
            yield f"{name} output", relative_error(outs[0], outs[1])
            for i, (a, b) in enumerate(zip(*grads, strict=True)):
                if a is not None and b is not None:
                    yield f"{name} gradient {i}", relative_error(a, b)

    return _worst(cases())


def check_flex(device: torch.device) -> tuple[float, str]:
    """Compiled FlexAttention with each static bias's ``score_mod`` vs ``explicit`` (fp32; and bf16 inputs,
    scaled into the fp32 tolerance by ``TOLERANCE["flex"] / TOLERANCE["flex_bf16"]``)."""
    Attention = attention_class()  # noqa: N806
    scale_bf16 = TOLERANCE["flex"] / TOLERANCE["flex_bf16"]
    with_grad = device.type == "cuda"  # torch 2.13 has no CPU backward for FlexAttention

    def cases() -> Iterator[tuple[str, float]]:
        # one length (fewer compilations), two of them bf16: each new score_mod or shape compiles anew
        for spec, causal, bf16 in (("alibi", True, True), ("alibi", False, False), ("kerple", True, False),
                                   ("t5", False, True), ("fire", True, False)):
            n = 300
            heads, dim = 4, 64
            pe = _pe(spec, device, dim, heads, causal, n)
            for p in pe.parameters():
                p.requires_grad_(False)
            layer = Attention(dim, heads, pe, causal, "explicit").to(device)
            q, k, v = _qkv(device, heads, n, dim // heads, with_grad)
            pos = torch.arange(n, device=device)
            name = f"{spec} {'causal' if causal else 'bidirectional'} N={n}"
            with contextlib.nullcontext() if with_grad else torch.no_grad():
                fast, ref = layer.flex(q, k, v), layer.explicit(q, k, v, pos)
            yield f"{name} fp32 output", relative_error(fast, ref)
            if with_grad:
                grad = torch.randn_like(ref)
                ga = torch.autograd.grad(fast, (q, k, v), grad)
                gb = torch.autograd.grad(ref, (q, k, v), grad)
                for i, (a, b) in enumerate(zip(ga, gb, strict=True)):
                    yield f"{name} gradient {i}", relative_error(a, b)
            if not bf16:
                continue
            with torch.no_grad():
                qh, kh, vh = (t.detach().to(torch.bfloat16) for t in (q, k, v))
                fast = layer.flex(qh, kh, vh)
                ref = layer.explicit(qh.float(), kh.float(), vh.float(), pos)
            yield f"{name} bf16 output", relative_error(fast, ref) * scale_bf16

    return _worst(cases())


def check_bf16(device: torch.device) -> tuple[float, str]:
    """Under bf16 autocast the position terms stay fp32 and a layer matches its fp32 self."""
    Attention = attention_class()  # noqa: N806

    def cases() -> Iterator[tuple[str, float]]:
        for spec in ("alibi", "kerple", "fire", "t5", "dape-kerple:hidden=8"):
            for causal, n in ((True, 96), (False, 64)):
                heads, dim = 4, 64
                pe = _pe(spec, device, dim, heads, causal, n)
                layer = Attention(dim, heads, pe, causal, "explicit").to(device)
                x = torch.randn(2, n, dim, device=device)
                pos = torch.arange(n, device=device)
                name = f"{spec} {'causal' if causal else 'bidirectional'} N={n}"
                with torch.no_grad():
                    ref = layer(x)
                    with torch.autocast(device.type, dtype=torch.bfloat16):
                        low = layer(x)
                        if type(pe).has_hook("scores"):
                            s = torch.randn(1, heads, n, n, device=device).to(torch.bfloat16)
                            term = pe.scores(s, s, s, pos, pos)
                        else:
                            term = pe.bias(pos, pos)
                yield f"{name} position term dtype {term.dtype}", 0.0 if term.dtype == torch.float32 else float("inf")
                yield f"{name} output", relative_error(low, ref)

    return _worst(cases())


CHECKS: dict[str, Callable[[torch.device], tuple[float, str]]] = {
    "dape_fused": check_dape_fused,
    "flex": check_flex,
    "bf16": check_bf16,
}
