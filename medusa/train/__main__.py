"""`python -m medusa.train`: see `medusa.train.cli`."""

import sys

from common.cli import run_cli
from medusa.train.cli import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
