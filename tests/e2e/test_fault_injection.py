"""Fault injection: a run killed during a save, flipped bytes in saved files, a second run on a
held directory, a foreign or differently-configured checkpoint resumed, malformed data and
options. Each case asserts the message, the exit status (2 for the user's errors) and that
no existing file changed (SHA-256 of every file before and after).

The entry-script runs that do not depend on each other start together when the module starts
(each is a ~3 s interpreter start) and are collected by the tests.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets.cifar10 import RECORD_BYTES, Cifar10
from datasets.errors import DataError
from datasets.fmnist import IMAGE_MAGIC, LABEL_MAGIC
from learners.launch import run
from training.trainer import Trainer, TrainingDivergedError
from nets.resnet_at_digits import ModelHelper
from tests.conftest import REPO, digits_flag_values, finish, start_entry, tiny_digits_argv
from utils.checkpoint import CheckpointError, atomic_write, load_file, save_file
from compression.artifacts import load_model
from utils.run_lock import LOCK_NAME, RunLock

DIGITS = "resnet_at_digits_run.py"
PRETRAINED = Path("eval") / "model.ckpt"   # where tiny_pretrained's copy lands


# -- helpers ---------------------------------------------------------------------------------
def tree_hashes(root: Path) -> dict:
    """``{relative path: sha256}`` of every file under ``root``."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_user_error(res: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit status 2; stderr is one ``error:`` message (a data error goes on with the expected
    layout) holding every fragment; no traceback."""
    assert res.returncode == 2, (res.returncode, res.stderr[-3000:])
    assert res.stderr.startswith("error: ") and res.stderr.count("error:") == 1, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    for fragment in fragments:
        assert fragment in res.stderr, (fragment, res.stderr)


@pytest.fixture
def pf_log():
    """Records of the 'pocketflow' logger (its handlers and settings restored after)."""
    logger = logging.getLogger("pocketflow")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    records: list[str] = []

    class ListHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger.handlers[:] = [ListHandler()]
    logger.setLevel(logging.INFO)
    yield records
    logger.handlers[:], logger.level, logger.propagate = saved


def flip_tensor_bytes(path: Path, nb_bytes: int = 2000) -> None:
    """Invert ``nb_bytes`` bytes in the middle of the largest tensor's data inside ``path``
    (where the zip container does not check them)."""
    obj = torch.load(path, weights_only=True)
    state = obj.get("state_dict") or obj.get("model")
    largest = max(state.values(), key=lambda t: t.numel())
    payload = largest.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
    raw = bytearray(path.read_bytes())
    start = raw.find(payload)
    assert start >= 0 and len(payload) > 2 * nb_bytes
    middle = start + len(payload) // 2
    for i in range(middle, middle + nb_bytes):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


def write_idx(path: Path, magic: int, dims: list[int], data: bytes = b"") -> None:
    path.write_bytes(magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims) + data)


def fmnist_dir(root: Path, nb_train: int, nb_test: int, image_dims=None) -> Path:
    """Fashion-MNIST idx files (native format) with ``nb_train`` / ``nb_test`` random images;
    ``image_dims`` overrides the train image header's dims (the data stays as written)."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", nb_train), ("t10k", nb_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        dims = image_dims if (image_dims is not None and split == "train") else [n, 28, 28]
        write_idx(root / f"{split}-images-idx3-ubyte", IMAGE_MAGIC, dims, images.tobytes())
        write_idx(root / f"{split}-labels-idx1-ubyte", LABEL_MAGIC, [n],
                  (np.arange(n) % 10).astype(np.uint8).tobytes())
    return root


def cifar_bin_dir(root: Path, records: int, python_too: bool = False) -> Path:
    """CIFAR-10 binary batch files (native format) of ``records`` images each; with
    ``python_too`` the python-format pickles of other images sit beside them."""
    import pickle

    root.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, records, dtype=np.uint8)
        pixels = rng.integers(0, 256, (records, 3072), dtype=np.uint8)
        (root / f"{name}.bin").write_bytes(np.concatenate([labels[:, None], pixels], 1).tobytes())
        if python_too:
            with open(root / name, "wb") as handle:
                pickle.dump({b"data": pixels[:1], b"labels": [int(labels[0])]}, handle)
    return root


def outputs_with_files(root: Path, source: Path) -> Path:
    """An output tree with an existing model artifact, report and checkpoint (copies of the
    tiny pre-trained model's files) that a failing run must leave untouched."""
    for sub in ("models", "models_eval"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy(source, root / "models_eval" / "model.ckpt")
    shutil.copy(source, root / "models" / "model.ckpt")
    (root / "models_eval" / "report.json").write_text('{"learner": "full-prec"}\n')
    return root


def run_worker(mode: str, *args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    worker = REPO / "tests" / "workers" / "fault_worker.py"
    return subprocess.Popen([sys.executable, str(worker), mode, *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# -- the entry-script runs, started together -------------------------------------------------
@pytest.fixture(scope="module")
def cases(tmp_path_factory, tiny_pretrained):
    base = tmp_path_factory.mktemp("faults")
    tiny_pretrained(base)
    source = base / PRETRAINED
    started, roots, before = {}, {}, {}

    def start(name: str, *args: str, script: str = DIGITS, root: Path | None = None,
              worker: str | None = None) -> None:
        root = root or outputs_with_files(base / name, source)
        roots[name], before[name] = root, tree_hashes(root)
        if worker:
            started[name] = run_worker(worker, *tiny_digits_argv(root), *args, cwd=base)
        else:
            started[name] = start_entry(script, *tiny_digits_argv(root), *args, cwd=base)

    # a flipped artifact evaluated; a flipped pre-trained model compressed
    flipped = outputs_with_files(base / "flipped", source)
    flip_tensor_bytes(flipped / "models_eval" / "model.ckpt")
    start("flipped_eval", "--exec_mode=eval", root=flipped)
    flipped2 = outputs_with_files(base / "flipped2", source)
    flip_tensor_bytes(flipped2 / "models_eval" / "model.ckpt")
    start("flipped_pretrained", "--learner=weight-sparse", "--ws_prune_ratio=0.5",
          f"--ws_save_path={flipped2 / 'ws' / 'model.ckpt'}",
          f"--ws_save_path_eval={flipped2 / 'ws_eval' / 'model.ckpt'}", root=flipped2)
    # a checkpoint of another learner at full-prec's checkpoint path, resumed
    foreign = outputs_with_files(base / "foreign", source)
    model = load_file(str(source), kind="model")["state_dict"]
    save_file(str(foreign / "models" / "model.ckpt"), "checkpoint",
              {"model": model, "step": 40, "tag": "finetune", "meta": {"learner": "chn-pruned-rmt"}})
    start("foreign", "--resume", root=foreign)
    # a directory this test process holds
    held = outputs_with_files(base / "held", source)
    lock = RunLock([str(held / "models"), str(held / "models_eval")]).acquire()
    start("held", root=held)
    # malformed data and options
    fm = base / "fmnist"
    fm_args = ["--log_dir=", "--report_latency=False", "--batch_size=32"]
    for name, directory in (("fmnist_overflow", fmnist_dir(fm / "overflow", 1, 1,
                                                           image_dims=[2 ** 32 - 1] * 3)),
                            ("fmnist_empty", fmnist_dir(fm / "empty", 0, 0)),
                            ("fmnist_small", fmnist_dir(fm / "small", 10, 10))):
        root = outputs_with_files(base / name, source)
        roots[name], before[name] = root, tree_hashes(root)
        started[name] = start_entry("../examples/convnet_at_fmnist_run.py", *fm_args,
                                    f"--data_dir_local={directory}",
                                    f"--save_path={root / 'models' / 'model.ckpt'}",
                                    f"--save_path_eval={root / 'models_eval' / 'model.ckpt'}",
                                    cwd=base)
    evil = base / "evil.yaml"
    evil.write_text("version: 1\npruners:\n  p1:\n    class: AutomatedGradualPruner\n"
                    "    initial_sparsity: !!python/object/apply:os.system ['touch pwned']\n"
                    "    final_sparsity: 0.5\n    weights: [conv1.weight]\n"
                    "policies:\n  - pruner: {instance_name: p1}\n"
                    "    starting_epoch: 0\n    ending_epoch: 1\n    frequency: 1\n")
    start("yaml_tag", "--learner=schedule", f"--compress={evil}")
    start("negative_lr", "--lrn_rate_init=-1")
    cut = cifar_bin_dir(base / "cifar_cut", records=3)
    root = outputs_with_files(base / "cifar", source)
    roots["cifar_cut"], before["cifar_cut"] = root, tree_hashes(root)
    started["cifar_cut"] = start_entry("resnet_at_cifar10_run.py", "--log_dir=",
                                       "--report_latency=False", f"--data_dir_local={cut}",
                                       f"--save_path={root / 'models' / 'model.ckpt'}",
                                       f"--save_path_eval={root / 'models_eval' / 'model.ckpt'}",
                                       cwd=base)
    # killed in the middle of its second checkpoint save (steps 2, 4, ...)
    killed = base / "killed"
    start("killed", "--save_step=2", root=killed, worker="kill-in-save:2")
    results = {}

    def result(name: str) -> tuple[subprocess.CompletedProcess, Path, dict]:
        if name not in results:
            results[name] = finish(started[name])
        return results[name], roots[name], before[name]

    yield result, base
    lock.release()
    for proc in started.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


# -- 1. killed during a save, then resumed ---------------------------------------------------
def test_kill_during_save_keeps_the_previous_checkpoint_and_resume_cleans_up(cases):
    result, _ = cases
    res, root, _ = result("killed")
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    ckpt = root / "models" / "model.ckpt"
    assert load_file(str(ckpt), kind="checkpoint")["step"] == 2     # the save before the kill
    temps = [p for p in (root / "models").iterdir() if p.name.startswith(".tmp-")]
    assert len(temps) == 1 and temps[0].stat().st_size > 0          # the half-written file
    values = digits_flag_values(*tiny_digits_argv(root), "--save_step=2")
    report = run(ModelHelper, {**values, "resume": True})
    assert not [p for p in (root / "models").iterdir() if p.name.startswith(".tmp-")]
    assert not (root / "models" / LOCK_NAME).exists()
    assert load_file(str(ckpt), kind="checkpoint")["step"] == 7
    assert 0.0 < report["accuracy"]["full"] <= 1.0


# -- 2. integrity ------------------------------------------------------------------------------
def test_flipped_bytes_are_refused_not_evaluated(cases, tmp_path):
    result, base = cases
    res, root, before = result("flipped_eval")
    path = root / "models_eval" / "model.ckpt"
    assert_user_error(res, f"{path} failed its integrity check", "corrupt or was modified")
    assert tree_hashes(root) == before
    # control: without the check the flipped file loads and runs (what happened before)
    obj = torch.load(path, weights_only=True)
    good = load_file(str(base / PRETRAINED))
    assert any(not torch.equal(obj["state_dict"][k], good["state_dict"][k]) for k in good["state_dict"])
    with pytest.raises(CheckpointError, match="failed its integrity check"):
        load_model(str(path))


def test_flipped_pretrained_model_is_refused_before_compression(cases):
    result, _ = cases
    res, root, before = result("flipped_pretrained")
    assert_user_error(res, f"{root / 'models_eval' / 'model.ckpt'} failed its integrity check")
    assert tree_hashes(root) == before and not (root / "ws_eval").exists()


def test_flipped_checkpoint_is_refused_on_resume(tiny_digits_values, tmp_path):
    run(ModelHelper, tiny_digits_values)
    ckpt = Path(tiny_digits_values["save_path"])
    flip_tensor_bytes(ckpt)
    before = tree_hashes(tmp_path)
    with pytest.raises(CheckpointError, match=f"{ckpt} failed its integrity check"):
        run(ModelHelper, {**tiny_digits_values, "resume": True})
    assert tree_hashes(tmp_path) == before


def test_every_saved_structure_is_covered_by_the_digest(tmp_path):
    path = tmp_path / "x.ckpt"
    save_file(str(path), "checkpoint", {"step": 3, "meta": {"learner": "full-prec", "seed": 0},
                                        "w": torch.arange(6.0)})
    saved = torch.load(path, weights_only=True)
    # a number, a string and one tensor element changed, each re-saved with the old digest
    for change in (lambda o: o.update(step=4), lambda o: o["meta"].update(learner="channel"),
                   lambda o: o["w"].__setitem__(2, 7.0)):
        obj = torch.load(path, weights_only=True)
        change(obj)
        bad = tmp_path / "bad.ckpt"
        torch.save(obj, bad)
        with pytest.raises(CheckpointError, match="failed its integrity check"):
            load_file(str(bad))
    obj = dict(saved)
    del obj["sha256"]
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match="records no SHA-256"):
        load_file(str(path))
    obj["version"] = 1                                   # files written before checksums
    torch.save(obj, path)
    assert load_file(str(path))["step"] == 3


# -- 3. a second run on a held directory ----------------------------------------------------
def test_second_run_on_a_held_directory_fails_at_once(cases):
    result, _ = cases
    res, root, before = result("held")
    assert_user_error(res, f"{root / 'models'} is in use by another run (pid {os.getpid()}:",
                      "--save_path")
    assert tree_hashes(root) == before


def test_second_run_names_the_running_run(tmp_path, tiny_pretrained):
    tiny_pretrained(tmp_path)
    root = outputs_with_files(tmp_path / "out", tmp_path / PRETRAINED)
    first = run_worker("hold:60", *tiny_digits_argv(root), cwd=tmp_path)
    try:
        line = first.stdout.readline()
        assert line.startswith("LOCKED "), (line, first.stderr.read() if first.poll() else "")
        pid = int(line.split()[1])
        before = tree_hashes(root)
        second = finish(start_entry(DIGITS, *tiny_digits_argv(root), cwd=tmp_path))
        assert_user_error(second, "is in use by another run (pid %d: " % pid, "fault_worker.py")
        assert tree_hashes(root) == before
    finally:
        first.kill()
        first.communicate()
    # the kernel dropped the killed run's lock: the next run goes ahead
    report = run(ModelHelper, digits_flag_values(*tiny_digits_argv(root)))
    assert report["learner"] == "full-prec"


def test_lock_release_leaves_nothing(tmp_path):
    lock = RunLock([str(tmp_path / "a" / "b"), str(tmp_path / "c")]).acquire()
    assert (tmp_path / "a" / "b" / LOCK_NAME).exists()
    lock.release()
    assert list(tmp_path.iterdir()) == []                 # created directories removed too
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep.txt").write_text("x")
    RunLock([str(tmp_path / "d")]).acquire().release()
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["keep.txt"]


# -- 4. resume: another learner, other settings ---------------------------------------------
def test_foreign_checkpoint_is_refused_naming_both_learners(cases):
    result, _ = cases
    res, root, before = result("foreign")
    assert_user_error(res, f"--resume: {root / 'models' / 'model.ckpt'} holds the state of learner "
                           "'chn-pruned-rmt', not of this run's learner 'full-prec'",
                      "run without --resume to start over")
    assert tree_hashes(root) == before


def test_resume_with_other_settings_says_what_differs(tiny_digits_values, tmp_path):
    run(ModelHelper, tiny_digits_values)
    before = tree_hashes(tmp_path)
    with pytest.raises(CheckpointError) as info:
        run(ModelHelper, {**tiny_digits_values, "resume": True, "seed": 1, "lrn_rate_init": 0.05})
    assert str(info.value) == (
        f"--resume: {tiny_digits_values['save_path']} was written with other settings "
        "(--lrn_rate_init=0.1 there, 0.05 now; --seed=0 there, 1 now); resume with the saved "
        "values, or run without --resume to start over (the file will be replaced)")
    assert tree_hashes(tmp_path) == before
    # options that only say how the run goes may change (logging, checks, exports)
    report = run(ModelHelper, {**tiny_digits_values, "resume": True, "summ_step": 3,
                               "nan_check_step": 1, "export_format": "none"})
    assert report["learner"] == "full-prec"


# -- 5. stale files, temp files, file modes --------------------------------------------------
def test_rerun_removes_exports_it_did_not_rewrite(tiny_digits_values, tmp_path, capsys):
    values = {**tiny_digits_values, "export_format": "onnx"}
    first = run(ModelHelper, values)
    stem = tmp_path / "models_eval" / "model"
    assert Path(f"{stem}.onnx").exists() and f"{stem}.onnx" in first["files"]
    assert first["files"][f"{stem}.onnx"]["sha256"] == hashlib.sha256(
        Path(f"{stem}.onnx").read_bytes()).hexdigest()
    dead = tmp_path / "models" / ".tmp-999999999-model.ckpt"         # no such pid
    live = tmp_path / "models" / f".tmp-{os.getppid()}-model.ckpt"  # a live process's
    dead.write_bytes(b"x" * 100)
    live.write_bytes(b"y")
    capsys.readouterr()
    second = run(ModelHelper, {**values, "export_format": "none"})
    messages = capsys.readouterr().out
    assert not Path(f"{stem}.onnx").exists()
    assert list(second["files"]) == [f"{stem}.ckpt"]
    on_disk = json.loads((tmp_path / "models_eval" / "report.json").read_text())
    assert on_disk["files"] == second["files"] and "onnx" not in on_disk
    assert not dead.exists() and live.exists()
    assert f"removed {stem}.onnx, written by the previous run of this artifact" in messages
    assert f"removed {dead}, a temp file left by an interrupted write" in messages


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_saved_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write(str(tmp_path / "f.bin"), lambda handle: handle.write(b"data"))
        save_file(str(tmp_path / "m.ckpt"), "model", {"w": torch.ones(2)})
    finally:
        os.umask(old)
    for name in ("f.bin", "m.ckpt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask


# -- 6. malformed data and options: one error line, nothing overwritten ----------------------
@pytest.mark.parametrize("name, fragments", [
    ("fmnist_overflow", ["train-images-idx3-ubyte is malformed: 800 bytes, dims "
                         "[4294967295, 4294967295, 4294967295] need "]),
    ("fmnist_empty", ["train-images-idx3-ubyte is malformed: the header counts 0 items"]),
    ("fmnist_small", ["the training set has 10 samples, fewer than one batch of --batch_size=32"]),
    ("yaml_tag", ["evil.yaml:5:23: invalid YAML: could not determine a constructor for the tag "
                  "'tag:yaml.org,2002:python/object/apply:os.system'"]),
    ("negative_lr", ["--lrn_rate_init: must be positive, got -1.0"]),
    ("cifar_cut", ["data_batch_1.bin is malformed: 3 images, expected 10000 per batch file",
                   "--cifar_records_per_file"]),
])
def test_malformed_input_is_one_error_line_and_changes_nothing(cases, name, fragments):
    result, base = cases
    res, root, before = result(name)
    assert_user_error(res, *fragments)
    assert tree_hashes(root) == before
    assert not (base / "pwned").exists()


class EmptyEval(ModelHelper):
    def build_dataset_eval(self):
        return torch.utils.data.TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))


def test_an_empty_evaluation_set_is_refused_before_any_write(tiny_digits_values, tmp_path):
    with pytest.raises(DataError, match="the evaluation set is empty"):
        run(EmptyEval, tiny_digits_values)
    assert list(tmp_path.iterdir()) == []          # not even the output folders


def test_cifar_record_count_and_layout_are_logged(tmp_path, pf_log):
    data = cifar_bin_dir(tmp_path / "c", records=3, python_too=True)
    assert len(Cifar10(str(data), "train", augment=False)) == 15
    with pytest.raises(DataError, match="3 images, expected 10000"):
        Cifar10(str(data), "train", augment=False, records_per_file=10000)
    assert len(Cifar10(str(data), "test", augment=False, records_per_file=3)) == 3
    messages = pf_log
    assert f"CIFAR-10 train: reading the binary files in {data}/ (ignoring the python files in " \
           f"{data}/)" in messages
    assert "CIFAR-10 train: 15 images from 5 files" in messages
    assert (RECORD_BYTES * 3) == (data / "data_batch_1.bin").stat().st_size


# -- 7. NaN and inf: the trainer names the first bad step ------------------------------------
class _Toy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x * self.w


@pytest.mark.parametrize("bad_step, check_every, stopped", [(7, 5, 10), (5, 5, 5), (3, 0, 12),
                                                             (11, 4, 12)])
def test_trainer_stops_within_one_check_of_the_first_non_finite_loss(bad_step, check_every, stopped):
    model = _Toy()
    batches = [(torch.full((2,), float(i + 1)), torch.zeros(2)) for i in range(12)]

    def loss_fn(labels, outputs):
        value = outputs.mean() * 0 + (float("inf") if outputs[0] == bad_step else 1.0)
        return value * model.w.sum(), {}

    seen = []
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.0), loss_fn, batches, 12,
                      torch.device("cpu"), check_every=check_every,
                      reduce=lambda flags: seen.append(len(flags)) or flags)
    with pytest.raises(TrainingDivergedError) as info:
        trainer.fit()
    assert info.value.step == bad_step and trainer.step == stopped
    assert str(info.value).startswith(f"the training loss became NaN or infinite at step {bad_step}; "
                                      f"stopped at step {stopped}")
    assert seen and all(n <= (check_every or 12) + 1 for n in seen)  # one flag per step + weights


def test_lasso_baseline_solves_the_same_problem_from_the_mapped_start():
    """The benchmark's scikit-learn baseline (benchmarks/lasso_baseline.py): Lasso(alpha) has
    ISTA's solution at gamma = alpha n / s, and the exact-count search from the mapped start
    keeps the same channels as select_exact."""
    import importlib.util

    from compression.selection.ista import ista, normalised_problem, select_exact

    spec = importlib.util.spec_from_file_location("lasso_baseline",
                                                  REPO / "benchmarks" / "lasso_baseline.py")
    baseline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(baseline)
    gen = torch.Generator().manual_seed(0)
    design = torch.randn(400, 12, generator=gen, dtype=torch.float64)
    target = design[:, :5] @ torch.tensor([3.0, -2.0, 1.5, 1.0, -0.5], dtype=torch.float64) \
        + 0.1 * torch.randn(400, generator=gen, dtype=torch.float64)
    gram, corr, scale = normalised_problem(design, target)
    from sklearn.linear_model import Lasso

    alpha = baseline.alpha_for_gamma(0.05, float(scale), 400)
    coef = Lasso(alpha=alpha, fit_intercept=False, tol=1e-10, max_iter=100000).fit(
        design.numpy(), target.numpy()).coef_
    beta = ista(gram, corr, torch.tensor([0.05]), 1.0, 5000)[0]
    assert np.allclose(coef, beta.numpy(), atol=1e-6)
    keep, info = select_exact(gram, corr, 4)
    keep_sk, fits = baseline.sklearn_select(design, target, 4, baseline.alpha_for_gamma(
        0.1, float(scale), 400), baseline.alpha_for_gamma(1e-8, float(scale), 400))
    assert torch.equal(keep, keep_sk) and keep.tolist() == [0, 1, 2, 3]
    assert fits < 40
