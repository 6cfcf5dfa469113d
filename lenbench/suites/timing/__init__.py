"""The timing suite."""
