"""Table model, statistics and renderers shared by every suite (below suites, above the model)."""
