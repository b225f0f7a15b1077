"""``python -m encoder_clf``: the same as the ``encoder-clf`` command."""

import sys

from .cli import main

sys.exit(main())
