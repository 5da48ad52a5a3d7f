"""``python -m recfuse``: the ``recfuse`` command (recfuse.cli)."""

import sys

from .cli import main

sys.exit(main())
