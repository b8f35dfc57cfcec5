"""``python -m tivis_client`` = the ``tivis`` command."""

import sys

from tivis_client.cli import main

sys.exit(main())
