"""Test doubles shared by the suite tests."""

from __future__ import annotations

from lenbench.suites import SilentReporter


class StopAt(SilentReporter):
    """A reporter that interrupts training right after ``step``, like a Ctrl-C or a kill."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.stop = step

    def train_step(self, step: int, metrics: dict[str, float]) -> None:
        if step == self.stop:
            raise KeyboardInterrupt
