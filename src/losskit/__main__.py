"""``python -m losskit``: see :mod:`losskit.cli`."""

import sys

from .cli import main

sys.exit(main())
