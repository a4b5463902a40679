"""A worker of `imgclass train --devices N`: torchrun starts one per device (run.launch_workers), each training
the prepared run folder as its rank. A refusal prints one line and exits with code 2, as the command line does;
the launching process prints the run's summary."""
from __future__ import annotations

import sys

from ..core.errors import UserError
from ..core.version import STARTED
from .run import train


def main(run_dir: str) -> int:
    try:
        train(resume=run_dir, started=STARTED)
    except UserError as exc:
        print(f"imgclass: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
