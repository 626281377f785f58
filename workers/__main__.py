"""``python -m kilotune.workers '{"study": ...}'``: one worker process, as a launcher starts it (workers/process.py)."""

import sys

from kilotune.workers.process import main

sys.exit(main(sys.argv))
