"""``python -m dense.cli`` (what torchrun runs): the ``dense`` command."""

import sys

from dense.cli import main

sys.exit(main())
