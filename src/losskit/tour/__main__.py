"""``python -m losskit.tour``: the same as ``python -m losskit tour``."""

import sys

from . import main

if __name__ == "__main__":  # importing this module (a doctest walk, say) runs nothing
    sys.exit(main())
