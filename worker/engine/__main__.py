"""``python -m worker.engine``: the command line (files are written by ``worker.cli``)."""

from worker.cli import main

raise SystemExit(main())
