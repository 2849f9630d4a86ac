"""PocketFlow's command-line flags that this project names or treats differently.

Every ``tf.app.flags.DEFINE_*`` of PocketFlow's learners, nets, datasets and DDPG agent either
exists here under the same name and meaning (a real flag, never listed below), or is one of:

- ``Renamed``: the same setting under another name; the value is converted where the unit
  differs (``--uql_quant_epochs=60`` becomes ``--nb_epochs_rat`` of the helper's epochs) and one
  ``note:`` line says what it became;
- ``NoEffect``: a knob of TensorFlow's machinery with nothing to set here (``tf.data`` buffer
  sizes); accepted, and one ``note:`` line says why it changes nothing;
- ``Refused``: a feature this project does not have; the run stops with one ``error:`` line
  naming what to do instead (exit 2). ``allowed`` values pass silently (``--data_disk=local``).

``translate(argv, defined, helper_cls)`` rewrites an entry script's arguments before absl
parses them, so an unknown flag is looked up here before absl suggests a spelling.
docs/migrating.md lists the table with its reasons.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from utils.config import ConfigError


@dataclass(frozen=True)
class Renamed:
    new: str
    why: str = ""
    convert: Callable[[str, type], str] | None = None    # (value, helper class) -> new value
    boolean: bool = False


@dataclass(frozen=True)
class NoEffect:
    why: str
    boolean: bool = False


@dataclass(frozen=True)
class Refused:
    why: str
    allowed: tuple[str, ...] = ()
    boolean: bool = False


def _epochs_as_ratio(value: str, helper_cls: type) -> str:
    epochs = float(value)
    return f"{epochs / float(getattr(helper_cls, 'nb_epochs', 1.0)):g}"


_TF_DATA = ("a tf.data pipeline setting; the DataLoader here needs none (its workers: "
            "--nb_threads)")
_HDFS = ("this project reads local files only: mount HDFS (e.g. with hdfs-fuse) and pass "
         "the mounted directory as --data_dir_local")
_COUNTED = ("a dataset fact in PocketFlow, used to count iterations; here the samples are "
            "counted in the data files themselves")
_EPOCHS = "PocketFlow's quantization epochs; here the helper's epochs x --nb_epochs_rat"
_RANDOM_LAYERS = ("the bit-width agent visits the layers in network order (a random order "
                  "is not implemented)")
_RL_SAVE = ("the roll-outs' models are not saved; the chosen strategy and every roll-out's "
            "reward are in report.json")

LEGACY: dict[str, Renamed | NoEffect | Refused] = {
    # data pipeline (datasets/abstract_dataset.py)
    "buffer_size": NoEffect(_TF_DATA),
    "prefetch_size": NoEffect(_TF_DATA),
    "cycle_length": NoEffect(_TF_DATA),
    "data_disk": Refused(_HDFS, allowed=("local",)),
    "data_hdfs_host": Refused(_HDFS),
    "data_dir_hdfs": Refused(_HDFS),
    "model_http_url": Refused("nothing is downloaded at run time: fetch the files yourself and "
                              "pass their local path (--save_path, --dst_model_path)"),
    "nb_classes": NoEffect("a dataset fact in PocketFlow (1001 for its ILSVRC-12 files, a "
                           "background class included); here the helper's num_classes"),
    "nb_smpls_train": NoEffect(_COUNTED),
    "nb_smpls_val": NoEffect(_COUNTED),
    "nb_smpls_eval": NoEffect(_COUNTED),
    # distillation (learners/distillation_helper.py)
    "save_path_dst": Renamed("dst_model_path", "the teacher's checkpoint"),
    # PocketFlow's docs (test_cases.md) write --cp_learner for --learner; its code never read it
    "cp_learner": Renamed("learner", "a slip in PocketFlow's test_cases.md"),
    # quantization learners
    "uql_quant_epochs": Renamed("nb_epochs_rat", _EPOCHS, _epochs_as_ratio),
    "nuql_quant_epochs": Renamed("nb_epochs_rat", _EPOCHS, _epochs_as_ratio),
    "uql_save_quant_model_path": Renamed("uql_save_path", "the quantized model's path"),
    "nuql_save_quant_model_path": Renamed("nuql_save_path", "the quantized model's path"),
    "uql_tune_save_path": NoEffect(_RL_SAVE),
    "nuql_tune_save_path": NoEffect(_RL_SAVE),
    "uql_tune_disp_steps": NoEffect("every roll-out is logged (one line each)"),
    "nuql_tune_disp_steps": NoEffect("every roll-out is logged (one line each)"),
    "uqtf_save_path_probe": NoEffect("PocketFlow's probe graph for the TF Lite converter; "
                                     "uniform-tf writes its .pte and ONNX files beside "
                                     "--uqtf_save_path"),
    "uqtf_save_path_probe_eval": NoEffect("PocketFlow's probe graph for the TF Lite converter; "
                                          "uniform-tf writes its .pte and ONNX files beside "
                                          "--uqtf_save_path_eval"),
    "uqtf_enbl_manual_quant": NoEffect("torchao inserts the fake-quantization ops of every "
                                       "conv / linear layer; there is no manual mode",
                                       boolean=True),
    # DDPG agent (rl_agents/ddpg)
    "ddpg_actor_width": Renamed("ddpg_actor_hidden", "the actor's hidden width"),
    "ddpg_critic_width": Renamed("ddpg_critic_hidden", "the critic's hidden width"),
    "uql_enbl_random_layers": NoEffect(_RANDOM_LAYERS, boolean=True),
    "nuql_enbl_random_layers": NoEffect(_RANDOM_LAYERS, boolean=True),
    "ddpg_rms_eps": NoEffect("PocketFlow's agent never normalises its states (normalize_state "
                             "is False in rl_agents/ddpg/agent.py), so the epsilon is unused "
                             "there too"),
}


def _split(argument: str) -> tuple[str, str | None] | None:
    """``--name=value`` -> (name, value); ``--name`` -> (name, None); not a flag -> None."""
    if not argument.startswith("-") or argument in ("-", "--"):
        return None
    body = argument.lstrip("-")
    name, sep, value = body.partition("=")
    return name, (value if sep else None)


def translate(argv: Sequence[str], defined: set[str], helper_cls: type,
              say: Callable[[str], None] = print) -> list[str]:
    """``argv`` with PocketFlow's renamed flags rewritten and its no-effect flags dropped (one
    ``note:`` through ``say`` each); a refused flag raises ``ConfigError`` naming what to use."""
    out, args, i = list(argv[:1]), list(argv[1:]), 0
    while i < len(args):
        argument, i = args[i], i + 1
        if argument == "--":
            out += args[i - 1:]
            break
        parsed = _split(argument)
        if parsed is None:
            out.append(argument)
            continue
        name, value = parsed
        negated = value is None and name.startswith("no") and name[2:] in LEGACY
        key = name[2:] if negated else name
        entry = LEGACY.get(key)
        if entry is None or key in defined or name in defined:
            out.append(argument)
            continue
        if value is None:
            if entry.boolean:
                value = "false" if negated else "true"
            elif i < len(args):
                value, i = args[i], i + 1                 # --name value
            else:
                raise ConfigError(f"--{key} needs a value")
        shown = f"--{key}={value}"
        if isinstance(entry, Refused):
            if value in entry.allowed:
                continue
            raise ConfigError(f"{shown}: {entry.why}")
        if isinstance(entry, NoEffect):
            say(f"note: {shown} (PocketFlow) changes nothing here: {entry.why}")
            continue
        new_value = entry.convert(value, helper_cls) if entry.convert else value
        say(f"note: {shown} (PocketFlow) is --{entry.new}={new_value} here"
            + (f" ({entry.why})" if entry.why else ""))
        out.append(f"--{entry.new}={new_value}")
    return out


def resolution(name: str) -> str | None:
    """One line saying what became of PocketFlow flag ``name`` (None: not in the table)."""
    entry = LEGACY.get(name)
    if entry is None:
        return None
    if isinstance(entry, Renamed):
        return f"renamed: --{entry.new}" + (f" ({entry.why})" if entry.why else "")
    if isinstance(entry, NoEffect):
        return f"accepted, no effect: {entry.why}"
    return f"refused: {entry.why}"
