"""``python -m bench.engine``: the engine bench's command line (:mod:`bench.engine.cli`)."""

import sys

from bench.engine.cli import main

sys.exit(main())
