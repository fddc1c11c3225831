import sys

from dpo_ref.cli import main

sys.exit(main())
