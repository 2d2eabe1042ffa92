"""``python -m containers``: the same as ``python -m containers.replica``."""

import sys

from containers.replica import main

sys.exit(main())
