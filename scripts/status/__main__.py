"""``python -m scripts.status``: see `scripts.status.cli`."""

import sys

from scripts.status.cli import main

sys.exit(main())
