"""``python -m driver [sweep args]`` or ``python -m driver report DIR``."""

import sys

from driver.driver import main

sys.exit(main())
