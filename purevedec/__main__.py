"""``python -m purevedec caption ...``"""

import sys

from .captioning.cli import main

sys.exit(main())
