"""``python -m learners.torchrun [torchrun options] script [flags]``: torchrun
(``torch.distributed.run``) whose failure is the processes' own: when a process fails, this
exits with the status of the first one that did and prints no launcher traceback. Rank 0
prints its one ``error:`` line itself; the other ranks leave theirs in ``PF_ERROR_DIR``
(``learners.launch``), printed here when they differ from rank 0's (an error of one rank
alone is never lost, the same error of every rank is said once).
``scripts/run_local.sh -n=N`` uses it."""
from __future__ import annotations

import os
import sys
import tempfile

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import get_args_parser, run


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pf-errors-") as errors:
        os.environ["PF_ERROR_DIR"] = errors
        try:
            run(args)
        except ChildFailedError as exc:
            rank, failure = exc.get_first_failure()
            code = failure.exitcode
            status = 128 - code if code is not None and code < 0 else (code or 1)
            said = _message(errors, 0)
            for other in sorted(exc.failures):
                message = _message(errors, other)
                if other and message and message != said:
                    print(f"error (rank {other}): {message}", file=sys.stderr)
            print(f"run_local: rank {rank} exited first, with status {status}", file=sys.stderr)
            return status
    return 0


def _message(directory: str, rank: int) -> str | None:
    path = os.path.join(directory, f"rank{rank}.txt")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8", errors="replace") as handle:
        return handle.read().strip()


if __name__ == "__main__":
    sys.exit(main())
