"""``python -m lenbench`` runs the CLI."""

from lenbench.cli import main

raise SystemExit(main())
