"""Flags: utils.config (dataclass <-> absl flags) and the entry script's handling of bad flags."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Optional

import pytest
from absl import flags

from learners.config import LearnerConfig
from learners.launch import main
from learners.registry import list_learners
from nets.resnet_at_digits import ModelHelper
from utils.config import ConfigError, check, check_ratio, define_flags, from_flag_dict, option
from tests.conftest import digits_flag_values, finish, start_entry

DIGITS = "resnet_at_digits_run.py"


# -- utils.config ---------------------------------------------------------------------------
@dataclass
class Demo:
    enbl: bool = option(True, "a bool")
    count: int = option(3, "an int")
    ratio: float = option(0.5, "a float")
    name: str = option("abc", "a string")
    names: list[str] = option(["a", "b"], "a list")
    mode: str = option("fast", "an enum", choices=["fast", "slow"])
    limit: Optional[int] = option(None, "an optional int")

    def __post_init__(self) -> None:
        check(self.count >= 0, "count", f"must be >= 0, got {self.count}")


@dataclass
class Other:
    count: int = option(99, "the same name as Demo.count")
    extra: float = option(1.5, "only here")


def demo_flags() -> flags.FlagValues:
    fv = flags.FlagValues()
    define_flags(Demo, fv)
    return fv


def test_define_flags_types_and_defaults():
    fv = demo_flags()
    assert sorted(fv) == sorted(f.name for f in dataclasses.fields(Demo))
    parsers = {name: type(fv[name].parser).__name__ for name in fv}
    assert parsers == {"enbl": "BooleanParser", "count": "IntegerParser", "ratio": "FloatParser",
                       "name": "ArgumentParser", "names": "ListParser", "mode": "EnumParser",
                       "limit": "IntegerParser"}
    assert fv["mode"].parser.enum_values == ["fast", "slow"]
    assert fv["count"].help == "an int"
    fv(["prog"])
    assert fv.flag_values_dict() == dataclasses.asdict(Demo())
    assert from_flag_dict(Demo, fv.flag_values_dict()) == Demo()


def test_from_flag_dict_round_trips_parsed_values():
    fv = demo_flags()
    fv(["prog", "--noenbl", "--count=7", "--ratio=0.25", "--name=xyz", "--names=c,d,e",
        "--mode=slow", "--limit=12"])
    cfg = from_flag_dict(Demo, {**fv.flag_values_dict(), "unrelated": 1})
    assert cfg == Demo(enbl=False, count=7, ratio=0.25, name="xyz", names=["c", "d", "e"],
                       mode="slow", limit=12)
    assert from_flag_dict(Demo, dataclasses.asdict(cfg)) == cfg
    assert from_flag_dict(Demo, {}, count=4).count == 4
    # list defaults are not shared between instances
    a, b = Demo(), Demo()
    a.names.append("z")
    assert b.names == ["a", "b"]


def test_bad_flag_values_are_rejected_by_the_parser():
    with pytest.raises(flags.IllegalFlagValueError, match=r"--mode=medium.*fast\|slow"):
        demo_flags()(["prog", "--mode=medium"])
    with pytest.raises(flags.IllegalFlagValueError, match="count"):
        demo_flags()(["prog", "--count=many"])
    with pytest.raises(flags.UnrecognizedFlagError, match="cuont"):
        demo_flags()(["prog", "--cuont=3"])


def test_shared_flag_names_are_defined_once_first_default_wins():
    fv = demo_flags()
    define_flags(Other, fv)  # no DuplicateFlagError
    fv(["prog", "--count=5"])
    values = fv.flag_values_dict()
    assert values["extra"] == 1.5
    assert from_flag_dict(Other, values) == Other(count=5, extra=1.5)
    fv2 = demo_flags()
    define_flags(Other, fv2)
    fv2(["prog"])
    assert fv2["count"].value == 3


def test_from_flag_dict_runs_validation():
    with pytest.raises(ConfigError, match=r"^--count: must be >= 0, got -1$"):
        from_flag_dict(Demo, {"count": -1})
    with pytest.raises(ConfigError, match=r"^--save_step: must be positive, got 0$"):
        from_flag_dict(LearnerConfig, {"save_step": 0})
    with pytest.raises(ConfigError, match=r"--momentum: must be in \[0, 1\), got 1.0"):
        from_flag_dict(LearnerConfig, {"momentum": 1.0})


@pytest.mark.parametrize("value", [1.0, -0.1, 1.5, float("nan")])
def test_check_ratio_rejects_outside_default_interval(value):
    with pytest.raises(ConfigError) as info:
        check_ratio(value, "prune_ratio")
    assert isinstance(info.value, ValueError)
    assert str(info.value) == f"--prune_ratio: must be in [0, 1), got {value!r}"


def test_check_ratio_bounds():
    for ok in (0.0, 0.5, 0.999):
        check_ratio(ok, "prune_ratio")
    check_ratio(1.0, "keep", high_inclusive=True)
    check_ratio(2.0, "scale", high=2.0, high_inclusive=True)
    with pytest.raises(ConfigError, match=r"^--keep: must be in \(0, 1\], got 0.0$"):
        check_ratio(0.0, "keep", low_inclusive=False, high_inclusive=True)
    with pytest.raises(ConfigError, match=r"^--scale: must be in \[0, 2\], got 2.5$"):
        check_ratio(2.5, "scale", high=2.0, high_inclusive=True)


# -- the entry script -----------------------------------------------------------------------
ENTRY_CASES = {
    "learner": ["--learner=foo"],
    "unknown_flag": ["--no_such_flag=1"],
    "resnet_size": ["--resnet_size=21"],
    "helpfull": ["--helpfull"],
}


@pytest.fixture(scope="module")
def entry(tmp_path_factory):
    """Every entry-script case, run concurrently (each is a ~2 s interpreter start)."""
    root = tmp_path_factory.mktemp("entry")
    flagfile = root / "bad.flags"
    flagfile.write_text("--log_dir=\n--resnet_size=21\n")
    cases = {**ENTRY_CASES, "flagfile": [f"--flagfile={flagfile}"]}
    procs = {name: start_entry(DIGITS, "--log_dir=", *args, cwd=root)
             for name, args in cases.items()}
    results = {name: finish(proc) for name, proc in procs.items()}
    results["root"] = root
    return results


def test_unknown_learner_lists_valid_learners(entry):
    res = entry["learner"]
    assert res.returncode != 0
    assert "--learner=foo" in res.stderr
    listed = res.stderr.split("value should be one of <", 1)[1].split(">", 1)[0].split("|")
    assert listed == list_learners() and "full-prec" in listed
    assert "Pass --helpshort or --helpfull to see help on flags." in res.stderr
    assert "Traceback" not in res.stderr


def test_unknown_flag_is_named(entry):
    res = entry["unknown_flag"]
    assert res.returncode != 0
    assert "Unknown command line flag 'no_such_flag'" in res.stderr
    assert "--helpfull" in res.stderr  # where to look for the valid flags


def test_unknown_enum_value_lists_valid_values():
    """The entry script's own flag definitions, parsed in-process (the learner case above shows
    that the script prints these parser errors)."""
    with pytest.raises(flags.IllegalFlagValueError,
                       match=r"^flag --device=tpu: value should be one of <auto\|cpu\|cuda>$"):
        digits_flag_values("--device=tpu")
    with pytest.raises(flags.IllegalFlagValueError,
                       match=r"--exec_mode=bogus: value should be one of <train\|eval>"):
        digits_flag_values("--exec_mode=bogus")
    with pytest.raises(flags.IllegalFlagValueError, match=r"<auto\|horovod\|torch>"):
        digits_flag_values("--mgw_backend=mpi")


def test_config_validation_error_exits_2_naming_the_flag(entry):
    res = entry["resnet_size"]
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == "error: --resnet_size: must be one of 20, 32, 44, 56, got 21"
    # nothing was written on the way
    assert not (entry["root"] / "models").exists()
    assert not (entry["root"] / "models_eval").exists()


def test_main_turns_config_error_into_exit_2(tmp_path, capsys):
    """launch.main (the entry scripts' app.run target), in-process: one line, status 2."""
    logger = logging.getLogger("pocketflow")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    values = digits_flag_values("--batch_size=0", "--log_dir=",
                                f"--save_path={tmp_path / 'm.ckpt'}",
                                f"--save_path_eval={tmp_path / 'e' / 'm.ckpt'}")
    try:
        with pytest.raises(SystemExit) as info:
            main(ModelHelper, values, ["prog"])
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved
    assert info.value.code == 2
    assert capsys.readouterr().err == "error: --batch_size: must be positive, got 0\n"
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SystemExit, match="unexpected positional arguments: extra"):
        main(ModelHelper, values, ["prog", "extra"])


def test_helpfull_lists_every_flag(entry):
    res = entry["helpfull"]
    # absl's app.run exits with status 1 after printing help (absl/app.py HelpfullFlag)
    assert res.returncode == 1, res.stderr
    assert res.stderr == ""
    for flag in ("--learner", "--resnet_size", "--nb_epochs_rat", "--save_path_eval",
                 "--data_dir_local", "--exec_mode"):
        assert flag in res.stdout
    assert "ResNet depth: 20, 32, 44 or 56" in res.stdout
    assert "full-prec" in res.stdout


def test_flagfile_is_read(entry):
    res = entry["flagfile"]
    assert res.returncode == 2, res.stderr
    assert "--resnet_size: must be one of 20, 32, 44, 56, got 21" in res.stderr


def test_pocketflow_spellings_carry_over(tmp_path):
    """``--log_dir`` keeps its documented default although absl defines a flag of that name;
    ``sh scripts/run_local.sh`` runs under dash too; ``--nuql_opt_mode=clusters`` is read."""
    import subprocess
    import sys

    from learners.quant.config import NuqlConfig
    from tests.conftest import REPO

    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, str(REPO / "nets" / "resnet_at_digits_run.py"),
                           "--helpfull"], capture_output=True, text=True, timeout=120, env=env)
    text = proc.stdout + proc.stderr
    assert "--log_dir: TensorBoard log directory" in text
    assert "(default: './logs')" in text.split("--log_dir:")[1].split("--")[0]
    proc = subprocess.run(["sh", str(REPO / "scripts" / "run_local.sh"), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert "Illegal option" not in proc.stderr and "run_local.sh <nets/" in proc.stderr
    assert NuqlConfig(opt_mode="clusters").opt_mode == "cluster"
