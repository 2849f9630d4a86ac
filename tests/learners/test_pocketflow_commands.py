"""Every command line of PocketFlow's documentation (commit 53b82cb) either runs here or is
refused with one ``error:`` line naming what to use instead.

``tests/data/pocketflow_commands.tsv`` holds every command of the docs' shell blocks, one row
each (``\\`` continuations joined, the ``$ `` prompt dropped), with its ``kind``:

- ``run``: the test runs it as documented (``./scripts/run_local.sh`` or ``sh
  ./scripts/run_local.sh``, every flag in PocketFlow's own syntax) on the digits entry script
  (``nets/resnet_at_digits_run.py``: embedded data, no download), with flags appended that
  shorten it and put every output under the test's tmp dir;
- ``refused``: exit 2, exactly one ``error:`` line naming the replacement in ``note``, no
  traceback, nothing written: an HDFS flag (``--data_dir_local`` instead), or PocketFlow's
  cluster / Docker launchers (``scripts/run_seven.sh``, ``scripts/run_docker.sh`` refuse,
  naming ``scripts/run_local.sh`` with the same arguments: docs/migrating.md, Scripts);
- ``not-a-run``: installation steps and TensorFlow Lite converters, no entry-script invocation.

The table is checked against PocketFlow's docs when ``$POCKETFLOW_DOCS_DIR`` names a folder
holding them (``docs/docs/*.md``, ``README.md``) or ``$POCKETFLOW_GIT_DIR`` a git directory of
Tencent/PocketFlow holding commit 53b82cb; skipped otherwise. The runs are slow except a
representative handful: full-prec, a channel-pruning learner, a quantization learner (under
``sh``), and one refusal.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from absl import flags

from learners.launch import define_flags
from learners.pocketflow_flags import translate
from nets import resnet_at_digits
from nets.helpers import resolve_helper
from utils.config import ConfigError

REPO = Path(__file__).resolve().parents[2]
TABLE = REPO / "tests" / "data" / "pocketflow_commands.tsv"
COLUMNS = ["source", "command", "kind", "note"]
KINDS = {"run", "refused", "not-a-run"}
COMMIT = "53b82cb"
DIGITS = REPO / "nets" / "resnet_at_digits_run.py"
LAUNCHERS = ("run_local.sh", "run_seven.sh", "run_docker.sh")
MAX_PROCS = 2   # a documented -n=4 or -n=8 runs as -n=2 here: 2 CPU cores

SHORT = ["--nb_epochs_rat=0.005", "--resnet_size=20", "--image_size=8", "--batch_size=32",
         "--report_latency=false", "--log_dir="]
# learner -> (flag prefix, flags that make it fast); None: full-prec's own --save_path*
LEARNERS = {
    "full-prec": (None, []),
    "chn-pruned-rmt": ("cpr", ["--cpr_nb_smpls=128"]),
    "dis-chn-pruned": ("dcp", ["--dcp_nb_iters_block=2", "--dcp_nb_iters_layer=1",
                               "--dcp_nb_batches=2"]),
    "weight-sparse": ("ws", ["--ws_nb_rlouts=2", "--ws_nb_rlouts_min=1", "--ws_nb_iters_ft=2"]),
    "uniform": ("uql", ["--uql_nb_rlouts=2", "--uql_nb_rlouts_min=1",
                        "--uql_tune_global_steps=2"]),
    "non-uniform": ("nuql", ["--nuql_nb_rlouts=2", "--nuql_nb_rlouts_min=1",
                             "--nuql_tune_global_steps=2"]),
    "uniform-tf": ("uqtf", ["--uqtf_nb_calib_batches=2"]),
}
FAST = {"docs/docs/installation.md#73", "docs/docs/cpr_learner.md#115",
        "docs/docs/uq_learner.md#131", "docs/docs/test_cases.md#12"}


def _rows() -> list[dict]:
    lines = TABLE.read_text(encoding="utf-8").splitlines()
    assert lines[0].split("\t") == COLUMNS
    rows = [dict(zip(COLUMNS, line.split("\t"))) for line in lines[1:]]
    for row in rows:
        assert len(row) == len(COLUMNS) and all(row.values()), row
    return rows


ROWS = _rows()


def _launcher_refusal(row: dict) -> bool:
    """A row refused by its launcher (run_seven.sh / run_docker.sh): no Python starts."""
    return row["note"] == "scripts/run_local.sh"


def _params(kind: str) -> list:
    return [pytest.param(row, id=row["source"],
                         marks=() if row["source"] in FAST or _launcher_refusal(row)
                         else pytest.mark.slow)
            for row in ROWS if row["kind"] == kind]


# -- the documented commands, as PocketFlow's docs write them ----------------------------------
_START = re.compile(r"^(\$ |(sh |bash )?\./scripts/|python )")


def extract(files: dict[str, str]) -> list[tuple[str, str]]:
    """``(path#line, command)`` of every command in the shell blocks of ``files`` (path ->
    text): a line opening with ``$ ``, ``./scripts/``, ``sh ./scripts/`` or ``python ``, its
    ``\\`` continuations joined with single spaces (a trailing one before the block's end
    dropped, as the shell drops it), the prompt removed."""
    found = []
    for path, text in sorted(files.items()):
        lines, i, block = text.split("\n"), 0, None
        while i < len(lines):
            stripped = lines[i].strip()
            if stripped.startswith("```"):
                block = None if block is not None else stripped[3:].strip().lower()
                i += 1
                continue
            if block not in ("bash", "sh", "shell", "") or not _START.match(stripped):
                i += 1
                continue
            start, parts = i + 1, []
            while i < len(lines):
                part, i = lines[i].strip(), i + 1
                more = part.endswith("\\")
                parts.append(part[:-1].strip() if more else part)
                if not more or i >= len(lines) or lines[i].strip().startswith("```"):
                    break
            command = " ".join(p for p in parts if p)
            found.append((f"{path}#{start}", command[2:] if command.startswith("$ ") else command))
    return found


def _pocketflow_docs() -> dict[str, str] | None:
    folder, git_dir = os.environ.get("POCKETFLOW_DOCS_DIR"), os.environ.get("POCKETFLOW_GIT_DIR")
    if folder:
        root = Path(folder)
        return {p.relative_to(root).as_posix(): p.read_text(encoding="utf-8")
                for p in [*sorted((root / "docs" / "docs").glob("*.md")), root / "README.md"]}
    if git_dir:
        def git(*args: str) -> str:
            return subprocess.run(["git", f"--git-dir={git_dir}", *args], check=True,
                                  capture_output=True, text=True).stdout
        names = [n for n in git("ls-tree", "--name-only", f"{COMMIT}:docs/docs").split()
                 if n.endswith(".md")]
        return {path: git("show", f"{COMMIT}:{path}")
                for path in [*(f"docs/docs/{n}" for n in names), "README.md"]}
    return None


def _split(command: str) -> tuple[list[str], str | None, list[str]]:
    """``(shell, launcher, arguments)``: ``sh ./scripts/run_local.sh nets/x.py --a`` ->
    ``(["sh"], "./scripts/run_local.sh", ["nets/x.py", "--a"])``; launcher None when the
    command runs no ``scripts/run_*.sh``."""
    words = shlex.split(command)
    shell = words[:1] if words[0] in ("sh", "bash") else []
    launcher = words[len(shell)]
    if not launcher.startswith("./scripts/") or Path(launcher).name not in LAUNCHERS:
        return shell, None, words
    return shell, launcher, words[len(shell) + 1:]


def _learner(arguments: list[str]) -> str:
    """The documented learner (``--cp_learner``: a slip of PocketFlow's test_cases.md that
    learners/pocketflow_flags.py reads as ``--learner``)."""
    for i, arg in enumerate(arguments):
        for name in ("--learner", "--cp_learner"):
            if arg.startswith(f"{name}="):
                return arg.split("=", 1)[1]
            if arg == name:
                return arguments[i + 1]
    return "full-prec"


# -- the table ---------------------------------------------------------------------------------
def test_table_rows_are_unique_cite_a_doc_line_and_have_a_known_kind():
    sources = [row["source"] for row in ROWS]
    assert len(sources) == len(set(sources))
    for row in ROWS:
        assert re.fullmatch(r"(docs/docs/\w+\.md|README\.md)#[1-9]\d*", row["source"]), row
        assert row["kind"] in KINDS, row
    assert {row["kind"] for row in ROWS} == KINDS


def test_table_holds_exactly_the_commands_of_pocketflows_docs():
    docs = _pocketflow_docs()
    if docs is None:
        pytest.skip("set POCKETFLOW_DOCS_DIR (extracted docs) or POCKETFLOW_GIT_DIR "
                    f"(a Tencent/PocketFlow git dir holding {COMMIT})")
    assert [(row["source"], row["command"]) for row in ROWS] == extract(docs)


def test_extract_joins_continuations_and_skips_prose_config_and_other_languages():
    doc = "\n".join(["run `./scripts/run_local.sh x` in prose", "```bash", "# a comment",
                     "$ ./scripts/run_local.sh nets/a_run.py \\", "    --learner b \\",
                     "    --c 1", "data_dir = None", "sh ./scripts/run_seven.sh nets/d.py \\",
                     "-n=8 \\", "```", "``` python", "python x.py", "```"])
    assert extract({"docs/docs/x.md": doc}) == [
        ("docs/docs/x.md#4", "./scripts/run_local.sh nets/a_run.py --learner b --c 1"),
        ("docs/docs/x.md#8", "sh ./scripts/run_seven.sh nets/d.py -n=8")]


def test_kind_follows_the_launcher():
    for row in ROWS:
        _, launcher, arguments = _split(row["command"])
        if launcher is None:
            assert row["kind"] == "not-a-run", row
            continue
        assert re.fullmatch(r"nets/\w+_run\.py", arguments[0]), row
        if Path(launcher).name == "run_local.sh":
            assert row["kind"] in ("run", "refused") and not _launcher_refusal(row), row
        else:   # PocketFlow's cluster / Docker launchers: a script here that refuses
            assert row["kind"] == "refused" and _launcher_refusal(row), row
            assert (REPO / "scripts" / Path(launcher).name).exists(), row


def _parse_on(helper: type, arguments: list[str]) -> dict:
    """The documented flags as an entry script of ``helper`` parses them: PocketFlow's names
    translated (a refused one raises ConfigError), then absl."""
    fv = flags.FlagValues()
    define_flags(fv, helper)
    argv = translate([str(DIGITS), *arguments], set(fv), helper, say=lambda line: None)
    assert fv(argv) == [str(DIGITS)], argv
    return fv.flag_values_dict()


def _parse_on_digits(arguments: list[str]) -> dict:
    return _parse_on(resnet_at_digits.ModelHelper, arguments)


def test_run_rows_parse_on_the_digits_entry_and_refused_rows_raise_naming_the_replacement():
    for row in ROWS:
        _, launcher, arguments = _split(row["command"])
        if row["kind"] == "run":
            values = _parse_on_digits(arguments[1:])
            assert values["learner"] == _learner(arguments[1:]) in LEARNERS, row
        elif _launcher_refusal(row):   # only the launcher is refused: its flags all resolve
            flag_args = [a for a in arguments[1:] if not re.fullmatch(r"-n=\d+", a)]
            helper = resolve_helper(Path(arguments[0]).name[:-len("_run.py")])
            if "--data_disk hdfs" in row["command"]:     # then run_local.sh refuses that flag
                with pytest.raises(ConfigError, match="--data_dir_local"):
                    _parse_on(helper, flag_args)
            else:
                assert _parse_on(helper, flag_args)["learner"] == _learner(flag_args), row
        elif row["kind"] == "refused":
            with pytest.raises(ConfigError) as caught:
                _parse_on_digits(arguments[1:])
            assert row["note"] in str(caught.value), (row, str(caught.value))


# -- running them ------------------------------------------------------------------------------
def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHON": sys.executable,
            "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def _execute(command: str, entry: Path, extra: list[str], cwd: Path,
             timeout: float = 600) -> subprocess.CompletedProcess:
    """``command`` as documented, with the repository's launcher and ``entry`` by absolute
    path (``cwd`` is the test's tmp dir), ``-n=N`` capped at MAX_PROCS, ``extra`` appended."""
    shell, launcher, arguments = _split(command)
    rest = [f"-n={min(int(a[3:]), MAX_PROCS)}" if re.fullmatch(r"-n=\d+", a) else a
            for a in arguments[1:]]
    argv = [*shell, str(REPO / "scripts" / Path(launcher).name), str(entry), *rest, *extra]
    return subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def _defined_flags() -> set[str]:
    fv = flags.FlagValues()
    define_flags(fv, resnet_at_digits.ModelHelper)
    return set(fv)


DEFINED = _defined_flags()


def _output_flags(prefix: str | None, root: Path) -> list[str]:
    """Every output path of the run under ``root``: the helper's ``--save_path(_eval)`` and
    the learner's ``--<prefix>_save_path``, ``_save_path_eval``, ``_save_path_ws`` it has."""
    out = [f"--save_path={root}/models/model.ckpt",
           f"--save_path_eval={root}/models_eval/model.ckpt"]
    if prefix is not None:
        final = "model.pte" if prefix == "uqtf" else "model.ckpt"   # an ExecuTorch program
        out += [f"--{prefix}_{flag}={root}/{folder}/{name}" for flag, folder, name in (
                    ("save_path", prefix, "model.ckpt"), ("save_path_eval", f"{prefix}_eval", final),
                    ("save_path_ws", f"{prefix}_ws", "model.ckpt"))
                if f"{prefix}_{flag}" in DEFINED]
    return out


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """One tiny full-precision digits model (the helper's ``--save_path_eval`` folder) trained
    once for this module through the digits entry script: 10x the runs' schedule (~85 %
    accuracy), as a near-chance model's int8 programs (uniform-tf) differ from PyTorch's int8
    model by more than the 1-point parity tolerance (their logits are within a quantization
    step of each other), which fails the run (exit 3)."""
    root = tmp_path_factory.mktemp("pf_commands_full")
    proc = subprocess.run([sys.executable, str(DIGITS), "--learner=full-prec", *SHORT,
                           "--nb_epochs_rat=0.05", *_output_flags(None, root)], cwd=root, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return root / "models_eval"


def _run_and_check(command: str, tmp_path: Path, pretrained: Path) -> dict:
    learner = _learner(_split(command)[2][1:])
    prefix, fast = LEARNERS[learner]
    if prefix is not None or "--enbl_dst" in command.split():  # the pre-trained model / teacher
        shutil.copytree(pretrained, tmp_path / "models_eval")
    proc = _execute(command, DIGITS, [*SHORT, *fast, *_output_flags(prefix, tmp_path)], tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    report_dir = tmp_path / ("models_eval" if prefix is None else f"{prefix}_eval")
    report = json.loads((report_dir / "report.json").read_text())
    assert report["learner"] == learner
    accuracy = report["accuracy"]["full" if prefix is None else "compressed"]
    assert 0.0 <= accuracy <= 1.0, report["accuracy"]
    return report


@pytest.mark.parametrize("row", _params("run"))
def test_documented_command_runs_on_the_digits_entry(row, tmp_path, pretrained):
    _run_and_check(row["command"], tmp_path, pretrained)


@pytest.mark.parametrize("row", _params("refused"))
def test_documented_command_is_refused_with_one_error_line_naming_the_replacement(row, tmp_path):
    _, _, arguments = _split(row["command"])
    proc = _execute(row["command"], REPO / arguments[0], [], tmp_path, timeout=120)
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert row["note"] in errors[0], errors[0]
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert not any(tmp_path.iterdir()), sorted(p.name for p in tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("row", [r for r in ROWS if r["kind"] == "refused"
                                 and not _launcher_refusal(r)], ids=lambda r: r["source"])
def test_refused_command_runs_once_its_hdfs_flag_follows_the_advice(row, tmp_path, pretrained):
    """The refusal is the only obstacle: with the data on local disk (``--data_disk local``,
    which passes) the rest of the documented command runs."""
    assert row["note"] == "--data_dir_local" and "--data_disk hdfs" in row["command"]
    _run_and_check(row["command"].replace("--data_disk hdfs", "--data_disk local"), tmp_path,
                   pretrained)
