"""Suites: each a package whose ``SUITE`` object satisfies :class:`lenbench.suites.base.Suite`.

Adding a suite: write its package and add one line to :data:`SUITE_PACKAGES` (or register an object
with ``SUITES.add(name, suite)``, or from another distribution through the ``lenbench.suites``
entry-point group). Packages are imported on first use: they pull in torch.
"""

from __future__ import annotations

import importlib

from lenbench.suites.base import SUITES, Cell, Reporter, RunContext, SilentReporter, Suite

__all__ = ["DEFAULT_SUITE", "SUITES", "SUITE_PACKAGES", "Cell", "Reporter", "RunContext", "SilentReporter", "Suite",
           "get_suite", "registered", "suite_names"]

DEFAULT_SUITE = "che"  # what ``lenbench run`` expands without --suite

SUITE_PACKAGES = {  # suite name -> package holding its SUITE object
    "che": "lenbench.suites.che",
    "ppl": "lenbench.suites.ppl",
    "timing": "lenbench.suites.timing",
}


def get_suite(name: str) -> Suite:
    """The registered suite ``name`` (a package of :data:`SUITE_PACKAGES` is imported on first use);
    an unknown name is a one-line error with a suggestion."""
    if name not in SUITES and name in SUITE_PACKAGES:
        SUITES.add(name, importlib.import_module(SUITE_PACKAGES[name]).SUITE)
    return SUITES.get(name)


def suite_names() -> list[str]:
    """Every known suite: the packages listed here, then any registered otherwise."""
    return list(dict.fromkeys([*SUITE_PACKAGES, *SUITES.names()]))


def registered() -> list[Suite]:
    """Every known suite's object, in :func:`suite_names` order."""
    return [get_suite(name) for name in suite_names()]
