"""``python -m kilotune``: the ``kilotune`` command."""

import sys

from kilotune.cli.main import main

sys.exit(main())
