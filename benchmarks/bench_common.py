"""What the learner-comparison benchmarks share (imported as a sibling module: the scripts run
as ``python benchmarks/<name>.py``): flag values for one run in its own directory, one run per
configuration and seed, means over seeds."""
from __future__ import annotations

import os
import tempfile
from typing import Callable, Iterable, Sequence

from absl import flags

from learners.launch import define_flags as define_run_flags
from learners.launch import run
from utils.malloc import tune_malloc

tune_malloc()   # before any benchmark allocates (see utils/malloc.py)


def learner_values(helper_cls: type, model: str, outdir: str, seed: int, ft_epochs_rat: float,
                   paths: dict[str, Sequence[str]], extra: Sequence[str]) -> dict:
    """Flag values of one run from the pre-trained ``model``: every ``<prefix>_<kind>`` path
    of ``paths`` ({prefix: kinds}) inside ``outdir``, no TensorBoard, no latency."""
    fv = flags.FlagValues()
    define_run_flags(fv, helper_cls)
    own = [f"--{prefix}_{kind}={os.path.join(outdir, prefix + kind, 'model.ckpt')}"
           for prefix, kinds in paths.items() for kind in kinds]
    fv(["prog", f"--save_path_eval={model}",
        f"--save_path={os.path.join(outdir, 'models', 'model.ckpt')}", "--log_dir=",
        "--report_latency=false", f"--seed={seed}", f"--nb_epochs_rat={ft_epochs_rat}",
        *own, *extra])
    return fv.flag_values_dict()


def run_all(helper_cls: type, names: Iterable[str], seeds: Iterable[int],
            values: Callable[[str, str, int], dict]) -> dict[str, list[dict]]:
    """``{name: [report per seed]}``; ``values(name, outdir, seed)`` gives each run's flags.
    Seeds on the outside, names inside (every method's run of one seed, then the next seed),
    so drift of the machine's load hits every method's wall times alike."""
    names = list(names)
    reports: dict[str, list[dict]] = {name: [] for name in names}
    for seed in seeds:
        for name in names:
            with tempfile.TemporaryDirectory(prefix=f"bench_{name}_") as outdir:
                reports[name].append(run(helper_cls, values(name, outdir, seed)))
    return reports


def mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)


def fmt(value, spec: str) -> str:
    """``value`` formatted, or "-" when there is none."""
    return "-" if value is None else format(value, spec)
