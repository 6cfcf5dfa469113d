"""The che suite."""
