"""The che suite's rows for ``lenbench list``: its tasks, with level and chance accuracy."""

from __future__ import annotations

from lenbench.suites.base import Listing


def listing() -> list[Listing]:
    """[(title, header, rows)]: the registered CHE tasks (``--task``) with their Chomsky level and
    chance accuracy (docs/che.md)."""
    from lenbench.tasks.che import TASKS

    rows = []
    for name, cls in TASKS.items():
        task = cls()
        rows.append((name, task.level, f"{100 * task.chance:.1f}%", task.description))
    return [("CHE tasks (--task)", ("name", "level", "chance", "description"), rows)]
