"""Run the command line as ``python -m proxy``."""

import sys

from proxy.cli import main

sys.exit(main())
