"""Distiller's CIFAR models (``nets/models/distiller_cifar.py``): parameter counts from the
architectures' arithmetic, Distiller's module names, shapes, the channel graph, specs, the
helpers' ``--net`` and one digits run of ``--net=preact_resnet20_cifar``."""
from __future__ import annotations

import io
import json

import pytest
import torch
import torch.fx
from torch import nn

from compression.graph.layers import analyse, choose_layers
from nets.models.distiller_cifar import PREACT_BLOCKS, RESNET_BLOCKS, VGG_CFGS
from nets.registry import build_from_spec, create_net, list_nets, net_spec
from tests.conftest import finish, start_entry
from utils.config import ConfigError


# -- parameter counts by hand ---------------------------------------------------------------------
def conv(cin: int, cout: int, k: int, bias: bool = False) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def bn(c: int) -> int:
    return 2 * c


def fc(cin: int, cout: int) -> int:
    return cin * cout + cout


STAGES = [(16, 16), (16, 32), (32, 64)]        # (stage input, stage width)


def resnet_params(n: int) -> int:
    """Stem conv+BN; blocks of two conv3x3+BN; a 1x1 conv+BN shortcut where the width changes."""
    total = conv(3, 16, 3) + bn(16) + fc(64, 10)
    for cin, c in STAGES:
        total += conv(cin, c, 3) + bn(c) + conv(c, c, 3) + bn(c)
        total += conv(cin, c, 1) + bn(c) if cin != c else 0
        total += (n - 1) * 2 * (conv(c, c, 3) + bn(c))
    return total


def preact_params(n: int, conv_ds: bool) -> int:
    """Stem conv; blocks BN + conv3x3 + BN + conv3x3; final BN; 1x1 conv shortcuts (conv_ds)
    or parameter-free ones."""
    total = conv(3, 16, 3) + bn(64) + fc(64, 10)
    for cin, c in STAGES:
        total += bn(cin) + conv(cin, c, 3) + bn(c) + conv(c, c, 3)
        total += conv(cin, c, 1) if conv_ds and cin != c else 0
        total += (n - 1) * (bn(c) + conv(c, c, 3) + bn(c) + conv(c, c, 3))
    return total


def vgg_params(cfg: list, batch_norm: bool) -> int:
    total, cin = fc(512, 10), 3
    for v in (v for v in cfg if v != "M"):
        total += conv(cin, v, 3, bias=True) + (bn(v) if batch_norm else 0)
        cin = v
    return total


SIMPLENET = conv(3, 6, 5, True) + conv(6, 16, 5, True) + fc(400, 120) + fc(120, 84) + fc(84, 10)

# the exact counts (10 classes, 3 input channels, 32x32)
PARAM_COUNTS = {
    "resnet20_cifar": 272_474, "resnet32_cifar": 466_906, "resnet44_cifar": 661_338,
    "resnet56_cifar": 855_770,
    "preact_resnet20_cifar": 269_722, "preact_resnet32_cifar": 464_154,
    "preact_resnet44_cifar": 658_586, "preact_resnet56_cifar": 853_018,
    "preact_resnet110_cifar": 1_727_962,
    "preact_resnet20_cifar_conv_ds": 272_282, "preact_resnet32_cifar_conv_ds": 466_714,
    "preact_resnet44_cifar_conv_ds": 661_146, "preact_resnet56_cifar_conv_ds": 855_578,
    "preact_resnet110_cifar_conv_ds": 1_730_522,
    "vgg11_cifar": 9_225_610, "vgg11_bn_cifar": 9_231_114, "vgg13_cifar": 9_410_122,
    "vgg13_bn_cifar": 9_416_010, "vgg16_cifar": 14_719_818, "vgg16_bn_cifar": 14_728_266,
    "vgg19_cifar": 20_029_514, "vgg19_bn_cifar": 20_040_522,
    "simplenet_cifar": 62_006,
}
ARITHMETIC = {
    **{f"resnet{d}_cifar": resnet_params(n) for d, n in RESNET_BLOCKS.items()},
    **{f"preact_resnet{d}_cifar": preact_params(n, False) for d, n in PREACT_BLOCKS.items()},
    **{f"preact_resnet{d}_cifar_conv_ds": preact_params(n, True) for d, n in PREACT_BLOCKS.items()},
    **{f"vgg{d}_cifar": vgg_params(cfg, False) for d, cfg in VGG_CFGS.items()},
    **{f"vgg{d}_bn_cifar": vgg_params(cfg, True) for d, cfg in VGG_CFGS.items()},
    "simplenet_cifar": SIMPLENET,
}
NAMES = sorted(PARAM_COUNTS)
RESNETS = [n for n in NAMES if "resnet" in n]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_every_distiller_name_is_registered():
    assert set(ARITHMETIC) == set(PARAM_COUNTS)
    assert set(NAMES) <= set(list_nets())


@pytest.mark.parametrize("name", NAMES)
def test_param_counts(name):
    assert ARITHMETIC[name] == PARAM_COUNTS[name]
    assert n_params(create_net(name)) == PARAM_COUNTS[name]


def test_resnet20_cifar_is_this_projects_resnet20_with_distillers_names():
    ours = {k.replace("shortcut", "downsample"): v.shape
            for k, v in create_net("resnet20").state_dict().items()}
    theirs = {k: v.shape for k, v in create_net("resnet20_cifar").state_dict().items()}
    assert ours == theirs


# -- Distiller's module names ------------------------------------------------------------------
# as Distiller's schedule files write them (without DataParallel's ``module.``)
DISTILLER_NAMES = {
    "resnet20_cifar": ["conv1.weight", "bn1.weight", "relu", "layer1.0.conv1.weight",
                       "layer1.0.bn1.bias", "layer1.0.relu1", "layer1.0.conv2.weight",
                       "layer1.0.bn2.weight", "layer1.0.relu2", "layer1.0.residual_eltwiseadd",
                       "layer2.0.downsample.0.weight", "layer2.0.downsample.1.weight",
                       "layer3.0.downsample.0.weight", "layer3.2.conv2.weight", "avgpool",
                       "fc.weight", "fc.bias"],
    "preact_resnet20_cifar": ["conv1.weight", "layer1.0.pre_bn.weight", "layer1.0.pre_relu",
                              "layer1.0.conv1.weight", "layer1.0.bn.weight", "layer1.0.relu",
                              "layer1.0.conv2.weight", "layer2.0.downsample.0",
                              "layer2.0.downsample.1", "layer3.2.pre_relu", "final_bn.weight",
                              "final_relu", "avgpool", "fc.weight"],
    "preact_resnet20_cifar_conv_ds": ["layer2.0.downsample.weight", "layer3.0.downsample.weight",
                                      "layer1.0.pre_relu", "final_relu"],
    "vgg16_cifar": [f"features.{i}.weight" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)]
    + ["features.1", "features.4", "classifier.weight", "classifier.bias"],
    "vgg16_bn_cifar": ["features.0.weight", "features.1.weight", "features.2", "features.3.weight",
                       "features.7.weight", "features.40.weight", "features.41.running_var",
                       "classifier.weight"],
    "simplenet_cifar": ["conv1.weight", "relu_conv1", "pool1", "conv2.weight", "relu_conv2",
                        "pool2", "fc1.weight", "relu_fc1", "fc2.weight", "relu_fc2", "fc3.weight"],
}


@pytest.mark.parametrize("name", sorted(DISTILLER_NAMES))
def test_distiller_module_names(name):
    model = create_net(name)
    have = set(dict(model.named_modules())) | set(model.state_dict())
    missing = [n for n in DISTILLER_NAMES[name] if n not in have]
    assert not missing


@pytest.mark.parametrize("name", ["resnet20_cifar", "preact_resnet20_cifar", "vgg16_bn_cifar",
                                  "simplenet_cifar"])
def test_relus_are_modules(name):
    """PACT / DoReFa quantize every ReLU module: none may hide in a functional call."""
    model = create_net(name)
    graph = torch.fx.symbolic_trace(model).graph
    assert not [n for n in graph.nodes if n.op == "call_function" and "relu" in str(n.target)]
    assert all(not m.inplace for m in model.modules() if isinstance(m, nn.ReLU))


def test_pact_overrides_resolve_on_preact(tmp_path):
    """The quantizer of Distiller's preact_resnet20_cifar_pact.yaml names this model's modules."""
    from compression.schedule.names import resolve_names
    from compression.schedule.policy import load_policy

    path = tmp_path / "pact.yaml"
    path.write_text(
        "quantizers:\n  pact_quantizer:\n    class: PACTQuantizer\n    act_clip_init_val: 8.0\n"
        "    bits_activations: 4\n    bits_weights: 3\n    overrides:\n"
        + "".join(f"      {m}:\n        bits_weights: null\n        bits_activations: null\n"
                  for m in ("conv1", "layer1.0.pre_relu", "final_relu", "fc"))
        + "policies:\n  - quantizer:\n      instance_name: pact_quantizer\n"
          "    starting_epoch: 0\n    ending_epoch: 200\n    frequency: 1\n")
    mapped = resolve_names(load_policy(str(path)), create_net("preact_resnet20_cifar"))
    assert not mapped                   # every name used as written


# -- shapes, stages, the channel graph -----------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_forward_32x32_stages_and_trace(name):
    torch.manual_seed(0)
    model = create_net(name, num_classes=7).eval()
    x = torch.randn(2, 3, 32, 32)
    outputs = {}
    handles = [model.get_submodule(stage).register_forward_hook(
        lambda _m, _i, out, stage=stage: outputs.__setitem__(stage, out))
        for stage in model.stage_names]
    with torch.no_grad():
        y = model(x)
        for handle in handles:
            handle.remove()
        y_traced = torch.fx.symbolic_trace(model)(x)
    assert y.shape == (2, 7)
    assert (y - y_traced).abs().max().item() <= 1e-5
    assert list(outputs) == list(model.stage_names)
    sides = [out.shape[-1] for out in outputs.values()]
    assert sides == sorted(sides, reverse=True)


@pytest.mark.parametrize("name", RESNETS)
def test_digits_size_inputs(name):
    model = create_net(name, num_classes=10, in_channels=1).eval()
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_input_size_of_vgg_and_simplenet():
    assert create_net("simplenet_cifar", in_channels=1, input_size=16)(
        torch.randn(2, 1, 16, 16)).shape == (2, 10)
    vgg = create_net("vgg11_cifar", in_channels=1, input_size=64)
    assert vgg.classifier.in_features == 512 * 4
    assert vgg(torch.randn(1, 1, 64, 64)).shape == (1, 10)
    with pytest.raises(ValueError, match="multiple of 32"):
        create_net("vgg16_cifar", input_size=16)
    with pytest.raises(ValueError, match="at least 16"):
        create_net("simplenet_cifar", input_size=8)


@pytest.mark.parametrize("name", NAMES)
def test_channel_graph_traces(name):
    model = create_net(name)
    layers = analyse(model, (3, 32, 32))
    readers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert [layer.name for layer in layers] == readers       # every conv / linear, in order
    assert any(layer.mode == "chain" for layer in layers)
    assert choose_layers(layers, skip_first=True, skip_last=True, skip_names=[])


def test_channel_graph_on_digits_preact():
    layers = analyse(create_net("preact_resnet20_cifar", in_channels=1), (1, 8, 8))
    chains = {layer.name for layer in layers if layer.mode == "chain"}
    assert {f"layer{s}.{b}.conv2" for s in (1, 2, 3) for b in range(3)} <= chains


# -- specs and the helpers' --net ----------------------------------------------------------------
@pytest.mark.parametrize("name", ["resnet20_cifar", "preact_resnet20_cifar",
                                  "preact_resnet20_cifar_conv_ds", "vgg11_bn_cifar",
                                  "simplenet_cifar"])
def test_spec_round_trip(name):
    spec = net_spec(name, num_classes=10, in_channels=1)
    buffer = io.BytesIO()
    torch.save({"spec": spec}, buffer)
    buffer.seek(0)
    rebuilt = build_from_spec(torch.load(buffer, weights_only=True)["spec"])
    original = create_net(name, num_classes=10, in_channels=1)
    sd_a, sd_b = original.state_dict(), rebuilt.state_dict()
    assert list(sd_a) == list(sd_b)
    assert all(sd_a[k].shape == sd_b[k].shape for k in sd_a)
    rebuilt.load_state_dict(sd_a)


def test_helpers_net_option():
    from nets import resnet_at_cifar10, resnet_at_digits

    digits = resnet_at_digits.ModelHelper(resnet_at_digits.Config(net="preact_resnet20_cifar"))
    assert digits.model_name == "preact_resnet20_cifar"
    assert digits.net_spec() == net_spec("preact_resnet20_cifar", num_classes=10, in_channels=1)
    sized = resnet_at_digits.ModelHelper(resnet_at_digits.Config(net="simplenet_cifar",
                                                                 image_size=16))
    assert sized.net_spec()["kwargs"]["input_size"] == 16
    assert sized.build_model()(torch.randn(2, 1, 16, 16)).shape == (2, 10)
    default = resnet_at_digits.ModelHelper()
    assert default.net_spec()["net"] == "resnet20" and default.model_name == "resnet_20"
    cifar = resnet_at_cifar10.ModelHelper(resnet_at_cifar10.Config(net="vgg16_cifar"))
    assert cifar.net_spec() == net_spec("vgg16_cifar", num_classes=10, in_channels=3)
    for config in (resnet_at_digits.Config, resnet_at_cifar10.Config):
        with pytest.raises(ConfigError, match="--net: unknown net 'vgg17'") as info:
            config(net="vgg17")
        assert ", ".join(list_nets()) in str(info.value)


def test_entry_run_with_preact_on_digits(tmp_path):
    """One tiny full-prec run of the digits entry script with a Distiller net."""
    save_eval = tmp_path / "eval" / "model.ckpt"
    proc = start_entry("resnet_at_digits_run.py", "--net=preact_resnet20_cifar",
                       "--nb_epochs_rat=0.005", "--image_size=8", "--batch_size=32",
                       "--report_latency=false", "--log_dir=",
                       f"--save_path={tmp_path / 'ckpt' / 'model.ckpt'}",
                       f"--save_path_eval={save_eval}", cwd=tmp_path)
    result = finish(proc)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "preact_resnet20_cifar @ digits" in result.stdout + result.stderr
    report = json.loads((save_eval.parent / "report.json").read_text())
    assert report["model"] == "preact_resnet20_cifar"

    from compression.artifacts.model import load_model

    model, saved = load_model(str(save_eval))
    assert saved["spec"] == net_spec("preact_resnet20_cifar", num_classes=10, in_channels=1)
    assert "layer1.0.pre_relu" in dict(model.named_modules())


@pytest.mark.parametrize("name", ["preact_resnet20_cifar", "preact_resnet20_cifar_conv_ds",
                                  "resnet20_cifar"])
def test_thinning_across_the_shortcuts(name):
    """Half the input channels of every prunable layer removed: the pool-and-pad shortcut's
    zero channels stay in place, the stream shrinks in step, the spec rebuilds the result."""
    from compression.surgery.thinning import thin

    model = create_net(name).eval()
    layers = analyse(model, (3, 32, 32))
    keep = {layer.name: torch.arange(0, layer.in_channels, 2)
            for layer in choose_layers(layers, True, False, [])}
    thinned, spec = thin(model, layers, keep, net_spec(name, num_classes=10, in_channels=3))
    assert n_params(thinned) < n_params(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert thinned.eval()(x).shape == (2, 10)
