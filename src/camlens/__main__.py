"""``python -m camlens``: the ``camlens`` command (:func:`camlens.cli.main`)."""

import sys

from .cli import main

sys.exit(main())
