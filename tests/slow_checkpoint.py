"""`python -m tests.slow_checkpoint ARGS`: `recipes.tempo ARGS` with a pause (`SLOW_CHECKPOINT_SECONDS`, default 3)
after each checkpoint's temp file is written and before it replaces the previous one, so a test can kill the
process in the middle of a checkpoint write (tests/test_rundir.py). A test harness, not part of the recipe."""

import os
import runpy
import sys
import time

_replace = os.replace


def _slow_replace(src, dst) -> None:
    if str(dst).endswith("checkpoint.prev.pt"):  # the temp file is written; the rename is next
        time.sleep(float(os.environ.get("SLOW_CHECKPOINT_SECONDS", "3")))
    _replace(src, dst)


os.replace = _slow_replace
sys.argv = ["recipes.tempo", *sys.argv[1:]]
runpy.run_module("recipes.tempo", run_name="__main__")
