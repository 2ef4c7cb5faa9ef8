"""``python -m purevedec caption ...`` / ``python -m purevedec train ...``"""

import sys

from .commands import main

sys.exit(main())
