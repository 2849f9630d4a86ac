"""Integer-only inference (``compression.quantization.integer_only``, ``tools/integer_only.py``).

Hand-computed fixed-point checks; parity of the integer program with its fake-quantized float
reference (one LSB on >= 99 % of the output codes, top-1 within one point) on the digits eval
set for the shared tiny trained ResNet-20 and for random-weight LeNet / ResNet-20 with
randomized BN statistics; no float tensor anywhere in the integer path; every supported op
(gather layers, depthwise, ReLU6, padded pools, residual add); YAML round trips for the three
weight layouts; and the entry script.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import OrderedDict
from fractions import Fraction

import pytest
import torch
import yaml
from torch import nn
from torch.overrides import TorchFunctionMode

from compression.quantization.integer_only import (FakeQuantModel, IntegerOverflowError,
                                                   IntegerYamlError, UnsupportedOpError,
                                                   build_program, compare, export_yaml, load_yaml,
                                                   multiplier_value, quantize_multiplier,
                                                   requantize)
from compression.quantization.integer_only.yaml_text import FlowList, Literal, dump_text, load_text
from compression.graph.layers import analyse
from compression.surgery.picks import GatherConv2d, GatherLinear
from compression.surgery.thinning import thin
from nets import resnet_at_digits
from nets.models.lenet import lenet
from nets.models.resnet_cifar import resnet20
from tests.conftest import REPO, finish
from utils.data_loading import make_eval_loader
from compression.artifacts import load_model


@pytest.fixture(scope="module")
def digits():
    """``(calibration images, eval images, eval labels)`` of the 8x8 digits: four batches of 32
    held-out training images, and the 359 test images."""
    helper = resnet_at_digits.ModelHelper(resnet_at_digits.Config(image_size=8))
    calib = [x for x, _ in make_eval_loader(helper.build_dataset_val(), 32)][:4]
    images, labels = zip(*make_eval_loader(helper.build_dataset_eval(), 500))
    return calib, torch.cat(images), torch.cat(labels)


def exact_round(acc: int, m0: int, shift: int) -> int:
    """round(acc * M0 * 2^-(31 + shift)), halves away from zero, in exact rational arithmetic."""
    value = Fraction(acc * m0, 2 ** (31 + shift))
    rounded = int(abs(value) + Fraction(1, 2))
    return rounded if value >= 0 else -rounded


def parity_line(name: str, report: dict) -> str:
    return (f"{name}: {100 * report['within_one_lsb']:.3f}% of {report['nb_elements']} output codes "
            f"within one LSB ({100 * report['exact']:.3f}% equal), max diff {report['max_diff']}; "
            f"top-1 integer {report['int_accuracy']:.4f} fake-quant {report['fake_accuracy']:.4f}"
            + (f" float {report['float_accuracy']:.4f}" if "float_accuracy" in report else ""))


# -- fixed point ---------------------------------------------------------------------------------
def test_quantize_multiplier_hand_values():
    assert quantize_multiplier(0.5) == (2 ** 30, 0)
    assert quantize_multiplier(0.75) == (3 * 2 ** 29, 0)
    assert quantize_multiplier(0.3) == (1288490189, 1)          # 0.6 * 2^31 = 1288490188.8
    assert quantize_multiplier(1.0) == (2 ** 30, -1)            # M >= 1: a left shift
    assert quantize_multiplier(0.0) == (0, 0)
    assert quantize_multiplier(2.0 ** -40) == (0, 0)            # every int32 input rounds to 0
    for real in (0.3, 1 / 3, 0.09375, 1e-3, 0.9 * 2 ** -20, 0.999999999, 1.5, 3.7, 123.4):
        m0, shift = quantize_multiplier(real)
        assert 2 ** 30 <= m0 < 2 ** 31
        assert abs(multiplier_value(m0, shift) - real) <= real * 2 ** -31
    with pytest.raises(ValueError):
        quantize_multiplier(-0.5)


def test_requantize_hand_values():
    m0, shift = quantize_multiplier(0.09375)                    # 0.75 * 2^-3, exact
    assert (m0, shift) == (3 * 2 ** 29, 3)
    cases = {16: 2, -16: -2, 48: 5, -48: -5,                    # 1.5, 4.5: ties away from zero
             100: 9, -100: -9, 6: 1, -6: -1, 5: 0, -5: 0, 0: 0,
             2 ** 31 - 1: 201326592, -2 ** 31: -201326592}
    acc = torch.tensor(list(cases), dtype=torch.int64)
    expected = torch.tensor(list(cases.values()), dtype=torch.int64)
    assert [exact_round(a, m0, shift) for a in cases] == expected.tolist()
    assert torch.equal(requantize(acc, m0, shift), expected)
    # gemmlowp rounds twice: 5 * 0.75 = 3.75 -> 4, then 4 / 8 = 0.5 -> 1 (single rounding: 0)
    gemmlowp = requantize(acc, m0, shift, rounding="gemmlowp")
    assert gemmlowp[list(cases).index(5)] == 1
    assert (gemmlowp - expected).abs().max() <= 1
    # M = 1.5 (left shift): 3 -> 4.5 -> 5, -3 -> -5; gemmlowp's high multiply rounds -4.5 up to -4
    m0, shift = quantize_multiplier(1.5)
    acc = torch.tensor([3, -3, 7, -7, 0])
    assert requantize(acc, m0, shift).tolist() == [5, -5, 11, -11, 0]
    assert requantize(acc, m0, shift, rounding="gemmlowp").tolist() == [5, -4, 11, -10, 0]
    # per-channel multipliers broadcast; random accumulators match the exact rounding
    gen = torch.Generator().manual_seed(0)
    reals = [0.3, 1 / 3, 0.0123, 2.5e-4, 0.77]
    pairs = [quantize_multiplier(r) for r in reals]
    acc = torch.randint(-2 ** 31, 2 ** 31, (len(reals), 200), generator=gen)
    m0, shift = (torch.tensor([p[i] for p in pairs])[:, None] for i in (0, 1))
    out = requantize(acc, m0, shift)
    assert out.dtype == torch.int64
    assert out.tolist() == [[exact_round(a, *p) for a in row] for row, p in zip(acc.tolist(), pairs)]
    with pytest.raises(IntegerOverflowError):
        requantize(torch.tensor([2 ** 31]), *quantize_multiplier(0.5))
    with pytest.raises(TypeError):
        requantize(torch.tensor([1.0]), 2 ** 30, 0)


# -- parity --------------------------------------------------------------------------------------
class NoFloatMode(TorchFunctionMode):
    """Fails on any torch call that takes or returns a floating-point tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.calls += 1
        for value in _tensors((args, kwargs, out)):
            assert not (value.is_floating_point() or value.is_complex()), \
                f"{getattr(func, '__name__', func)} used a {value.dtype} tensor in the integer path"
        return out


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def check_integer_only(program, images: torch.Tensor) -> None:
    codes = program.quantize_input(images)
    assert codes.dtype == torch.int64
    keep = {}
    with NoFloatMode() as mode:
        out = program.run(codes, keep)
    assert mode.calls > len(program.nodes)
    assert out.dtype == torch.int64 and all(v.dtype == torch.int64 for v in keep.values())
    for node in program.nodes:
        assert all(t.dtype == torch.int64 for t in node.tensors.values())
        assert 0 <= keep[node.name].min() and keep[node.name].max() <= program.qmax
        if "m0" in node.tensors:
            assert bool(((node.tensors["m0"] >= 2 ** 30) & (node.tensors["m0"] < 2 ** 31)).all())
    with pytest.raises(TypeError, match="int64 codes"):
        program.run(images)


def test_trained_resnet20_parity_on_digits(tiny_pretrained, tmp_path, digits, one_thread):
    tiny_pretrained(tmp_path)
    model, _ = load_model(str(tmp_path / "eval" / "model.ckpt"))
    model.eval()
    calib, images, labels = digits
    program = build_program(model, calib, weight_bits=8, act_bits=8)
    check_integer_only(program, images[:8])
    report = compare(program, [(images, labels)], model)
    line = parity_line("trained ResNet-20, 8/8 bits", report)
    print(line)
    assert report["nb_elements"] == 359 * 10
    assert report["within_one_lsb"] >= 0.99, line
    assert abs(report["int_accuracy"] - report["fake_accuracy"]) <= 0.01, line
    assert report["fake_accuracy"] >= report["float_accuracy"] - 0.03
    assert report["float_accuracy"] > 0.5                        # the model did learn
    gemmlowp = build_program(model, calib, rounding="gemmlowp")
    print(parity_line("trained ResNet-20, gemmlowp double rounding", compare(gemmlowp, [(images, labels)])))
    low = build_program(model, calib, weight_bits=4, act_bits=6)
    report = compare(low, [(images, labels)])
    line = parity_line("trained ResNet-20, 4/6 bits", report)
    print(line)
    assert report["within_one_lsb"] >= 0.99, line
    assert abs(report["int_accuracy"] - report["fake_accuracy"]) <= 0.01, line


def test_thinned_resnet20_with_gathers(tiny_pretrained, tmp_path, digits, one_thread):
    tiny_pretrained(tmp_path)
    full, _ = load_model(str(tmp_path / "eval" / "model.ckpt"))
    layers = analyse(full.eval(), (1, 8, 8))
    gen = torch.Generator().manual_seed(0)
    keep = {layer.name: torch.randperm(layer.in_channels, generator=gen)[:layer.in_channels // 2]
            for layer in layers if not layer.is_first}
    model, _ = thin(full, layers, keep)
    calib, images, labels = digits
    program = build_program(model.eval(), calib)
    assert sum("in_index" in n.tensors for n in program.nodes) >= 5       # residual inputs gathered
    report = compare(program, [(images[:128], labels[:128])], model)
    line = parity_line("thinned ResNet-20 (gather layers)", report)
    print(line)
    assert report["within_one_lsb"] >= 0.99, line


def randomize_bn(model: nn.Module, gen: torch.Generator) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
                m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=gen))
                m.weight.copy_(0.5 + torch.rand(n, generator=gen))
                m.bias.copy_(0.6 * torch.rand(n, generator=gen) - 0.3)
    return model.eval()


@pytest.mark.parametrize("net", ["lenet", "resnet20"])
def test_random_nets_parity_on_digits(net, digits, one_thread):
    torch.manual_seed(1)
    model = lenet(10, 1, 8) if net == "lenet" else resnet20(10, 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.uniform_(-0.1, 0.1)
    model = randomize_bn(model, torch.Generator().manual_seed(2))
    calib, images, labels = digits
    program = build_program(model, calib)
    report = compare(program, [(images, labels)], model)
    line = parity_line(f"random {net}, randomized BN", report)
    print(line)
    assert report["within_one_lsb"] >= 0.99, line
    assert abs(report["int_accuracy"] - report["fake_accuracy"]) <= 0.01, line
    # the fake-quantized model follows the float one (BN folding, fusion, scales are right)
    fake, ref = FakeQuantModel(program)(images), model(images)
    assert (fake - ref).abs().max() <= 0.1 * (ref.max() - ref.min())


class MixedNet(nn.Module):
    """Every supported op: conv with bias + BN + ReLU6, depthwise conv, padded max/avg pools,
    a standalone ReLU, a gather conv, a residual add with a fused ReLU, adaptive pooling,
    flatten, a gather linear layer and a plain one."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = nn.ReLU6()
        self.dw = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.gather = GatherConv2d(4, 8, 1, bias=False)
        self.gather.in_index.copy_(torch.tensor([0, 2, 5, 7]))
        self.conv2 = nn.Conv2d(8, 8, 3, stride=1, padding=1, groups=2)
        self.avg = nn.AvgPool2d(2, stride=1, padding=1)
        self.head = nn.AdaptiveAvgPool2d(1)
        self.fc1 = GatherLinear(6, 12)
        self.fc1.in_index.copy_(torch.tensor([7, 1, 2, 3, 4, 0]))
        self.fc2 = nn.Linear(12, 10)

    def forward(self, x):
        x = self.act1(self.bn1(self.conv1(x)))
        x = torch.relu(self.pool(self.bn2(self.dw(x))))
        y = torch.relu(self.conv2(x) + self.gather(x))
        y = torch.flatten(self.head(self.avg(y)), 1)
        return self.fc2(torch.relu(self.fc1(y)))


def test_every_op_parity_and_yaml_round_trip(digits, tmp_path, one_thread):
    torch.manual_seed(3)
    model = randomize_bn(MixedNet(), torch.Generator().manual_seed(4))
    calib, images, labels = digits
    program = build_program(model, calib, weight_bits=6, act_bits=7)
    ops = [n.op for n in program.nodes]
    assert {"conv2d", "linear", "add", "avg_pool", "max_pool", "flatten", "clamp"} <= set(ops)
    assert ops.count("avg_pool") == 2 and "in_index" in program.nodes[ops.index("linear")].tensors
    check_integer_only(program, images[:8])
    report = compare(program, [(images, labels)], model)
    print(parity_line("every-op net, 6/7 bits", report))
    assert report["within_one_lsb"] >= 0.99
    fake, ref = FakeQuantModel(program)(images), model(images)
    assert (fake - ref).abs().max() <= 0.1 * (ref.max() - ref.min())
    codes, fake_codes = program(images), FakeQuantModel(program).codes(images)
    for layout in ("dense", "coo", "csr"):
        path = tmp_path / f"mixed_{layout}.yml"
        export_yaml(program, str(path), layout)
        loaded = load_yaml(str(path))
        assert torch.equal(loaded(images), codes)
        assert torch.equal(FakeQuantModel(loaded).codes(images), fake_codes)
    data = yaml.safe_load((tmp_path / "mixed_csr.yml").read_text())
    assert data["format"] == "pocketflow-torch/integer-program" and data["act_bits"] == 7
    conv = data["nodes"][0]
    assert conv["op"] == "conv2d" and conv["weight"]["layout"] == "csr"
    assert len(conv["weight"]["indptr"]) == 9 and len(conv["M0"]) == len(conv["shift"]) == 8
    assert conv["in_shapes"] == [[1, 8, 8]] and conv["out_shape"] == [8, 8, 8]
    assert conv["clamp"][0] == conv["output_zero_point"] == 0              # ReLU6: [0, 6] real
    assert conv["clamp"][1] == min(127, round(6 / conv["output_scale"]))
    assert conv["output_scale"] * 127 <= 6.01
    add = next(n for n in data["nodes"] if n["op"] == "add")
    assert len(add["inputs"]) == 2 and {"M0_a", "shift_a", "M0_b", "shift_b"} <= set(add)


def test_sparse_yaml_is_smaller(digits, tmp_path, one_thread):
    torch.manual_seed(5)
    model = lenet(10, 1, 8).eval()
    with torch.no_grad():                                      # 90 % of every weight zeroed
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                flat = m.weight.abs().flatten()
                m.weight[m.weight.abs() <= flat.kthvalue(int(0.9 * flat.numel())).values] = 0
    calib, images, _ = digits
    program = build_program(model, calib[:1])
    weights = torch.cat([n.tensors["weight"].flatten() for n in program.nodes if "weight" in n.tensors])
    assert (weights == 0).double().mean() >= 0.899
    codes = program(images[:64])
    sizes = {}
    for layout in ("dense", "coo", "csr"):
        path = str(tmp_path / f"lenet_{layout}.yml")
        sizes[layout] = export_yaml(program, path, layout)
        assert torch.equal(load_yaml(path)(images[:64]), codes)
    print(f"90%-sparse LeNet YAML bytes: {sizes}")
    assert sizes["coo"] < 0.6 * sizes["dense"] and sizes["csr"] < 0.6 * sizes["dense"]


def test_unsupported_ops_and_bad_files(digits, tmp_path):
    calib = digits[0][:1]
    sig = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 2, 3), act=nn.Sigmoid())).eval()
    with pytest.raises(UnsupportedOpError, match=r"node 'act'.*module type Sigmoid is not supported"):
        build_program(sig, calib)

    class Scaled(nn.Module):
        def forward(self, x):
            return x * 2

    with pytest.raises(UnsupportedOpError, match=r"node 'mul'"):
        build_program(Scaled().eval(), calib)
    bn_after_relu = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 2, 3), relu=nn.ReLU(),
                                              bn=nn.BatchNorm2d(2))).eval()
    with pytest.raises(UnsupportedOpError, match=r"node 'bn'.*BatchNorm2d is only supported"):
        build_program(bn_after_relu, calib)
    with pytest.raises(ValueError, match="weight_bits must be an int in \\[2, 8\\]"):
        build_program(sig, calib, weight_bits=9)
    with pytest.raises(ValueError, match="eval mode"):
        build_program(nn.Sequential(nn.Conv2d(1, 2, 3)), calib)
    program = build_program(nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 4, 3), relu=nn.ReLU(),
                                                      flat=nn.Flatten(), fc=nn.Linear(144, 3))).eval(), calib)
    path = tmp_path / "p.yml"
    export_yaml(program, str(path), "csr")
    text = path.read_text()
    (tmp_path / "other.yml").write_text("format: something-else\n")
    with pytest.raises(IntegerYamlError, match="not an integer-program file"):
        load_yaml(str(tmp_path / "other.yml"))
    data = yaml.safe_load(text)
    data["nodes"][0]["weight"]["indices"][0] = 99
    (tmp_path / "bad.yml").write_text(yaml.safe_dump(data))
    with pytest.raises(IntegerYamlError, match=r"node 'conv'.weight.indices: indices must lie in \[0, 9\)"):
        load_yaml(str(tmp_path / "bad.yml"))
    with pytest.raises(IntegerYamlError, match="no such file"):
        load_yaml(str(tmp_path / "missing.yml"))


def test_yaml_text_fast_path_equals_pyyaml():
    text = ("about: |\n  weights: [1, 2, 3]\n  x: [\n"        # inside a literal block: text
            "a: [[1, -2], [3, 4],\n    [5, 6]]\n"                # nested, over two lines
            "b: [+1, 2]\nc: [007, 8]\nd: []\n"                # YAML-only spellings, empty
            "e: [1, 2]  # comment\n"
            "nodes:\n- name: n\n  M0: [1073741824, 2147483647,\n    -3]\n  s: [0.5, 1]\n")
    assert load_text(text) == yaml.safe_load(text)
    assert load_text(text)["about"] == "weights: [1, 2, 3]\nx: [\n"
    data = {"about": Literal("line: [1, 2]\n"), "big": FlowList([[i, -i] for i in range(40)]),
            "flat": FlowList(list(range(-50, 50))), "nodes": [{"name": "a", "w": FlowList(list(range(70)))}]}
    text = dump_text(data)
    assert load_text(text) == yaml.safe_load(text) == {**data, "about": "line: [1, 2]\n"}


# -- entry script --------------------------------------------------------------------------------
def tool(*args: str) -> subprocess.Popen:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "tools.integer_only", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_cli(tiny_pretrained, tmp_path):
    tiny_pretrained(tmp_path)
    model = str(tmp_path / "eval" / "model.ckpt")
    (tmp_path / "notes.ckpt").write_text("not a model\n")
    out = tmp_path / "out" / "model_int.yml"
    base = ["--helper=resnet_at_digits", "--nb_calib_batches=4"]
    procs = {"ok": tool(f"--model={model}", *base, "--weight_bits=8", "--act_bits=8", f"--yaml={out}",
                        "--sparse=csr"),
             "bits": tool(f"--model={model}", *base, "--weight_bits=9", f"--yaml={out}"),
             "path": tool(f"--model={model}", *base, f"--yaml={tmp_path / 'notes.ckpt' / 'x.yml'}"),
             "kind": tool(f"--model={tmp_path / 'notes.ckpt'}", *base, f"--yaml={tmp_path / 'k.yml'}")}
    runs = {name: finish(proc) for name, proc in procs.items()}
    ok = runs["ok"]
    assert ok.returncode == 0, ok.stderr[-3000:]
    print(ok.stdout)
    summary = json.loads(ok.stdout.strip().splitlines()[-1])
    assert summary["yaml_roundtrip_identical"] and summary["sparse"] == "csr"
    assert summary["within_one_lsb"] >= 0.99 and summary["nb_samples"] == 359
    assert abs(summary["int_accuracy"] - summary["fake_accuracy"]) <= 0.01
    assert summary["yaml_bytes"] == os.path.getsize(out) and summary["nb_calib_samples"] == 128
    for name, needle in (("bits", "--weight_bits must be in [2, 8], got 9"), ("path", "cannot write"),
                         ("kind", "notes.ckpt")):
        assert runs[name].returncode == 2, (name, runs[name].stderr[-2000:])
        lines = runs[name].stderr.strip().splitlines()
        assert lines[-1].startswith("error: ") and needle in lines[-1], (name, lines[-3:])
    assert not (tmp_path / "k.yml").exists()
