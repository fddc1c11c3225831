"""`python -m proofs`: run the executable derivations (the same as `dpo-ref prove`)."""

import sys

from .cli import main

sys.exit(main())
