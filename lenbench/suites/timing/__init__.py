"""The timing suite (docs/timing.md): milliseconds per forward and per training step of each PE at
batch 1 for the 350M/2.7B/6.7B shapes (DAPE Table 1), each group of PEs timed in interleaved rounds
with paired ratios to a reference PE and an identical-work control as the noise floor.

The package: :mod:`~lenbench.suites.timing.config` (profile, :func:`expand` into groups),
:mod:`~lenbench.suites.timing.run` (one group: records), :mod:`~lenbench.suites.timing.measure`
(the timed modules and rounds), :mod:`~lenbench.suites.timing.cost` (time estimates),
:mod:`~lenbench.suites.timing.ratios` (paired ratios), ``tables`` and ``plots``. :data:`SUITE` is
what the registry holds.
"""

from __future__ import annotations

from collections.abc import Callable

from lenbench.suites.base import Metric, PackageSuite


class TimingSuite(PackageSuite):
    """The :class:`lenbench.suites.base.Suite` of time cost."""

    package = __name__
    name = "timing"
    title = "Time cost"
    metrics = (
        Metric("ms_fwd", False, "milliseconds per forward at batch 1"),
        Metric("ms_train", False, "milliseconds per forward + backward at batch 1"),
    )

    @property
    def commands(self) -> tuple[Callable[..., None], ...]:  # type: ignore[override]
        """``lenbench timing`` (DAPE Table 1's layout, with progress and an estimate)."""
        from lenbench.suites.timing.command import timing

        return (timing,)


SUITE = TimingSuite()
