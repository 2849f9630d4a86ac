"""The front door (``pocketflow_torch``): every exported name is its home module's object, every
registration point reached through it really registers, the worked example imports from it
alone, and the console scripts of setup.py resolve and run like ``python -m tools.<name>``.

Every registration is undone after its test: a registry is replaced by a copy (``monkeypatch``)
once its built-ins are registered, so it holds the built-ins alone again afterwards.
The subprocesses (console scripts, imports without onnx) start together before the first test
of the module, so that they overlap the in-process tests.
"""
from __future__ import annotations

import ast
import copy
import importlib
import os
import subprocess
import sys

import pytest
import torch
from absl import flags
from torch import nn
from torch.nn.utils import parametrize

import pocketflow_torch as pf
from compression.graph import analyse, ops, pruners
from compression.quantization import quantizers
from compression.selection import criteria, residual_groups
from compression.surgery.thinning import mask_inputs, thin
from learners import launch, registry as learner_registry
from nets import helpers, registry as net_registry, resnet_at_digits
from tests.conftest import REPO, finish
from tests.zoo.nets import Scale, ScaledNet
from tools import common as tool_common
from compression.artifacts import save_model
from utils import model_io
from utils.checkpoint import CheckpointError
from utils.config import ConfigError, define_flags

SHAPE = (3, 8, 8)
HOME = {
    "compress": "learners.api", "evaluate": "learners.api", "load_model": "learners.api",
    "Result": "learners.api", "list_learners": "learners.registry",
    "fold_batchnorm": "compression.surgery.inference", "tune_malloc": "utils.malloc",
    "entry": "learners.launch",
    "register_net": "nets.registry", "net_spec": "nets.registry",
    "register_helper": "nets.helpers", "AbstractModelHelper": "nets.abstract_model_helper",
    "ImageClassificationHelper": "nets.abstract_model_helper",
    "HelperConfig": "nets.abstract_model_helper",
    "FashionMnist": "datasets.fmnist", "Cifar10": "datasets.cifar10",
    "Ilsvrc12": "datasets.ilsvrc12", "InMemoryImageDataset": "datasets.base",
    "PocketFlowModelHelper": "nets.pocketflow_helper",
    "DataError": "datasets.errors",
    "option": "utils.config", "nested": "utils.config", "check": "utils.config",
    "register_learner": "learners.registry", "Learner": "learners.base",
    "LearnerResult": ("learners.base", "Result"),
    "register_pruner": "compression.graph.pruners", "LayerPruner": "compression.graph.pruners",
    "ReaderPruner": "compression.graph.pruners", "ChannelwisePruner": "compression.graph.pruners",
    "PassthroughPruner": "compression.graph.pruners", "MixingPruner": "compression.graph.pruners",
    "register_op": "compression.graph.ops",
    "register_selection": "compression.selection.criteria",
    "SelectionOptions": "compression.selection.criteria",
    "register_group_criterion": "compression.selection.residual_groups",
    "register_weight_quantizer": "compression.quantization.quantizers",
    "register_spec_transform": "utils.model_io",
    "register_format": "deployment.formats", "DeployFormat": "deployment.formats",
}
# What the front door must offer whatever else it grows.
REQUIRED = {"compress", "evaluate", "load_model", "Result", "list_learners", "fold_batchnorm",
            "tune_malloc", "entry", "register_learner", "Learner", "LearnerResult", "register_net",
            "net_spec", "register_helper", "AbstractModelHelper", "ImageClassificationHelper",
            "HelperConfig", "register_pruner", "ChannelwisePruner", "ReaderPruner",
            "MixingPruner", "PassthroughPruner", "LayerPruner", "register_op",
            "register_selection", "SelectionOptions", "register_group_criterion",
            "register_weight_quantizer", "register_spec_transform", "register_format",
            "DeployFormat", "option", "nested", "check"}
PROJECT = {"datasets", "utils", "training", "nets", "compression", "deployment", "learners",
           "tools", "examples", "benchmarks", "scripts", "tests"}
EXAMPLE = ["examples/convnet_at_fmnist.py", "examples/convnet_at_fmnist_run.py"]
SCRIPTS = {"pocketflow-summary", "pocketflow-draw", "pocketflow-export-onnx", "pocketflow-latency",
           "pocketflow-deploy", "pocketflow-sensitivity", "pocketflow-integer-only"}
PLUGGED = "front_door_plugged"   # a helper name only the test distribution's entry point gives
OPTIONAL = ("onnx", "onnxruntime", "onnxscript", "executorch", "torchao")
# Every entry point imported in one process: the tools define their flags on absl's global
# FLAGS, so the flags a tool's import defined are removed before the next tool is imported.
CHECK_ENTRIES = """import importlib, inspect, sys
from absl import flags
for target in sys.argv[1:]:
    before = set(flags.FLAGS)
    module, _, function = target.partition(":")
    fn = getattr(importlib.import_module(module), function)
    required = [p for p in inspect.signature(fn).parameters.values() if p.default is p.empty
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if callable(fn) and not required and fn.__module__ == module:
        print("ok", target, flush=True)
    for name in set(flags.FLAGS) - before:
        delattr(flags.FLAGS, name)
"""
WITHOUT_OPTIONAL = f"""import sys
for name in {OPTIONAL!r}:
    sys.modules[name] = None          # import of any of them fails
import pocketflow_torch as pf
missing = [n for n in pf.__all__ if not hasattr(pf, n)]
assert not missing, missing
print("ok", len(pf.__all__))
"""


# -- setup.py, read without running it -----------------------------------------------------------
def _setup_tree() -> ast.Module:
    return ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))


def console_scripts() -> dict[str, tuple[str, str]]:
    """``name -> (module, function)`` of setup.py's ``CONSOLE_SCRIPTS``."""
    found = next(ast.literal_eval(node.value) for node in _setup_tree().body
                 if isinstance(node, ast.Assign)
                 and any(getattr(t, "id", None) == "CONSOLE_SCRIPTS" for t in node.targets))
    scripts = {}
    for line in found:
        name, _, target = (part.strip() for part in line.partition("="))
        module, _, function = target.partition(":")
        scripts[name] = (module, function)
    return scripts


def _setup_keywords() -> dict[str, ast.expr]:
    call = next(node for node in ast.walk(_setup_tree()) if isinstance(node, ast.Call)
                and getattr(node.func, "id", None) == "setup")
    return {kw.arg: kw.value for kw in call.keywords}


def _python(*args: str, pythonpath: tuple = ()) -> subprocess.Popen:
    path = os.pathsep.join(filter(None, [str(REPO), *map(str, pythonpath),
                                         os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def write_wrapper(path, name: str) -> str:
    """The launcher pip writes for the console script ``name`` of setup.py."""
    module, function = console_scripts()[name]
    path.write_text(f"import re\nimport sys\nfrom {module} import {function}\n"
                    "if __name__ == '__main__':\n"
                    "    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n"
                    f"    sys.exit({function}())\n")
    return str(path)


def write_plugin(root) -> str:
    """An installed distribution (its metadata only) naming a helper by entry point."""
    info = root / "front_door_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: front-door-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{helpers.ENTRY_POINT_GROUP}]\n"
                                           f"{PLUGGED} = nets.resnet_at_digits:ModelHelper\n")
    return str(root)


@pytest.fixture(scope="module", autouse=True)
def procs(tmp_path_factory):
    """The subprocesses of the module, started together: every entry point imported, the front
    door without onnx/executorch, and the pocketflow-summary launcher on a tiny artifact."""
    root = tmp_path_factory.mktemp("front_door")
    helper = resnet_at_digits.ModelHelper(resnet_at_digits.Config(image_size=8))
    torch.manual_seed(0)
    artifact = root / "model.ckpt"
    save_model(str(artifact), helper.build_model().eval(), helper.net_spec(),
                        helper.describe())
    plugin = write_plugin(root / "site")
    summary = write_wrapper(root / "pocketflow-summary", "pocketflow-summary")
    started = {"entries": _python("-c", CHECK_ENTRIES, *(f"{module}:{function}" for module, function
                                                         in console_scripts().values()))}
    started["without_optional"] = _python("-c", WITHOUT_OPTIONAL)
    started["summary"] = _python(summary, f"--model={artifact}", f"--helper={PLUGGED}",
                                 "--helper_config=image_size=8", f"--csv={root / 's.csv'}",
                                 pythonpath=(plugin,))
    started["summary_help"] = _python(summary, "--help")
    started["module_help"] = _python("-m", "tools.summary", "--help")
    started["summary_bad"] = _python(summary, f"--model={root / 'missing.ckpt'}")
    yield root, started
    for proc in started.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def done(procs, name: str) -> subprocess.CompletedProcess:
    return finish(procs[1][name], timeout=240)


# -- the names ------------------------------------------------------------------------------------
def test_every_name_is_the_object_of_its_home_module():
    assert len(pf.__all__) == len(set(pf.__all__))
    assert REQUIRED <= set(pf.__all__), REQUIRED - set(pf.__all__)
    assert set(pf.__all__) == set(HOME), set(pf.__all__) ^ set(HOME)
    for name in pf.__all__:
        module, attr = HOME[name] if isinstance(HOME[name], tuple) else (HOME[name], name)
        assert getattr(pf, name) is getattr(importlib.import_module(module), attr), name
    assert pf.Result is not pf.LearnerResult          # the API's result, the protocol's result
    undocumented = [name for name in REQUIRED if f"``{name}" not in (pf.__doc__ or "")]
    assert not undocumented, undocumented


def test_the_front_door_imports_without_onnx_or_executorch(procs):
    result = done(procs, "without_optional")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", str(len(pf.__all__))]


# -- the example ------------------------------------------------------------------------------
@pytest.mark.parametrize("path", EXAMPLE)
def test_the_example_imports_only_the_front_door(path):
    imported = set()
    for node in ast.walk(ast.parse((REPO / path).read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import"
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
    assert "pocketflow_torch" in imported
    assert not imported & PROJECT, imported & PROJECT


# -- registration points, each through pocketflow_torch -------------------------------------------
class ErfNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.lgamma(self.a(x))).mean((2, 3))


def _thinned(model: nn.Module, keep: dict) -> nn.Module:
    """``model`` thinned to ``keep``; checked against the masked model (same outputs)."""
    layers = analyse(model, SHAPE)
    masked = copy.deepcopy(model)
    mask_inputs(masked, keep)
    thinned, _ = thin(model, layers, keep)
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        assert torch.allclose(thinned(x), masked(x), atol=1e-5)
    return thinned


def test_a_pruner_registered_at_the_front_door_lets_its_layer_shrink(monkeypatch):
    monkeypatch.setattr(pruners, "_PRUNERS", list(pruners._PRUNERS))
    torch.manual_seed(0)
    model = ScaledNet(in_channels=3).eval()
    keep = {"b": torch.tensor([1, 4, 6])}
    assert "b" not in {layer.name for layer in analyse(model, SHAPE)}   # kept whole

    @pf.register_pruner(Scale)
    class ScalePruner(pf.ChannelwisePruner):
        params = ("weight",)
        size_attrs = ("channels",)

    layers = {layer.name: layer for layer in analyse(model, SHAPE)}
    assert layers["b"].mode == "chain" and layers["b"].followers == ["scale"]
    thinned = _thinned(model, keep)
    assert thinned.a.out_channels == thinned.scale.channels == 3
    assert thinned.scale.weight.shape == (3,)


def test_an_op_registered_at_the_front_door_passes_channels_through(monkeypatch):
    monkeypatch.setattr(ops, "OP_KINDS", dict(ops.OP_KINDS))
    torch.manual_seed(0)
    model = ErfNet().eval()
    keep = {"b": torch.tensor([0, 5, 7])}
    assert _thinned(model, keep).a.out_channels == 8     # an unknown op: its input stays whole
    with pytest.raises(ValueError, match="unknown op rule 'elementwize'"):
        pf.register_op(torch.lgamma, "elementwize")
    pf.register_op(torch.lgamma, "passthrough")
    assert _thinned(model, keep).a.out_channels == 3


def test_a_learner_registered_at_the_front_door_runs_through_the_api(monkeypatch, tmp_path):
    learner_registry.list_learners()   # the built-ins register into the original dict first
    monkeypatch.setattr(learner_registry, "_LEARNERS", dict(learner_registry._LEARNERS))
    monkeypatch.setattr(learner_registry, "_CONFIGS", dict(learner_registry._CONFIGS))
    import dataclasses

    @dataclasses.dataclass
    class HalveConfig:
        factor: float = pf.option(0.5, "scale of the head's weights")

        def __post_init__(self) -> None:
            pf.check(0 < self.factor <= 1, "factor", f"must be in (0, 1], got {self.factor}")

    @pf.register_learner("front-door-halve", config=HalveConfig, prefix="fdh")
    class Halve(pf.Learner):
        def compress(self, model: nn.Module, spec: dict) -> pf.LearnerResult:
            with torch.no_grad():
                model.fc.weight.mul_(self.cfg.factor)
            return pf.LearnerResult(model, spec, deploy_kind=None, deploy_reason="a test")

    assert "front-door-halve" in pf.list_learners()
    gen = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 1, 4, 4, generator=gen),
                                          torch.randint(0, 3, (32,), generator=gen))
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("conv", nn.Conv2d(1, 4, 3, padding=1))
    model.add_module("pool", nn.AdaptiveAvgPool2d(1))
    model.add_module("flat", nn.Flatten())
    model.add_module("fc", nn.Linear(4, 3))
    before = model.fc.weight.detach().clone()
    common = dict(out_dir=str(tmp_path), report_latency=False, export_format="none", epochs=1,
                  batch_size=16, batch_size_eval=16)
    with pytest.raises(ConfigError, match=r"--factor: must be in \(0, 1\], got 2"):
        pf.compress(model, data, data, "front-door-halve", factor=2.0, **common)
    result = pf.compress(model, data, data, "front-door-halve", factor=0.25, **common)
    assert torch.allclose(result.model.fc.weight, 0.25 * before)
    assert torch.allclose(pf.load_model(result.artifact, base=model).fc.weight, 0.25 * before)


def test_a_helper_registered_at_the_front_door_is_found_by_name(monkeypatch):
    monkeypatch.setattr(helpers, "HELPERS", dict(helpers.HELPERS))

    class FrontDoorHelper(pf.ImageClassificationHelper):
        pass

    assert pf.register_helper("front_door", FrontDoorHelper) is FrontDoorHelper
    assert helpers.resolve_helper("front_door") is FrontDoorHelper
    assert tool_common.resolve_helper("front_door") is FrontDoorHelper    # --helper=front_door
    pf.register_helper("front_door", FrontDoorHelper)                   # the same again: fine
    with pytest.raises(ValueError, match="'front_door' is already registered to .*FrontDoorHelper"):
        pf.register_helper("front_door", resnet_at_digits.ModelHelper)
    with pytest.raises(ValueError, match="'resnet_at_digits' is already registered to "
                                         "nets.resnet_at_digits:ModelHelper"):
        pf.register_helper("resnet_at_digits", FrontDoorHelper)
    pf.register_helper("resnet_at_digits", resnet_at_digits.ModelHelper)   # its own class: fine
    assert helpers.resolve_helper("resnet_at_digits") is resnet_at_digits.ModelHelper
    with pytest.raises(TypeError, match="expected a helper class or 'pkg.module:ClassName'"):
        pf.register_helper("by_path", "nets.resnet_at_digits.ModelHelper")

    # by path, imported when first resolved; and as a class decorator
    pf.register_helper("by_path", "nets.resnet_at_digits:ModelHelper")
    assert helpers.resolve_helper("by_path") is resnet_at_digits.ModelHelper

    @pf.register_helper("decorated")
    class Decorated(pf.ImageClassificationHelper):
        pass

    assert helpers.resolve_helper("decorated") is Decorated
    with pytest.raises(tool_common.ToolError) as err:
        tool_common.resolve_helper("front_dor")
    assert ("unknown helper 'front_dor'; valid helpers: " + ", ".join(helpers.helper_names())
            in str(err.value))
    assert "front_door" in helpers.helper_names() and "decorated" in helpers.helper_names()

    # an entry script: entry("front_door") defines the flags of that helper's Config
    class Stop(Exception):
        pass

    seen = []

    def define_flags_of(flag_values, helper_cls):
        seen.append(helper_cls)
        raise Stop

    monkeypatch.setattr(launch, "tune_malloc", lambda: None)
    monkeypatch.setattr(launch, "define_flags", define_flags_of)
    with pytest.raises(Stop):
        pf.entry("front_door")
    assert seen == [FrontDoorHelper]


def test_an_installed_packages_entry_point_names_a_helper(monkeypatch, tmp_path):
    with pytest.raises(helpers.UnknownHelper, match=f"unknown helper '{PLUGGED}'"):
        helpers.resolve_helper(PLUGGED)
    monkeypatch.syspath_prepend(write_plugin(tmp_path))
    assert helpers.resolve_helper(PLUGGED) is resnet_at_digits.ModelHelper


@pytest.fixture
def restore_selections(monkeypatch):
    monkeypatch.setattr(criteria, "SELECTORS", dict(criteria.SELECTORS))
    saved = list(criteria.SELECTION_CHOICES)
    yield
    criteria.SELECTION_CHOICES[:] = saved


def _first(normal_eqs, weight, nb_keep, cfg, gen, seed):
    """A selection criterion: the first ``nb_keep`` input channels."""
    return torch.arange(nb_keep, device=weight.device), weight


def _parse_selection(value: str) -> str:
    fv = flags.FlagValues()
    define_flags(pf.SelectionOptions, fv, "cpr")
    fv(["prog", f"--cpr_selection={value}"])
    return fv["cpr_selection"].value


def test_a_selection_registered_at_the_front_door_is_an_option_and_selects(restore_selections):
    with pytest.raises(ConfigError, match="^--selection: unknown criterion 'front-door-first'"):
        pf.SelectionOptions(selection="front-door-first")
    with pytest.raises(flags.IllegalFlagValueError):
        _parse_selection("front-door-first")

    assert pf.register_selection("front-door-first")(_first) is _first
    options = pf.SelectionOptions(selection="front-door-first", nb_crops_per_smpl=4)
    assert _parse_selection("front-door-first") == "front-door-first"
    torch.manual_seed(0)
    full = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1)).eval()
    layers = [layer for layer in analyse(full, SHAPE) if not layer.is_first]
    counts = {layer.name: 3 for layer in layers}
    keep, _ = criteria.select_channels(full, copy.deepcopy(full), layers, counts,
                                       [torch.randn(4, *SHAPE)], options)
    assert {name: kept.tolist() for name, kept in keep.items()} == {"2": [0, 1, 2], "4": [0, 1, 2]}


def test_a_group_criterion_registered_at_the_front_door_chooses_residual_groups(monkeypatch):
    monkeypatch.setattr(residual_groups, "GROUP_CRITERIA", dict(residual_groups.GROUP_CRITERIA))
    torch.manual_seed(0)
    model = net_registry.create_net("resnet20", num_classes=10, in_channels=3).eval()
    layers = analyse(model, SHAPE)
    chosen = [layer for layer in layers if not layer.is_first]
    counts = {layer.name: layer.in_channels // 2 for layer in chosen}
    options = pf.SelectionOptions(nb_crops_per_smpl=4)
    args = (model, layers, chosen, counts, [torch.randn(4, *SHAPE)], "front-door-last")
    with pytest.raises(ValueError, match="unknown residual-group criterion 'front-door-last'"):
        residual_groups.coupled_keep(*args, options)

    @pf.register_group_criterion("front-door-last")
    def last(group, model, nb_keep, batches, settings, seed):
        return torch.arange(len(group.roots) - nb_keep, len(group.roots))

    keep, records = residual_groups.coupled_keep(*args, options)
    groups = residual_groups.residual_groups(layers, chosen)
    assert len(records) == len(groups) == 3
    assert {r["criterion"] for r in records} == {"front-door-last"}
    for group in groups:
        n = len(group.roots)
        for name, cols in group.columns.items():
            assert keep[name].tolist() == sorted(cols[k] for k in range(n - n // 2, n))


def test_a_weight_quantizer_registered_at_the_front_door_is_found_and_baked(monkeypatch):
    importlib.import_module("compression.quantization.codebook")   # built-ins register first
    monkeypatch.setattr(quantizers, "WEIGHT_QUANTIZERS", list(quantizers.WEIGHT_QUANTIZERS))

    class SignQuantizer(nn.Module):
        """1 bit: the sign times the mean magnitude of each output channel."""

        bits, bucket_type, bucket_size = 1, "channel", 512

        def forward(self, weight: torch.Tensor) -> torch.Tensor:
            return weight.sign() * weight.abs().mean(dim=(1, 2, 3), keepdim=True)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    expected = SignQuantizer()(model[0].weight.detach())
    parametrize.register_parametrization(model[0], "weight", SignQuantizer())
    assert quantizers.quantizers_of(model) == {}
    assert pf.register_weight_quantizer(SignQuantizer) is SignQuantizer
    assert list(quantizers.quantizers_of(model)) == ["0"]
    quantizers.detach_weight_quantizers(model)
    assert not parametrize.is_parametrized(model[0])
    assert torch.equal(model[0].weight, expected)


class TinyNet(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.conv(x)), 1))


def test_a_net_and_a_spec_transform_registered_at_the_front_door_rebuild_an_artifact(
        monkeypatch, tmp_path):
    net_registry.list_nets()           # the built-ins register into the original dict first
    monkeypatch.setattr(net_registry, "_NETS", dict(net_registry._NETS))
    monkeypatch.setattr(model_io, "_TRANSFORMS", dict(model_io._TRANSFORMS))

    @pf.register_net("front_door_tiny")
    def front_door_tiny(num_classes: int = 10, in_channels: int = 1, width: int = 4) -> TinyNet:
        return TinyNet(width)

    def new_head(model: nn.Module, entry: dict) -> nn.Module:
        model.head = nn.Linear(model.head.in_features, entry["classes"])
        return model

    torch.manual_seed(0)
    model = new_head(TinyNet(6), {"classes": 3}).eval()
    spec = {**pf.net_spec("front_door_tiny", width=6),
            "transforms": [{"type": "front-door-head", "classes": 3}]}
    path = str(tmp_path / "model.ckpt")
    save_model(path, model, spec)
    with pytest.raises(CheckpointError, match="unknown architecture transform 'front-door-head'"):
        pf.load_model(path)
    assert pf.register_spec_transform("front-door-head")(new_head) is new_head
    reloaded = pf.load_model(path)
    assert type(reloaded) is TinyNet and reloaded.head.out_features == 3
    x = torch.randn(2, 1, 5, 5)
    with torch.no_grad():
        assert torch.equal(reloaded(x), model(x))


# -- console scripts ------------------------------------------------------------------------------
def test_setup_installs_the_console_scripts_and_not_the_examples():
    assert set(console_scripts()) == SCRIPTS
    assert all(module.startswith("tools.") and function == "cli"
               for module, function in console_scripts().values())
    keywords = _setup_keywords()
    assert ast.unparse(keywords["entry_points"]) == "{'console_scripts': CONSOLE_SCRIPTS}"
    included = ast.literal_eval(next(kw.value for kw in keywords["packages"].keywords
                                     if kw.arg == "include"))
    assert "tools*" in included
    assert not {"examples*", "benchmarks*"} & set(included)


def test_every_console_script_resolves_to_a_callable(procs):
    result = done(procs, "entries")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"ok {module}:{function}"
                                          for module, function in console_scripts().values()]


def test_the_summary_console_script_runs_with_a_helper_of_an_entry_point(procs):
    root = procs[0]
    result = done(procs, "summary")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{root / 'model.ckpt'}: ResNet")
    assert "layer1.0.conv1" in result.stdout and f"wrote {root / 's.csv'}" in result.stdout
    rows = (root / "s.csv").read_text().splitlines()
    assert rows[0].startswith("name,type,") and rows[1].startswith("conv1,Conv2d,16x1x3x3,")
    assert rows[-1].startswith("total,")


def test_the_console_scripts_help_and_errors_are_the_tools(procs):
    shown, module = done(procs, "summary_help"), done(procs, "module_help")
    assert shown.returncode == module.returncode == 1, shown.stderr   # absl's status after --help
    assert shown.stdout.startswith("Per-layer summary of a saved model")
    assert "--model: model artifact" in shown.stdout and "--csv:" in shown.stdout
    # the same text, but for the heading of the key flags (the launcher's path, the module's)
    wrapper, path = str(procs[0] / "pocketflow-summary"), str(REPO / "tools" / "summary.py")
    assert shown.stdout.replace(wrapper, path) == module.stdout
    bad = done(procs, "summary_bad")
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: no such file: ") and "Traceback" not in bad.stderr
