"""``python -m purevedec caption ...``"""

import sys

from .cli import main

sys.exit(main())
