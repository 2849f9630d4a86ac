"""What every tool entry script shares: helpers by name, artifacts, input shapes, output paths.

Entry scripts (``tools/<tool>.py``) are the only place flags are parsed; they call
``define_input_flags(FLAGS)`` for the usual ``--helper`` / ``--helper_config`` /
``--input_shape`` trio and run their ``main`` through ``run_tool(__name__, main)``
(``app.run(tool_main(main))``), which turns the user's mistakes (``USER_ERRORS``) into one
``error: ...`` line on stderr and exit status 2. Each tool's ``cli()`` is both
``python -m tools.<tool>`` and its console script (``pocketflow-<tool>``, setup.py).
Everything below takes plain arguments.

- ``resolve_helper("resnet_at_digits")`` is ``nets.resnet_at_digits.ModelHelper``;
  ``resolve_helper("my_pkg.my_module:MyHelper")`` imports a user's own helper class.
- ``make_helper(cls, ["image_size=8"])`` builds it with config overrides (``key=value``,
  converted to the type of the ``cls.Config`` field).
- ``load_artifact(path)`` loads a model artifact (``kind="model"``) in eval mode; a missing
  file, a training checkpoint or any other file is one ``ToolError`` naming the path.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import re
import sys
import tempfile
import typing
from typing import Any, Callable, Sequence

from torch import nn

from compression.artifacts import check_complete, load_model
from compression.graph.layers import GraphError
from compression.quantization.int8_qat import Int8ExportUnavailable
from datasets.errors import DataError
from deployment.onnx_export import ExportUnavailable
from nets import helpers as nets_helpers
from utils.checkpoint import CheckpointError
from utils.config import ConfigError
from utils.malloc import tune_malloc

ARTIFACT_EXPECTED = "a model artifact written by a learner's --*_save_path_eval"


class ToolError(ValueError):
    """A tool's input or output is unusable; the message names the path or flag to fix."""


# Errors that are the user's to fix: one message on stderr, exit status 2.
USER_ERRORS: tuple = (ToolError, CheckpointError, ConfigError, DataError, GraphError,
                      ExportUnavailable, Int8ExportUnavailable)


# -- helpers -----------------------------------------------------------------------------------
def helper_names() -> list[str]:
    """The built-in helpers' names (``nets.helpers``)."""
    return nets_helpers.helper_names()


def resolve_helper(name: str) -> type:
    """A built-in helper by name (``resnet_at_digits``) or ``pkg.module:ClassName``."""
    try:
        return nets_helpers.resolve_helper(name)
    except nets_helpers.UnknownHelper as exc:
        raise ToolError(str(exc)) from None


def _convert(value: str, kind: Any, key: str) -> Any:
    origin = typing.get_origin(kind)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    kind = typing.get_origin(kind) or kind
    if kind is bool:
        if value.lower() in ("1", "true", "yes"):
            return True
        if value.lower() in ("0", "false", "no"):
            return False
        raise ToolError(f"--helper_config: {key} must be true or false, got {value!r}")
    if kind is list:
        return [v for v in value.split(";") if v]
    try:
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise ToolError(f"--helper_config: {key} must be a {kind.__name__}, got {value!r}") from exc


def make_helper(helper_cls: type, settings: Sequence[str] = ()) -> Any:
    """``helper_cls(Config(**settings))``; ``settings`` are ``key=value`` strings (lists: ``a;b``)."""
    fields = {f.name: f for f in dataclasses.fields(helper_cls.Config)}
    hints = typing.get_type_hints(helper_cls.Config)
    kwargs = {}
    for item in settings:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or key not in fields:
            raise ToolError(f"--helper_config: {item!r} is not key=value with a key of "
                            f"{helper_cls.__module__}.{helper_cls.__name__}.Config "
                            f"({', '.join(sorted(fields))})")
        kwargs[key] = _convert(value.strip(), hints[key], key)
    return helper_cls(helper_cls.Config(**kwargs))


# -- input shapes ------------------------------------------------------------------------------
def parse_shape(text: str, flag: str = "--input_shape") -> tuple[int, ...]:
    """``"1,8,8"`` -> ``(1, 8, 8)`` (one input, no batch dimension)."""
    try:
        shape = tuple(int(v) for v in str(text).replace("x", ",").split(",") if v.strip())
    except ValueError:
        shape = ()
    if not shape or any(v <= 0 for v in shape):
        raise ToolError(f"{flag}: expected positive integers such as 3,32,32 (no batch), got {text!r}")
    return shape


def resolve_input_shape(input_shape: str | Sequence[int] | None, helper: Any = None,
                        meta: dict | None = None, source: str = "the model") -> tuple[int, ...]:
    """``--input_shape`` if given, else the helper's, else the one the artifact records.

    A helper whose input shape differs from the one the artifact was trained on is refused
    (pass the training run's data settings, e.g. ``--helper_config=image_size=8``)."""
    recorded = (meta or {}).get("input_shape")
    if input_shape and helper is not None:
        raise ToolError("give --helper or --input_shape, not both (the helper sets the shape)")
    if input_shape:
        return input_shape if isinstance(input_shape, tuple) else (
            parse_shape(input_shape) if isinstance(input_shape, str) else tuple(input_shape))
    if helper is not None:
        shape = tuple(helper.input_shape)
        if recorded is not None and list(recorded) != list(shape):
            raise ToolError(f"{source} was trained on inputs of shape {list(recorded)} but the helper "
                            f"feeds {list(shape)}; pass the training run's data settings as "
                            "--helper_config=key=value (e.g. its image size)")
        return shape
    if recorded is not None:
        return tuple(int(v) for v in recorded)
    raise ToolError(f"{source} does not record its input shape: pass --helper or --input_shape")


# -- files -------------------------------------------------------------------------------------
def load_artifact(path: str, helper: Any = None, base: nn.Module | None = None
                  ) -> tuple[nn.Module, dict]:
    """``compression.artifacts.load_model`` of a model artifact, in eval mode; ``(model, file dict)``.

    Resolve ``--helper`` first (``helper_from_flags``): importing a user's helper module
    registers the nets it defines, and an artifact of a class that is not a registered net
    (the Python API's) is rebuilt on ``helper.build_model()``, or on ``base`` (``--base``: the
    class, built with no arguments). A training checkpoint is
    refused although ``load_model`` accepts one: it holds the weights of an unfinished run,
    and the tools report on the model a learner delivered."""
    if os.path.isdir(path):
        raise ToolError(f"{path} is a directory, not a model artifact: give the file a learner "
                        f"wrote there (expected {ARTIFACT_EXPECTED})")
    if not os.path.isfile(path):
        raise ToolError(f"no such file: {path} (expected {ARTIFACT_EXPECTED})")
    try:
        check_complete(path)
        model, obj = load_model(path, base=helper.build_model() if helper is not None else base)
    except CheckpointError as exc:
        recorded = re.search(r"the module (\S+), not a registered net", str(exc))
        hint = ""
        if recorded:
            module, _, name = recorded.group(1).rpartition(".")
            hint = (f"; pass --base={module}:{name} (the class, built with no arguments), or "
                    "--helper=pkg.module:YourHelper whose build_model() makes it (docs/tools.md)")
        elif "unknown net" in str(exc):
            hint = ("; a net of your own is registered when its module is imported: pass "
                    "--helper=pkg.module:YourHelper")
        raise ToolError(f"{str(exc).split(': pass an instance')[0]}; expected "
                        f"{ARTIFACT_EXPECTED}{hint}") from exc
    if obj.get("kind") == "checkpoint":
        raise ToolError(f"{path} is a training checkpoint (--save_path, for resuming a run), not "
                        f"{ARTIFACT_EXPECTED}")
    return model.eval(), obj


def check_writable(path: str) -> str:
    """Create ``path``'s directory and make sure a file can be written there (before any long
    computation); returns ``path``."""
    if not path:
        raise ToolError("empty output path")
    if os.path.isdir(path):
        raise ToolError(f"cannot write {path}: it is a directory")
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=directory)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise ToolError(f"cannot write {path}: {exc.strerror or exc} ({directory})") from exc
    return path


# -- entry scripts -----------------------------------------------------------------------------
def define_input_flags(flag_values: Any) -> None:
    """``--helper``, ``--helper_config`` and ``--input_shape`` on ``flag_values``."""
    from absl import flags

    flags.DEFINE_string("helper", "", "ModelHelper giving the input shape (and data): a module of "
                        "nets/ such as resnet_at_digits, or pkg.module:ClassName",
                        flag_values=flag_values)
    flags.DEFINE_list("helper_config", [], "helper config overrides key=value, e.g. image_size=8",
                      flag_values=flag_values)
    flags.DEFINE_string("input_shape", "", "one input's shape without batch, e.g. 1,8,8 "
                        "(default: the helper's, else the one the artifact records)",
                        flag_values=flag_values)
    flags.DEFINE_string("base", "", "pkg.module:ClassName of the model class of an artifact "
                        "saved by the Python API (not a registered net), built with no "
                        "arguments", flag_values=flag_values)


def base_from_flags(values: dict) -> nn.Module | None:
    """``--base=pkg.module:Class``: an instance (no arguments) of the class an artifact of the
    Python API was saved from, to rebuild it on; None when not given."""
    name = values.get("base") or ""
    if not name:
        return None
    module_name, _, attr = name.partition(":") if ":" in name else name.rpartition(".")
    try:
        cls = importlib.import_module(module_name)
        for part in attr.split("."):
            cls = getattr(cls, part)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ToolError(f"--base={name}: cannot import it ({exc}); give pkg.module:ClassName of "
                        "a class importable from here (PYTHONPATH)") from exc
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ToolError(f"--base={name} is not an nn.Module class")
    try:
        return cls()
    except TypeError as exc:
        raise ToolError(f"--base={name}: {cls.__name__}() needs arguments ({exc}); write a "
                        "ModelHelper whose build_model() makes it and pass --helper") from exc


def helper_from_flags(values: dict) -> Any:
    """The helper named by ``--helper`` (with ``--helper_config``), or None."""
    if not values.get("helper"):
        if values.get("helper_config"):
            raise ToolError("--helper_config needs --helper")
        return None
    return make_helper(resolve_helper(values["helper"]), values.get("helper_config") or [])


def tool_main(main: Callable[[], None], errors: tuple = ()) -> Callable[[list], None]:
    """An ``app.run`` target: ``main()``, with user errors printed as one line (exit 2)."""
    def run(argv: list) -> None:
        if len(argv) > 1:
            raise SystemExit(f"error: unexpected positional arguments: {' '.join(argv[1:])}")
        tune_malloc()
        try:
            main()
        except USER_ERRORS + tuple(errors) as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
    return run


def run_tool(module_name: str, main: Callable[[], None], errors: tuple = ()) -> None:
    """``app.run(tool_main(main, errors))`` for the tool module ``module_name``.

    Run as a console script, ``__main__`` is the installer's wrapper: the tool's docstring and
    flags are made its own, so ``--help`` reads as with ``python -m tools.<tool>``."""
    from absl import app, flags

    if module_name != "__main__":
        wrapper = sys.modules["__main__"]
        if not getattr(wrapper, "__doc__", None):
            wrapper.__doc__ = sys.modules[module_name].__doc__
        for flag in flags.FLAGS.get_key_flags_for_module(module_name):
            flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(tool_main(main, errors))
