"""``python -m learners.torchrun [torchrun options] script [flags]``: torchrun
(``torch.distributed.run``) whose failure is the processes' own: when a process exits with a
status, this exits with it (rank 0's, else the first failed rank's) and prints no launcher
traceback; the processes have already printed their one ``error:`` line (rank 0 alone,
``learners.launch``). ``scripts/run_local.sh -n=N`` uses it."""
from __future__ import annotations

import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import get_args_parser, run


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        run(args)
    except ChildFailedError as exc:
        rank, failure = min(exc.failures.items())
        status = failure.exitcode if failure.exitcode and failure.exitcode > 0 else 1
        if failure.exitcode is not None and failure.exitcode < 0:       # killed by a signal
            status = 128 - failure.exitcode
        print(f"run_local: rank {rank} exited with status {status}", file=sys.stderr)
        return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
