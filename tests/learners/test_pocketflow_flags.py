"""PocketFlow's flags on this project's entry scripts: every one is defined here, renamed (the
value converted, one note), accepted without effect (one note saying why) or refused naming
what to do instead; never an unknown flag."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from absl import flags

from learners.launch import define_flags
from learners.pocketflow_flags import LEGACY, NoEffect, Refused, Renamed, resolution, translate
from nets.helpers import resolve_helper
from utils.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]
TABLE = ROOT / "tests" / "data" / "pocketflow_flags.tsv"
COMMON = ("learners/", "rl_agents/", "datasets/abstract_dataset.py")
NETS = {"resnet_at_cifar10": "cifar10", "lenet_at_cifar10": "cifar10",
        "resnet_at_ilsvrc12": "ilsvrc12", "mobilenet_at_ilsvrc12": "ilsvrc12"}


def _pocketflow_flags() -> list[tuple[str, str, str, str]]:
    rows = [line.split("\t") for line in TABLE.read_text().splitlines()
            if line and not line.startswith("#")]
    return [tuple(row) for row in rows]


def _defined(helper: str) -> set[str]:
    values = flags.FlagValues()
    define_flags(values, resolve_helper(helper))
    return set(values)


@pytest.mark.parametrize("net", list(NETS))
def test_every_pocketflow_flag_of_an_entry_resolves(net):
    dataset = NETS[net]
    mine = [row for row in _pocketflow_flags() if row[3].startswith(COMMON)
            or row[3] in (f"nets/{net}.py", f"nets/{net}_run.py", f"datasets/{dataset}_dataset.py")]
    assert len({row[0] for row in mine}) > 150
    defined = _defined(net)
    unresolved = sorted({name for name, *_ in mine if name not in defined and name not in LEGACY})
    assert unresolved == []
    assert not set(LEGACY) & defined          # a table entry never hides a real flag
    for entry in LEGACY.values():             # every rename points at a flag that exists
        assert not isinstance(entry, Renamed) or entry.new in defined


def test_renamed_flags_are_rewritten_with_one_note_each():
    notes = []

    class Helper:
        nb_epochs = 120.0

    argv = translate(["prog", "--uql_quant_epochs=60", "--save_path_dst", "t.ckpt",
                      "--buffer_size=64", "--learner=uniform", "--data_disk=local",
                      "--nouqtf_enbl_manual_quant", "--", "--buffer_size=1"],
                     {"learner", "nb_epochs_rat", "dst_model_path"}, Helper, say=notes.append)
    assert argv == ["prog", "--nb_epochs_rat=0.5", "--dst_model_path=t.ckpt", "--learner=uniform",
                    "--", "--buffer_size=1"]
    assert len(notes) == 4
    assert notes[0].startswith("note: --uql_quant_epochs=60 (PocketFlow) is --nb_epochs_rat=0.5")
    assert "changes nothing here: a tf.data" in notes[2]
    assert notes[3].startswith("note: --uqtf_enbl_manual_quant=false (PocketFlow) changes nothing")


@pytest.mark.parametrize("argument,named", [
    ("--data_disk=hdfs", "--data_dir_local"), ("--data_hdfs_host=h", "hdfs-fuse"),
    ("--model_http_url=http://x", "nothing is downloaded")])
def test_refused_flags_name_what_to_do_instead(argument, named):
    with pytest.raises(ConfigError, match=named):
        translate(["prog", argument], set(), object, say=lambda line: None)


def test_every_table_entry_says_what_became_of_it():
    for name, entry in LEGACY.items():
        line = resolution(name)
        assert line and (entry.why in line if not isinstance(entry, Renamed) else entry.new in line)
        assert isinstance(entry, (Renamed, NoEffect, Refused))
    assert resolution("learner") is None


def test_entry_script_refuses_with_one_line_and_notes_renames(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = str(ROOT / "nets" / "resnet_at_digits_run.py")
    refused = subprocess.run([sys.executable, script, "--data_disk=hdfs"], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].startswith("error: --data_disk=hdfs: ")
    helped = subprocess.run([sys.executable, script, "--ddpg_critic_width=32", "--helpshort"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert helped.returncode in (0, 1) and "is --ddpg_critic_hidden=32 here" in helped.stderr


def test_tensorboard_events_land_in_logs_by_default(tmp_path):
    """PocketFlow's ``--log_dir`` default ``./logs``: a run with no ``--log_dir`` writes its
    TensorBoard events there (absl's own ``--log_dir`` flag does not swallow it)."""
    import glob

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    script = str(ROOT / "nets" / "resnet_at_digits_run.py")
    run = subprocess.run([sys.executable, script, "--nb_epochs_rat=0.005", "--resnet_size=20",
                          "--image_size=8", "--batch_size=32", "--summ_step=2",
                          "--report_latency=false", "--export_format=none"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    events = glob.glob(str(tmp_path / "logs" / "**" / "events.out.tfevents*"), recursive=True)
    assert events and all(os.path.getsize(path) > 0 for path in events)
