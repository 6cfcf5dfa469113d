"""The CHE suite (docs/che.md): an encoder per (task, PE, learning rate, seed) trained at lengths
1..40 and tested at every longer length; accuracy per length, the cell's score their mean.

The package: :mod:`~lenbench.suites.che.config` (profile dataclasses, :func:`expand`),
:mod:`~lenbench.suites.che.run` (training and evaluation of one cell),
:mod:`~lenbench.suites.che.stats` (standard errors, majority baseline), ``tables`` and ``plots``
(what the report shows). :data:`SUITE` is what the registry holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lenbench.suites.base import Metric, PackageSuite


class CheSuite(PackageSuite):
    """The :class:`lenbench.suites.base.Suite` of the Chomsky-hierarchy tasks."""

    package = __name__
    name = "che"
    title = "CHE: accuracy on longer inputs"
    metrics = (
        Metric("accuracy", True, "accuracy at one test length"),
        Metric("train_accuracy", True, "accuracy at one training length (fresh samples)"),
        Metric("score", True, "mean accuracy over the test lengths"),
        Metric("train_score", True, "mean accuracy over the training lengths; 'fit' when >= the threshold"),
        Metric("majority_score", True, "the majority baseline's score on the same samples"),
        Metric("train_majority_score", True, "the majority baseline on the training lengths"),
    )
    comparison_notes = ("CHE: score in %, higher is better", "below the majority baseline (CHE)")

    def summary_text(self, summary: Mapping[str, Any]) -> str | None:
        score = summary.get("score")
        return f"score {100 * score:.1f}%" if isinstance(score, int | float) else None


SUITE = CheSuite()
