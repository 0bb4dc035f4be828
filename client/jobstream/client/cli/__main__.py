"""``python -m jobstream.client.cli``: the ``jobstream`` command."""

from __future__ import annotations

import sys

from jobstream.client.cli import main

if __name__ == "__main__":
    sys.exit(main())
