"""`python -m lerpray ...`: the `lerpray` command from the installed package (e.g. a cluster job's entrypoint)."""

import sys

from lerpray.cli import main

sys.exit(main())
