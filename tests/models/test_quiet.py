"""TensorFlow's start-up chatter: the command and the Python API quiet it alike (issue 19.4)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

LEVEL = "import os, sys; {imports}; print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'), 'tensorflow' in sys.modules)"


@pytest.mark.parametrize("imports", ["import kilotune.workers.api", "import kilotune; kilotune.best", "import kilotune.cli.main as m; m.quiet_tensorflow()"])
@pytest.mark.parametrize(("env", "level"), [({}, "3"), ({"KILOTUNE_DEBUG": "1"}, "None"), ({"TF_CPP_MIN_LOG_LEVEL": "1"}, "1")])
def test_every_entry_point_sets_the_log_level_before_tensorflow_loads(imports, env, level):
    base = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "KILOTUNE_DEBUG")}
    out = subprocess.run([sys.executable, "-c", LEVEL.format(imports=imports)], cwd=REPO, env=base | env,
                         capture_output=True, text=True, timeout=120, check=True).stdout.split()  # fmt: skip
    assert out == [level, "False"], "level 3 hides 'failed call to cuInit' (an ERROR to TensorFlow); a level set by the user stays"
