"""The ppl suite."""
