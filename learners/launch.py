"""Glue for entry scripts: define every flag, then build configs and run the chosen learner.

Entry scripts (``nets/*_run.py``) are the only place flags are parsed: each is
``entry("<helper name>")``, which defines the flags, parses them and calls ``main(Helper,
<parsed flag values as a dict>)``. Everything below receives plain dataclasses.
"""
from __future__ import annotations

import dataclasses
import logging
import random
import os
import sys
from typing import Any

import numpy as np
import torch

from compression.quantization.int8_qat import Int8ExportUnavailable
from datasets.errors import DataError
from learners.config import LearnerConfig
from learners.pocketflow_flags import translate
from learners.registry import learner_class, learner_configs, list_learners
from learners.run.runner import Runner
from training.trainer import TrainingDivergedError
from deployment.verify import ParityFailure
from utils.checkpoint import CheckpointError
from utils.config import ConfigError, define_flags as define_dataclass_flags, flag_name, from_flag_dict
from utils import cpu_share
from utils.malloc import tune_malloc
from utils.multi_gpu_wrapper import DistributedSetupError, MultiGpuWrapper
from utils.stopping import Stopped, exit_status, signal_name, stop_signals, stopped_phase
from utils.run_lock import RunLock, RunLockedError, on_primary

log = logging.getLogger("pocketflow")

# Errors that are the user's to fix: printed as one clear message, exit status 2.
USER_ERRORS = (ConfigError, DataError, CheckpointError, DistributedSetupError,
               TrainingDivergedError, Int8ExportUnavailable, RunLockedError)


def define_flags(flag_values: Any, helper_cls: type) -> None:
    """Flags of the learner framework, of the helper and of every registered learner."""
    from absl import flags as absl_flags

    absl_flags.DEFINE_enum("learner", "full-prec", list_learners(), "compression learner",
                           flag_values=flag_values)
    define_dataclass_flags(LearnerConfig, flag_values)
    define_dataclass_flags(helper_cls.Config, flag_values)
    for config_cls, prefix in learner_configs().values():
        define_dataclass_flags(config_cls, flag_values, prefix)


def setup_logging(primary: bool, debug: bool = False) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if debug else logging.INFO if primary else logging.WARNING)
    log.propagate = False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build(helper_cls: type, values: dict, mgw: MultiGpuWrapper):
    """Configs from the flat flag values -> ``(runner, learner)``, ready (no training yet)."""
    cfg = from_flag_dict(LearnerConfig, values)
    helper = helper_cls(from_flag_dict(helper_cls.Config, values), seed=cfg.seed)
    own = learner_configs().get(cfg.learner)
    learner_class(cfg.learner)  # an unknown name lists the valid ones
    own_cfg = from_flag_dict(own[0], values, own[1]) if own else None
    runner = Runner(helper, cfg, mgw, run_meta=dict(values))
    return runner, runner.learner(cfg.learner, own_cfg)


def run(helper_cls: type, values: dict) -> dict:
    """Build everything from flag values and train or evaluate; returns the report/metrics.

    Training holds a lock on every output directory for the whole run (a second run on the
    same paths fails at once) and checks what can be checked before anything is written
    (``Runner.preflight``)."""
    mgw = MultiGpuWrapper.create(bool(values.get("enbl_multi_gpu")),
                                 values.get("mgw_backend", "auto"),
                                 float(values.get("mgw_timeout_s", 1800.0)))
    setup_logging(mgw.is_primary(), bool(values.get("debug")))
    try:
        seed_everything(int(values.get("seed", 0)))
        runner, learner = build(helper_cls, values, mgw)
        cpu_share.configure(runner.cfg.cpu_threads)
        if runner.cfg.exec_mode == "eval":
            return runner.evaluate(learner)
        return locked_run(runner, learner)
    finally:
        mgw.shutdown()


def locked_run(runner: Runner, learner) -> dict:
    """``runner.run(learner)`` holding the lock of its output folders, after the preflight."""
    lock = lock_outputs(runner.output_dirs(learner), runner.mgw)
    runner.lock = lock
    try:
        runner.preflight(learner)
        return runner.run(learner)
    finally:
        lock.release()


def lock_outputs(directories: list[str], mgw: MultiGpuWrapper) -> RunLock:
    """``directories`` locked by the primary process (every process raises the same
    RunLockedError when another run holds one)."""
    lock = RunLock(directories)
    on_primary(mgw, lock.acquire)
    return lock


def entry(helper: str | type) -> None:
    """An entry script: every flag of the framework, of ``helper`` (a name of
    ``nets.helpers`` or a helper class) and of every learner, parsed by absl; then the run."""
    from absl import app, flags

    from nets.helpers import resolve_helper
    from nets.pocketflow_helper import framework_helper

    tune_malloc()
    helper_cls = resolve_helper(helper) if isinstance(helper, str) else framework_helper(helper)
    define_flags(flags.FLAGS, helper_cls)
    try:                        # PocketFlow's renamed / retired flags (learners.pocketflow_flags)
        argv = translate(sys.argv, set(flags.FLAGS), helper_cls,
                         say=lambda line: launcher_rank() == 0 and print(line, file=sys.stderr))
    except ConfigError as exc:
        say_error(str(exc))
        raise SystemExit(2) from None
    app.run(lambda argv: main(helper_cls, flags.FLAGS.flag_values_dict(), argv), argv=argv)


def main(helper_cls: type, values: dict, argv: list | None = None) -> None:
    """``app.run`` target: one ``error:`` line and an exit status for every way a run ends
    short: a user error 2, a deployment file that fails parity 3 (after every output is
    written), SIGTERM 143 and SIGINT 130 (docs/reliability.md)."""
    if argv is not None and len(argv) > 1:
        raise SystemExit(f"unexpected positional arguments: {' '.join(argv[1:])}")
    try:
        with stop_signals():
            run(helper_cls, values)
    except (KeyboardInterrupt, Stopped) as exc:     # the locks are released on the way here
        where = stopped_phase(exc)
        print(f"error: stopped by {signal_name(exc)} during {where}; "
              f"{kept_after_stop(values, where)}", file=sys.stderr, flush=True)
        raise SystemExit(exit_status(exc)) from None
    except USER_ERRORS as exc:
        say_error(str(as_flags(exc, values.get("learner"))))
        raise SystemExit(2) from None
    except ParityFailure as exc:            # the outputs are written; the result is not good
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(3) from None


def say_error(message: str) -> None:
    """``error: message`` on stderr; under ``learners.torchrun`` (``PF_ERROR_DIR``) only rank 0
    prints, the others leave their message for the launcher, which prints those that differ."""
    directory, rank = os.environ.get("PF_ERROR_DIR"), launcher_rank()
    if directory and os.path.isdir(directory):
        with open(os.path.join(directory, f"rank{rank}.txt"), "w", encoding="utf-8") as handle:
            handle.write(message)
    if rank == 0 or not directory:
        print(f"error: {message}", file=sys.stderr, flush=True)


def launcher_rank() -> int:
    """This process's rank as the launcher set it (torchrun, horovodrun / MPI), 0 alone."""
    for name in ("RANK", "HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def kept_after_stop(values: dict, where: str) -> str:
    """What a stopped run leaves and how to go on."""
    if values.get("exec_mode") == "eval":
        return "nothing was written"
    if where == "selection" and values.get("learner") != "chn-pruned-rmt":
        return ("the selection is not saved per layer by this learner (chn-pruned-rmt's is): "
                "--resume starts it over; no lock is left")
    kept = {"selection": "the layers selected so far (selection.pt beside the checkpoint)",
            "search": "the roll-outs so far (search.pt beside the checkpoint)"}.get(
        where, "the last checkpoint written (every save_step steps, and each phase's result)")
    return f"kept: {kept}; no lock is left: rerun the same command with --resume to continue"


def as_flags(exc: Exception, learner: str | None) -> Exception:
    """A learner's ConfigError names its options by field (``--preserve_ratio``); on the
    command line they are the learner's prefixed flags (``--gd_preserve_ratio``)."""
    own = learner_configs().get(learner or "")
    if not isinstance(exc, ConfigError) or own is None:
        return exc
    cls, prefix = own
    return exc.renamed({f.name: flag_name(f, prefix) for f in dataclasses.fields(cls)})
