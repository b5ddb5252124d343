"""``python -m recipes.plot RUN_DIR [RUN_DIR ...]``: evaluation curves and the averaged one-tailed Welch t-test of
each method against a baseline. The command lives in :mod:`recipes.report.plot_cli`, next to the sweep report whose
loader, statistics and figures it shares."""

import sys

from recipes.report.plot_cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
