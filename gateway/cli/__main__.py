"""``python -m gateway.cli``: the same command as ``spice-migration-gateway``."""

import sys

from gateway.cli import main

sys.exit(main())
