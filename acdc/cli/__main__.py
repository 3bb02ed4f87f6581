"""``python -m acdc.cli ...``: the ``acdc`` command."""

import sys

from . import main

sys.exit(main())
