"""``python -m gpmlip.cli`` is the ``gpmlip`` command."""

import sys

from gpmlip.cli import main

sys.exit(main())
