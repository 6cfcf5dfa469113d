"""The ppl suite (docs/dape.md §3(d), §4.2): a causal LM per (dataset, PE, training length, seed),
trained at 128 or 512 tokens and evaluated at every length up to 8192; perplexity per length.

The package: :mod:`~lenbench.suites.ppl.config` (profile dataclasses, :func:`expand`),
:mod:`~lenbench.suites.ppl.run` (training, evaluation, the saved model),
:mod:`~lenbench.suites.ppl.protocols` (which target tokens each length scores), ``tables`` and
``plots`` (what the report shows). :data:`SUITE` is what the registry holds. Its cells may train
data-parallel under torchrun (``data_parallel``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lenbench.suites.base import Cell, Metric, PackageSuite


class PplSuite(PackageSuite):
    """The :class:`lenbench.suites.base.Suite` of perplexity extrapolation."""

    package = __name__
    name = "ppl"
    title = "Perplexity extrapolation"
    metrics = (
        Metric("ppl_last256", False, "perplexity of the last min(256, L) tokens (DAPE's protocol)"),
        Metric("ppl_all", False, "perplexity of every predicted token"),
    )
    comparison_notes = ("ppl: ppl_last256, lower is better", "worse than the unigram model (ppl)")
    data_parallel = True

    def batch_split(self, cell: Cell) -> tuple[int, int | None]:
        """(global batch, micro batch) that a data-parallel run splits over its ranks."""
        spec = cell.spec  # a PplCellConfig
        return spec.train.batch_size, spec.train.micro_batch_size

    def summary_text(self, summary: Mapping[str, Any]) -> str | None:
        ppl = summary.get("ppl_last256")
        if not isinstance(ppl, dict) or not ppl:
            return None
        longest = max(ppl, key=int)
        return f"ppl_last256 {ppl[longest]:.2f} at L={longest}"


SUITE = PplSuite()
