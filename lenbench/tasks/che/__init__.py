"""The 15 Chomsky Hierarchy Evaluation tasks (docs/che.md §1), registered in TASKS.

The task modules are imported in the paper's order (regular, then dcf, then cs), which becomes
the order of ``TASKS.names()``; keep the import order below as it is.
"""

# isort: off
from lenbench.tasks.che import regular  # noqa: F401  (imported to register its tasks)
from lenbench.tasks.che import dcf  # noqa: F401
from lenbench.tasks.che import cs  # noqa: F401

# isort: on
from lenbench.tasks.che.base import TASKS, CheTask

__all__ = ["TASKS", "CheTask"]
