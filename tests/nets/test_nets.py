"""Tests for the net registry and the built-in network definitions."""
import io

import pytest
import torch
import torch.fx

from nets import registry
from nets.models.resnet_cifar import resnet_cifar
from nets.registry import build_from_spec, create_net, list_nets, net_spec, register_net

# Smallest convenient square input side per registered net (enough to check shapes).
INPUT_SIZES = {
    "lenet": 32,
    "mobilenet_v1": 64,
    "mobilenet_v2": 64,
    "resnet18": 64,
    "resnet34": 64,
    "resnet50": 64,
    "resnet20": 32,
    "resnet32": 32,
    "resnet44": 32,
    "resnet56": 32,
}

# Exact parameter counts of the standard configurations (default kwargs).
PARAM_COUNTS = {
    "lenet": 1_702_794,  # 10 classes, 3x32x32
    "mobilenet_v1": 4_231_976,  # 1000 classes
    "mobilenet_v2": 3_504_872,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet20": 272_474,  # 10 classes, projection shortcuts
    "resnet32": 466_906,
    "resnet44": 661_338,
    "resnet56": 855_770,
    "preact_resnet110_cifar": 1_727_962,
    "preact_resnet110_cifar_conv_ds": 1_730_522,
    "preact_resnet20_cifar": 269_722,
    "preact_resnet20_cifar_conv_ds": 272_282,
    "preact_resnet32_cifar": 464_154,
    "preact_resnet32_cifar_conv_ds": 466_714,
    "preact_resnet44_cifar": 658_586,
    "preact_resnet44_cifar_conv_ds": 661_146,
    "preact_resnet56_cifar": 853_018,
    "preact_resnet56_cifar_conv_ds": 855_578,
    "resnet20_cifar": 272_474,  # Distiller's CIFAR nets (nets/models/distiller_cifar.py)
    "resnet32_cifar": 466_906,
    "resnet44_cifar": 661_338,
    "resnet56_cifar": 855_770,
    "simplenet_cifar": 62_006,
    "vgg11_bn_cifar": 9_231_114,
    "vgg11_cifar": 9_225_610,
    "vgg13_bn_cifar": 9_416_010,
    "vgg13_cifar": 9_410_122,
    "vgg16_bn_cifar": 14_728_266,
    "vgg16_cifar": 14_719_818,
    "vgg19_bn_cifar": 20_040_522,
    "vgg19_cifar": 20_029_514,
}
# Distiller's CIFAR nets take 32x32 inputs (its VGGs: a multiple of 32)
INPUT_SIZES.update({name: 32 for name in PARAM_COUNTS if "_cifar" in name})

NUM_CLASSES = 7


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_every_net_has_expectations():
    assert set(list_nets()) == set(PARAM_COUNTS) == set(INPUT_SIZES)
    assert list_nets() == sorted(list_nets())


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("name", list_nets())
def test_forward_trace_and_stages(name, in_channels):
    torch.manual_seed(0)
    model = create_net(name, num_classes=NUM_CLASSES, in_channels=in_channels).eval()
    size = INPUT_SIZES[name]
    x = torch.randn(2, in_channels, size, size)

    stage_outputs = {}
    handles = [
        model.get_submodule(stage).register_forward_hook(
            lambda _m, _inp, out, stage=stage: stage_outputs.__setitem__(stage, out))
        for stage in model.stage_names
    ]
    with torch.no_grad():
        y = model(x)
    for h in handles:
        h.remove()
    assert y.shape == (2, NUM_CLASSES)
    assert list(stage_outputs) == list(model.stage_names)
    sides = [out.shape[-1] for out in stage_outputs.values()]
    assert all(out.dim() == 4 for out in stage_outputs.values())
    assert sides == sorted(sides, reverse=True)

    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        y_traced = traced(x)
    assert (y_traced - y).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", list_nets())
def test_param_counts(name):
    assert n_params(create_net(name)) == PARAM_COUNTS[name]


def test_generic_cifar_resnet():
    assert n_params(resnet_cifar(depth=20)) == PARAM_COUNTS["resnet20"]
    with pytest.raises(ValueError):
        resnet_cifar(depth=21)


def test_cifar_resnet_stage_widths():
    net = resnet_cifar(depth=8, num_classes=5, in_channels=1, widths=(8, 24, 40))
    convs = {name: tuple(m.weight.shape) for name, m in net.named_modules()
             if isinstance(m, torch.nn.Conv2d)}
    assert convs == {"conv1": (8, 1, 3, 3), "layer1.0.conv1": (8, 8, 3, 3),
                     "layer1.0.conv2": (8, 8, 3, 3), "layer2.0.conv1": (24, 8, 3, 3),
                     "layer2.0.conv2": (24, 24, 3, 3), "layer2.0.shortcut.0": (24, 8, 1, 1),
                     "layer3.0.conv1": (40, 24, 3, 3), "layer3.0.conv2": (40, 40, 3, 3),
                     "layer3.0.shortcut.0": (40, 24, 1, 1)}
    assert net(torch.randn(2, 1, 16, 16)).shape == (2, 5)
    for bad in [(8, 24), (8, 0, 40)]:
        with pytest.raises(ValueError, match="three positive channel counts"):
            resnet_cifar(depth=8, widths=bad)


def test_unknown_net_lists_valid_names():
    with pytest.raises(ValueError) as info:
        create_net("foo")
    message = str(info.value)
    assert "'foo'" in message
    assert ", ".join(list_nets()) in message


def test_duplicate_registration(monkeypatch):
    monkeypatch.setattr(registry, "_NETS", dict(registry._NETS))
    with pytest.raises(ValueError):
        register_net("resnet20")(lambda **kw: torch.nn.Identity())
    register_net("tmp_net")(lambda **kw: torch.nn.Identity())
    with pytest.raises(ValueError):
        register_net("tmp_net")(lambda **kw: torch.nn.Identity())


def test_spec_round_trip():
    spec = net_spec("mobilenet_v2", num_classes=10, depth_mult=0.5, small_input=True)
    assert spec == {"net": "mobilenet_v2",
                    "kwargs": {"num_classes": 10, "depth_mult": 0.5, "small_input": True}}
    buffer = io.BytesIO()
    torch.save({"spec": spec}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)["spec"]

    original = create_net("mobilenet_v2", num_classes=10, depth_mult=0.5, small_input=True)
    rebuilt = build_from_spec(loaded)
    sd_a, sd_b = original.state_dict(), rebuilt.state_dict()
    assert list(sd_a) == list(sd_b)
    assert all(sd_a[k].shape == sd_b[k].shape for k in sd_a)
    rebuilt.load_state_dict(sd_a)


def test_spec_rejects_non_plain_values():
    with pytest.raises(TypeError):
        net_spec("lenet", input_size=torch.tensor(32))


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2"])
def test_mobilenet_depth_mult_reduces_params(name):
    half = create_net(name, depth_mult=0.5)
    assert n_params(half) < n_params(create_net(name))
    x = torch.randn(2, 3, 32, 32)
    assert half.eval()(x).shape == (2, 1000)


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2"])
def test_mobilenet_small_input(name):
    model = create_net(name, num_classes=10, small_input=True).eval()
    out = {}
    last = model.stage_names[-1]
    model.get_submodule(last).register_forward_hook(lambda _m, _i, o: out.setdefault("y", o))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert out["y"].shape[-1] == 2  # 32 / 16 with a stride-1 stem


def test_lenet_input_size():
    model = create_net("lenet", num_classes=10, in_channels=1, input_size=16)
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 10)
