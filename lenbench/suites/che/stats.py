"""Per-length CHE accuracy with its standard error, the cell score's SE, and the majority baseline.

Accuracy at one length (docs/che.md §2.6, RPE ``range_evaluation.py``): the mean over sub-batches of
the pooled masked accuracy ``sum(c) / sum(m)``, where sample ``s`` has ``c_s`` correct of ``m_s``
masked target tokens. Its standard error treats the samples as i.i.d. draws (they are: fresh
samples per length) and uses the ratio estimator's delta-method variance, with ``a`` the
accuracy and ``m_bar`` the mean mask count of the ``n`` samples:

    SE(a)^2 = sum_s (c_s - a m_s)^2 / (n (n - 1) m_bar^2)

For single-output tasks (``m_s = 1``) this is the binomial ``a (1 - a) / (n - 1)`` form. The score
is the mean of the K per-length accuracies, over independent samples, so

    SE(score) = sqrt(sum_L SE(a_L)^2) / K.

Majority baseline (issue 16): the best input-independent predictor of the test distribution, a
constant class per output position: at each position the class most frequent among the masked
targets of an independent draw of that length (fitting it on the scored samples themselves would
favour it by about ``0.4 / sqrt(n)`` on balanced positions). It is scored on the very samples the
model is scored on, and it sits above chance where classes are skewed (modular_arithmetic_brackets,
the terminator of stack_manipulation, sorted bucket_sort outputs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Counts:
    """Correct and counted (masked) target tokens per sample of one length."""

    correct: np.ndarray  # [n] int
    counted: np.ndarray  # [n] int

    @staticmethod
    def join(parts: Sequence[Counts]) -> Counts:
        return Counts(np.concatenate([p.correct for p in parts]), np.concatenate([p.counted for p in parts]))


def sample_counts(predicted: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> Counts:
    """Per-sample correct and masked token counts for class ids ``predicted``/``targets`` ``[B, T]``."""
    hit = (predicted == targets) & mask
    return Counts(hit.sum(dim=1).cpu().numpy().astype(np.int64), mask.sum(dim=1).cpu().numpy().astype(np.int64))


def ratio_se(counts: Counts) -> float:
    """Delta-method SE of the pooled accuracy ``sum(c) / sum(m)`` over i.i.d. samples (module doc)."""
    c, m = counts.correct.astype(float), counts.counted.astype(float)
    n = len(c)
    if n < 2 or m.sum() == 0:
        return math.nan
    acc = c.sum() / m.sum()
    return float(math.sqrt(((c - acc * m) ** 2).sum() / (n * (n - 1) * m.mean() ** 2)))


def score_se(length_ses: Sequence[float]) -> float:
    """``SE(mean of K accuracies) = sqrt(sum SE_L^2) / K`` for independent lengths."""
    if not length_ses:
        return math.nan
    return float(math.sqrt(sum(se * se for se in length_ses)) / len(length_ses))


def majority_classes(targets: torch.Tensor, mask: torch.Tensor, classes: int) -> torch.Tensor:
    """The most frequent class at each output position among masked targets ``[B, T]`` -> ``[T]``.

    Ties go to the smaller class id; a position never counted predicts class 0.
    """
    onehot = torch.nn.functional.one_hot(targets, classes) * mask[..., None]
    return onehot.sum(dim=0).argmax(dim=-1)


def majority_counts(constant: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> Counts:
    """Per-sample counts of the constant per-position predictor ``constant`` ``[T]`` on ``targets``."""
    return sample_counts(constant[None, :].expand_as(targets), targets, mask)


def pooled(counts: Counts) -> float:
    """Pooled accuracy ``sum(c) / sum(m)`` (NaN when nothing is counted)."""
    total = int(counts.counted.sum())
    return float(counts.correct.sum()) / total if total else math.nan
