"""``python -m grpo ...``: the command line, e.g. ``torchrun --nproc-per-node 2 -m grpo train``."""

import sys

from grpo.cli import main

sys.exit(main())
