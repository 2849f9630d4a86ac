"""scripts/reproduce.sh and scripts/reproduce.tsv: one command per published PocketFlow result.

Every row's commands (its full-precision model, then the row) must parse on its entry script
exactly as the entry script parses them, every row must cite a PocketFlow file (or PR #220) that
holds its number, and one CIFAR-10 row runs end to end on tiny data.

The sources are checked against a git directory of Tencent/PocketFlow named by
``$POCKETFLOW_GIT_DIR`` (one holding commit 53b82cb); without it those checks are skipped.
"""
from __future__ import annotations

import csv
import os
import re
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from absl import flags

from learners.config import LearnerConfig
from learners.launch import define_flags
from learners.pocketflow_flags import translate
from learners.registry import learner_configs
from nets.helpers import resolve_helper
from utils.config import from_flag_dict

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "reproduce.sh"
TABLE = REPO / "scripts" / "reproduce.tsv"
COLUMNS = ["row_id", "entry", "flags", "needs", "published", "source"]
PR_220 = "https://github.com/Tencent/PocketFlow/pull/220"
COMMIT = "53b82cb"
SOURCE = re.compile(rf"^(?P<path>[\w./-]+\.md)@{COMMIT}#(?P<anchor>[a-z0-9-]+)$")
NET_FLAGS = ("resnet_size", "mobilenet_version", "mobilenet_depth_mult")


def _rows() -> list[dict]:
    with open(TABLE, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        assert header == COLUMNS
        rows = [dict(zip(COLUMNS, line)) for line in reader if line]
    for row in rows:
        assert all(row.get(c) for c in COLUMNS), row
    return rows


ROWS = _rows()
BY_ID = {row["row_id"]: row for row in ROWS}


def _reproduce(*args: str, cwd: Path, shell: str = "bash", models: Path | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "PYTHON": sys.executable}
    env.pop("REPRO_MODELS_DIR", None)
    if models is not None:
        env["REPRO_MODELS_DIR"] = str(models)
    return subprocess.run([shell, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@lru_cache(maxsize=None)
def _helper_name(entry: str) -> str:
    """The helper an entry script passes to ``learners.launch.entry``."""
    found = re.findall(r"""\bentry\(\s*["']([\w.:]+)["']\s*\)""", (REPO / entry).read_text())
    assert len(found) == 1, f"{entry}: expected one entry(\"<helper>\") call, found {found}"
    return found[0]


def _parse(entry: str, argv: list[str]) -> dict:
    """``argv`` parsed as ``learners.launch.entry`` parses it on ``entry``: PocketFlow's names
    translated, then absl (an unknown flag raises), then the configs built (bad values raise)."""
    helper_cls = resolve_helper(_helper_name(entry))
    fv = flags.FlagValues()
    define_flags(fv, helper_cls)
    notes: list[str] = []
    translated = translate([entry, *argv], set(fv), helper_cls, say=notes.append)
    assert not notes, f"PocketFlow names where this project has native ones: {notes}"
    assert translated == [entry, *argv]
    leftover = fv(translated)
    assert leftover == [entry], f"positional arguments: {leftover[1:]}"
    values = fv.flag_values_dict()
    cfg = from_flag_dict(LearnerConfig, values)
    from_flag_dict(helper_cls.Config, values)
    own = learner_configs().get(cfg.learner)
    if own is not None:
        from_flag_dict(own[0], values, own[1])
    return values


def _commands(stdout: str) -> list[list[str]]:
    return [shlex.split(line) for line in stdout.splitlines() if line.strip()]


# -- the table ---------------------------------------------------------------------------------
def test_row_ids_are_unique_and_needs_name_full_precision_rows_of_the_same_net():
    ids = [row["row_id"] for row in ROWS]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})
    for row in ROWS:
        assert re.fullmatch(r"[a-z0-9][a-z0-9.-]*", row["row_id"]), row["row_id"]
        assert (REPO / row["entry"]).is_file(), row["entry"]
        assert not re.search(r"save_path|log_dir", row["flags"]), row["row_id"]  # the script's
        if row["needs"] == "-":
            assert "--learner=full-prec" in row["flags"].split(), row["row_id"]
            continue
        need = BY_ID.get(row["needs"])
        assert need is not None, f"{row['row_id']} needs unknown row {row['needs']!r}"
        assert need["needs"] == "-" and need["entry"] == row["entry"], row["row_id"]
        mine, theirs = row["flags"].split(), need["flags"].split()
        for name in NET_FLAGS:
            assert ([f for f in mine if f.startswith(f"--{name}=")]
                    == [f for f in theirs if f.startswith(f"--{name}=")]), (row["row_id"], name)


def test_every_published_row_of_the_brief_is_covered():
    ids = set(BY_ID)
    for net in ("lenet", "resnet20", "resnet32", "resnet44", "resnet56"):
        assert f"cifar10-{net}-full" in ids
    for net in ("resnet18", "resnet50", "mobilenetv1", "mobilenetv2"):
        assert f"ilsvrc12-{net}-full" in ids and f"ilsvrc12-{net}-uqtf-8bit" in ids
    for ratio in ("0.44", "0.52", "0.65", "0.77"):
        assert BY_ID[f"cifar10-resnet20-cpr-{ratio}-dst"]["source"] == PR_220
    for ratio in ("0.2", "0.3", "0.4", "0.5", "0.6", "0.7"):
        assert {f"ilsvrc12-resnet18-cpr-{ratio}", f"ilsvrc12-resnet18-cpr-{ratio}-dst"} <= ids
    for kept in ("0.5", "0.4", "0.3", "0.2"):
        for kind in ("uniform", "rl", "rl-gft"):
            assert f"ilsvrc12-mobilenetv1-cp-{kind}-{kept}" in ids
    for sparsity in ("0.5", "0.75", "0.9", "0.95"):
        assert {f"ilsvrc12-mobilenetv1-ws-agp-{sparsity}",
                f"ilsvrc12-mobilenetv1-ws-rl-{sparsity}-dst"} <= ids


def test_every_source_is_pr_220_or_a_pocketflow_file_holding_the_number():
    for row in ROWS:
        if row["source"] == PR_220:
            continue
        match = SOURCE.match(row["source"])
        assert match, f"{row['row_id']}: source {row['source']!r} is neither {PR_220} nor " \
                      f"<path>@{COMMIT}#<section>"
    git_dir = os.environ.get("POCKETFLOW_GIT_DIR")
    if not git_dir or not Path(git_dir).exists():
        pytest.skip("set POCKETFLOW_GIT_DIR to a git directory of Tencent/PocketFlow")
    for row in ROWS:
        match = SOURCE.match(row["source"])
        if match is None:
            continue
        shown = subprocess.run(["git", f"--git-dir={git_dir}", "show",
                                f"{COMMIT}:{match['path']}"], capture_output=True, text=True)
        assert shown.returncode == 0, f"{row['row_id']}: {match['path']} not at {COMMIT}"
        text = shown.stdout
        anchors = {re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
                   for line in text.splitlines() if line.startswith("#")}
        assert match["anchor"] in anchors, (row["row_id"], sorted(anchors))
        numbers = re.findall(r"\d+\.\d+", row["published"])
        assert numbers, row
        for number in numbers:      # every decimal figure quoted is in the cited file
            assert re.search(rf"(?<![\d.]){re.escape(number)}\s*%", text), (row["row_id"], number)


def test_the_docs_table_has_every_row_with_its_figure_and_command():
    text = (REPO / "docs" / "reproduce.md").read_text(encoding="utf-8")
    lines = {line.split("|")[1].strip(" `"): line for line in text.splitlines()
             if line.startswith("| `")}
    assert set(lines) == set(BY_ID)
    for row in ROWS:
        line = lines[row["row_id"]]
        assert f"| {row['published']} |" in line
        assert f"`scripts/reproduce.sh {row['row_id']}`" in line


# -- the script --------------------------------------------------------------------------------
@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_list_names_exactly_the_tables_rows(tmp_path, shell):
    res = _reproduce("--list", cwd=tmp_path, shell=shell)
    assert res.returncode == 0, res.stderr
    listed = [line.split()[0] for line in res.stdout.splitlines()]
    assert listed == [row["row_id"] for row in ROWS]
    for line, row in zip(res.stdout.splitlines(), ROWS):
        assert line.endswith(row["published"])


def test_unknown_row_exits_2_with_one_error_line_naming_the_rows(tmp_path):
    res = _reproduce("cifar10-resnet99-full", "--dry-run", cwd=tmp_path)
    assert res.returncode == 2
    assert res.stdout == ""
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown row 'cifar10-resnet99-full'")
    assert all(f" {row['row_id']}" in lines[0] for row in ROWS)
    assert not (tmp_path / "models").exists()


def test_no_row_prints_the_usage_and_exits_2(tmp_path):
    res = _reproduce(cwd=tmp_path)
    assert res.returncode == 2 and "scripts/reproduce.sh ROW" in res.stderr


@pytest.mark.parametrize("row_id", [row["row_id"] for row in ROWS])
def test_dry_run_commands_parse_on_their_entry_script(tmp_path, row_id):
    row = BY_ID[row_id]
    res = _reproduce(row_id, "--dry-run", "-n=8", "--data_dir_local=./data/x", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert not (tmp_path / "models").exists()          # a dry run runs nothing
    commands = _commands(res.stdout)
    steps = [row_id] if row["needs"] == "-" else [row["needs"], row_id]
    assert len(commands) == len(steps), res.stdout
    models = Path("./models")
    for step, argv in zip(steps, commands):
        assert argv[0] == str(REPO / "scripts" / "run_local.sh")
        assert argv[1] == str(REPO / BY_ID[step]["entry"])
        assert "-n=8" in argv and argv[-1] == "--data_dir_local=./data/x"   # passed through
        flag_argv = [a for a in argv[2:] if a != "-n=8"]
        assert flag_argv[:len(BY_ID[step]["flags"].split())] == BY_ID[step]["flags"].split()
        values = _parse(BY_ID[step]["entry"], flag_argv)
        # outputs: this step's own folder; a compression step reads its needs' full model
        own = models / step
        outputs = {name: value for name, value in values.items()
                   if "save_path" in name and name not in ("save_path", "save_path_eval")}
        if values["learner"] == "full-prec":
            assert Path(values["save_path"]).parent.parent == own
            assert Path(values["save_path_eval"]) == own / "eval" / "model.ckpt"
        else:
            assert Path(values["save_path_eval"]) == models / row["needs"] / "eval" / "model.ckpt"
            prefix = learner_configs()[values["learner"]][1]
            mine = {n: v for n, v in outputs.items() if n.startswith(f"{prefix}_")}
            assert mine and all(Path(v).parent.parent == own for v in mine.values()), mine
        assert Path(values["log_dir"]) == own / "logs"


def test_dry_run_skips_a_complete_full_model_but_not_an_incomplete_one(tmp_path):
    row = BY_ID["cifar10-resnet20-cpr-0.44-dst"]
    eval_dir = tmp_path / "m" / row["needs"] / "eval"
    eval_dir.mkdir(parents=True)
    (eval_dir / "model.ckpt").write_bytes(b"x")
    (eval_dir / "INCOMPLETE").write_text("")
    res = _reproduce(row["row_id"], "--dry-run", cwd=tmp_path, models=tmp_path / "m")
    assert res.returncode == 0 and len(_commands(res.stdout)) == 2
    (eval_dir / "INCOMPLETE").unlink()
    res = _reproduce(row["row_id"], "--dry-run", cwd=tmp_path, models=tmp_path / "m")
    assert res.returncode == 0, res.stderr
    (command,) = _commands(res.stdout)
    assert "--learner=chn-pruned-rmt" in command
    assert f"--save_path_eval={eval_dir / 'model.ckpt'}" in command
    assert f"note: {row['needs']}: complete model" in res.stderr


def test_dry_run_from_the_repository_prints_relative_commands():
    res = _reproduce("cifar10-lenet-full", "--dry-run", cwd=REPO)
    assert res.returncode == 0, res.stderr
    (command,) = _commands(res.stdout)
    assert command[:3] == ["scripts/run_local.sh", "nets/lenet_at_cifar10_run.py",
                           "--learner=full-prec"]


# -- one row end to end ------------------------------------------------------------------------
def _write_cifar_bin(root: Path, n: int) -> None:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, n).astype(np.uint8)
        pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        np.concatenate([labels[:, None], pixels], axis=1).tofile(root / f"{name}.bin")


def test_a_cifar10_row_runs_its_full_model_then_the_row(tmp_path):
    """ResNet-20 full-prec (10 steps) then chn-pruned-rmt 0.44 with distillation, on 80 random
    images: both models written where the table says, exit 0 (about 30 s on 2 CPU cores)."""
    _write_cifar_bin(tmp_path / "cifar", n=16)
    row = "cifar10-resnet20-cpr-0.44-dst"
    res = _reproduce(row, "--data_dir_local=cifar", "--cifar_records_per_file=0",
                     "--nb_epochs_rat=0.004", "--batch_size=16", "--batch_size_eval=16",
                     "--resnet_size=20", "--report_latency=False", "--export_format=none",
                     "--cpr_nb_smpls=32", "--log_dir=", cwd=tmp_path, timeout=300)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    full = tmp_path / "models" / "cifar10-resnet20-full" / "eval"
    pruned = tmp_path / "models" / row / "eval"
    for folder in (full, pruned):
        assert (folder / "model.ckpt").is_file() and (folder / "report.json").is_file()
        assert not (folder / "INCOMPLETE").exists()
    assert "reproduce: cifar10-resnet20-full" in res.stderr
    assert f"reproduce: {row} (PocketFlow: 91.42 % top-1 at 50 % FLOPs)" in res.stderr
    assert (full / "model.ckpt").stat().st_size > (pruned / "model.ckpt").stat().st_size
    # the full model exists now: a second dry run only compresses
    again = _reproduce(row, "--dry-run", cwd=tmp_path)
    assert again.returncode == 0 and len(_commands(again.stdout)) == 1


def _write_ilsvrc_folders(root: Path) -> None:
    """Two classes of three small JPEGs each in train/ and val/ (the folder layout)."""
    from PIL import Image

    for split in ("train", "val"):
        for k, wnid in enumerate(("n01440764", "n01443537")):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (40, 30), (80 * k, 20 * i, 200)).save(folder / f"{i}.JPEG")


FAST_STARTS = {"cifar10-resnet20-cpr-0.44-dst", "ilsvrc12-mobilenetv1-ws-agp-0.5"}


@pytest.mark.parametrize("row_id", [
    pytest.param(r["row_id"], marks=() if r["row_id"] in FAST_STARTS else pytest.mark.slow)
    for r in ROWS])
def test_every_row_starts_on_tiny_native_data(tmp_path, row_id):
    """Each step of the row built as its entry script builds it (helper, learner, runner) on
    tiny files in the native format, the run's preflight passed (the data give a batch, no
    resume file is foreign) and its network run on a batch of the data."""
    import torch

    from learners.launch import build
    from utils.multi_gpu_wrapper import SingleProcess

    _write_cifar_bin(tmp_path / "cifar", n=4)
    _write_ilsvrc_folders(tmp_path / "ilsvrc")
    res = _reproduce(row_id, "--dry-run", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    for argv in _commands(res.stdout):
        entry = str(Path(argv[1]).relative_to(REPO))
        data = tmp_path / ("cifar" if "cifar10" in entry else "ilsvrc")
        flag_argv = [a for a in argv[2:] if not re.fullmatch(r"-n=\d+", a)] + [
            f"--data_dir_local={data}", "--batch_size=2", "--batch_size_eval=2",
            "--cifar_records_per_file=0" if "cifar10" in entry else "--nb_threads=0"]
        values = _parse(entry, flag_argv)
        runner, learner = build(resolve_helper(_helper_name(entry)), values, SingleProcess())
        runner.preflight(learner)
        helper = runner.helper
        inputs, labels = next(iter(torch.utils.data.DataLoader(helper.build_dataset_eval(),
                                                               batch_size=2)))
        with torch.no_grad():
            outputs = helper.build_model().eval()(inputs)
        assert tuple(outputs.shape) == (2, helper.num_classes) and labels.max() < helper.num_classes
