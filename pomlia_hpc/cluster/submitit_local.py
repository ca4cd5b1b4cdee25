"""Entry point of the local backend's job controller (see
:mod:`pomlia_hpc.cluster.submitit_controller`): ``python -m pomlia_hpc.cluster.submitit_local
FOLDER`` runs submitit's controller of the job in FOLDER and ends with status 130, without a
traceback, when it is interrupted (``pomlia jobs cancel``, Ctrl-C)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str]) -> int:
    """Run the controller of the job in ``argv[1]``; 130 when interrupted (cancelled)."""
    from submitit.local.local import Controller

    if len(argv) != 2:
        print(
            "usage: python -m pomlia_hpc.cluster.submitit_local <submitit folder>", file=sys.stderr
        )
        return 2
    try:
        Controller(Path(argv[1])).run()  # its own `finally` stops the tasks
    except KeyboardInterrupt:
        return 130  # cancelled: the submitter records and reports it
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
