"""``python -m jobstream.server``: run the server."""

from __future__ import annotations

import sys

from jobstream.server.app import main

sys.exit(main(sys.argv[1:]))
