"""Allows ``python -m kingest``."""

import sys

from kingest.cli.main import main

sys.exit(main())
