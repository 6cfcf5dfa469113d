"""Benchmark tasks. ``lenbench.tasks.che`` holds the 15 Chomsky Hierarchy tasks."""
