"""``python -m acdc ...`` is the ``acdc`` command (and what ``torchrun -m acdc transcoders train`` runs)."""

import sys

from .cli import main

sys.exit(main())
