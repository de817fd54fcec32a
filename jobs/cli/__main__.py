"""`python -m jobs.cli ...`: `streetblur ...` with this interpreter."""

import sys

from jobs.cli.main import main

sys.exit(main())
