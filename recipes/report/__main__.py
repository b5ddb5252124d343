"""``python -m recipes.report``: see :mod:`recipes.report.cli`."""

import sys

from recipes.report.cli import main

sys.exit(main())
