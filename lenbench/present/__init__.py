"""What every suite presents with: the table model, statistics over seeds, renderers (below the suites)."""
