"""The result store: one folder per cell, atomic writes, a lock per cell, resume.

``<root>/<suite>/<cell-id>/`` holds ``config.yaml`` (the resolved cell config), ``manifest.json``
(versions, lenbench's source hash and git commit, device), ``train_log.jsonl``, ``checkpoint.pt``,
``metrics.json`` (long format, one record per length) and ``DONE``, written last by atomic rename. A cell id is a
readable slug plus a hash of the resolved config, so a changed config never reuses old results.
Every file is written to a temporary name in the same folder and renamed into place.

Results are data, never code: ``.pt`` files hold tensors and plain Python data (dicts, lists,
numbers, strings) and are read with ``torch.load(weights_only=True)`` (:func:`safe_torch_load`),
configs are YAML/JSON beside them. A file whose pickle would build any other object (and so could
run code) is refused with one line, so opening a results folder someone shared is safe.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from lenbench.errors import LenbenchError

DONE, FAILED = "DONE", "FAILED"


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a resolved config (first 10 hex digits)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def slug(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9.=_-]+", "-", text).strip("-")[:60]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the whole new one, never a part."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise LenbenchError(f"cannot write {path}: {exc.strerror or exc}") from exc


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n")


def git_hash() -> str:
    """The lenbench source tree's git commit (with ``+dirty``), or ``unknown`` outside git."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, timeout=5,
        ).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


SOURCE_SUFFIXES = (".py", ".c")


@cache
def source_hash() -> str:
    """sha256 (hex) of the lenbench source that is running, with or without git: over every ``.py`` and
    ``.c`` file of the package in path order, each as its path relative to the package, NUL, its bytes,
    NUL. A checkout and a wheel built from it hash alike; any edit gives another hash."""
    root = Path(__file__).resolve().parent
    files = sorted(
        p for p in root.rglob("*")
        if p.suffix in SOURCE_SUFFIXES and p.is_file() and "__pycache__" not in p.relative_to(root).parts
    )
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def environment_manifest(device: str) -> dict[str, Any]:
    """Versions, lenbench's source hash, git commit and device: what a reader needs to trust or
    reproduce a number (the source hash identifies the code where git cannot, e.g. after ``pip install .``)."""
    import numpy
    import torch

    from lenbench import __version__

    return {
        "lenbench": __version__,
        "source_sha256": source_hash(),
        "git": git_hash(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


class UnsafeFile(LenbenchError):
    """A ``.pt`` file whose pickle would import objects beyond tensors and plain data (refused, not run)."""


def safe_torch_load(path: Path, what: str = "file") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: tensors and plain data only.

    A pickle that would import anything else (a class, a function such as ``os.system``) is refused
    with a one-line :class:`UnsafeFile` before anything in it runs; an unreadable or corrupted file
    is a one-line :class:`LenbenchError`.
    """
    import pickle
    import re
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the unpickler warns about protocols before it refuses them
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found:
            raise UnsafeFile(
                f"refusing to load {path}: the {what} would import {found.group(1)}, not tensors and plain data, "
                "and could run code (lenbench writes only tensors and plain data)"
            ) from exc
        detail = next((ln.strip() for ln in str(exc).splitlines() if ln.strip().startswith("Unsupported")), "")
        raise LenbenchError(
            f"corrupted {what} {path}: not a file of tensors and plain data" + (f" ({detail})" if detail else "")
        ) from exc
    except Exception as exc:
        raise LenbenchError(f"corrupted {what} {path} ({type(exc).__name__})") from exc


class CellBusy(LenbenchError):
    """Another process holds this cell's lock."""


class CellDir:
    """One cell's folder and the operations on it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    config_path = property(lambda self: self.path / "config.yaml")
    metrics_path = property(lambda self: self.path / "metrics.json")
    log_path = property(lambda self: self.path / "train_log.jsonl")
    checkpoint_path = property(lambda self: self.path / "checkpoint.pt")
    manifest_path = property(lambda self: self.path / "manifest.json")
    done_path = property(lambda self: self.path / DONE)
    failed_path = property(lambda self: self.path / FAILED)

    @property
    def cell_id(self) -> str:
        return self.path.name

    def read_config(self) -> dict[str, Any] | None:
        if not self.config_path.exists():
            return None
        try:
            return yaml.safe_load(self.config_path.read_text())
        except yaml.YAMLError as exc:
            raise LenbenchError(f"corrupted config {self.config_path}: {exc}") from exc

    def is_done(self, config: dict[str, Any] | None = None) -> bool:
        """DONE exists (and, if given, the stored config equals ``config``)."""
        if not self.done_path.exists():
            return False
        return config is None or self.read_config() == config

    def prepare(self, config: dict[str, Any], manifest: dict[str, Any]) -> None:
        """Create the folder and write config and manifest (a failed mark is cleared on retry)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LenbenchError(f"cannot create result folder {self.path}: {exc.strerror or exc}") from exc
        stored = self.read_config()
        if stored is not None and stored != config:
            raise LenbenchError(f"{self.path} holds a different config; refusing to mix results")
        if stored is None:
            atomic_write_text(self.config_path, yaml.safe_dump(config, sort_keys=True))
        if not self.manifest_path.exists():
            atomic_write_json(self.manifest_path, manifest)
        with contextlib.suppress(FileNotFoundError):
            self.failed_path.unlink()
        self.remove_stale_temporaries()

    def remove_stale_temporaries(self) -> None:
        """Delete half-written ``.NAME.tmp-PID`` files a killed writer left (call under the lock)."""
        for tmp in self.path.glob(".*.tmp-*"):
            with contextlib.suppress(OSError):
                tmp.unlink()

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive per-cell lock (``flock`` on ``.lock``); raises :class:`CellBusy` if held."""
        self.path.mkdir(parents=True, exist_ok=True)
        fh = open(self.path / ".lock", "a")  # noqa: SIM115
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise CellBusy(f"cell {self.cell_id} is being run by another process") from exc
            yield
        finally:
            fh.close()

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        import torch

        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.checkpoint_path, buf.getvalue())

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The training checkpoint (tensors and plain data, :func:`safe_torch_load`), or None."""
        if not self.checkpoint_path.exists():
            return None
        try:
            state = safe_torch_load(self.checkpoint_path, "checkpoint")
        except UnsafeFile:
            raise
        except LenbenchError as exc:
            raise LenbenchError(f"{exc}; delete it to restart the cell") from exc
        if not isinstance(state, dict):
            raise LenbenchError(f"corrupted checkpoint {self.checkpoint_path}; delete it to restart the cell")
        return state

    def truncate_log(self, last_step: int) -> None:
        """Keep only train-log records with ``step <= last_step`` (used when resuming)."""
        if not self.log_path.exists():
            return
        kept = []
        for line in self.log_path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break  # a torn last line from a kill: drop it and what follows
            if rec.get("step", 0) <= last_step:
                kept.append(line)
        atomic_write_text(self.log_path, "".join(f"{x}\n" for x in kept))

    def append_log(self, record: dict[str, Any]) -> None:
        with open(self.log_path, "a") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")

    def write_metrics(self, records: list[dict[str, Any]]) -> None:
        atomic_write_json(self.metrics_path, records)

    def read_metrics(self) -> list[dict[str, Any]]:
        try:
            return json.loads(self.metrics_path.read_text())
        except FileNotFoundError:
            return []
        except json.JSONDecodeError as exc:
            raise LenbenchError(f"corrupted metrics file {self.metrics_path}: {exc}") from exc

    def mark_done(self, summary: dict[str, Any]) -> None:
        """Write the DONE marker last (atomic rename) with a small summary in it."""
        atomic_write_json(self.done_path, summary)

    def mark_failed(self, reason: str, step: int | None) -> None:
        atomic_write_json(self.failed_path, {"reason": reason, "step": step, "time": time.time()})

    def status(self) -> str:
        if self.done_path.exists():
            return "done"
        if self.failed_path.exists():
            return "failed"
        if self.checkpoint_path.exists() or self.log_path.exists():
            return "partial"
        return "pending"


class ResultStore:
    """The results root: ``<root>/<suite>/<cell-id>/``."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def check_writable(self) -> None:
        """Fail with one line when the results root cannot be created or written."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LenbenchError(f"results folder {self.root} cannot be created: {exc.strerror or exc}") from exc
        if not self.root.is_dir():
            raise LenbenchError(f"results path {self.root} is not a folder")
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise LenbenchError(f"results folder {self.root} is not writable")

    def cell(self, suite: str, label: str, config: dict[str, Any]) -> CellDir:
        return CellDir(self.root / suite / f"{slug(label)}-{config_hash(config)}")

    def cells(self, suite: str | None = None) -> list[CellDir]:
        """Every cell folder (of one suite or all); hidden folders such as ``.superseded/`` are not cells."""
        def visible(p: Path) -> bool:
            return p.is_dir() and not p.name.startswith(".")

        suites = [self.root / suite] if suite else sorted(p for p in self.root.glob("*") if visible(p))
        return [CellDir(p) for s in suites if s.is_dir() for p in sorted(s.iterdir()) if visible(p)]
