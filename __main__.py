"""``python -m kilotune``: the ``kilotune`` command."""

import sys

from kilotune.search.cli import main

sys.exit(main())
