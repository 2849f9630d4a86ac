"""Bit packing and the bit-packed quantized model files (round trips, sizes, corruption)."""
from __future__ import annotations

import math

import pytest
import torch

from compression.sparsity.masks import maskable_layers
from compression.quantization.packed_format import (QuantFormatError, pack_bits,
                                                    quantized_size_report, unpack_bits)
from compression.artifacts import load_quantized_model, save_quantized_model
from compression.quantization.codebook import CodebookQuantizer
from compression.quantization.quantizers import (UniformWeightQuantizer, attach_weight_quantizers,
                                                 quantizers_of)
from compression.quantization.activations import (activation_quantizers_of,
                                                  attach_activation_quantizers)
from nets.registry import create_net, net_spec
from utils.checkpoint import CheckpointError, load_file, save_file
from compression.artifacts import save_model

pytestmark = pytest.mark.usefixtures("one_thread")  # restored after each test

SPEC = net_spec("resnet20", num_classes=10, in_channels=1)
MAKERS = {
    "uniform-channel": lambda bits: UniformWeightQuantizer(bits, "channel"),
    "uniform-split": lambda bits: UniformWeightQuantizer(bits, "split", 100),
    "codebook": lambda bits: CodebookQuantizer(bits, "quantile", "split", 256, "both"),
}


def quantized_resnet20(kind: str, bits: int | None = None) -> torch.nn.Module:
    """resnet20 with every conv/linear quantized: ``bits`` everywhere, or 2, 4, 8 in turn."""
    torch.manual_seed(0)
    model = create_net("resnet20", num_classes=10, in_channels=1)
    names = list(maskable_layers(model))
    per_layer = {n: bits or (2, 4, 8)[i % 3] for i, n in enumerate(names)}
    attach_weight_quantizers(model, None, lambda name: MAKERS[kind](per_layer[name]))
    return model.eval()


# -- bit packing -------------------------------------------------------------------------------
def test_pack_bits_order_hand_computed():
    # codes 1, 2, 3 at 2 bits -> stream LSB first 1 0 | 0 1 | 1 1 -> bits 0, 3, 4, 5 of byte 0
    assert pack_bits(torch.tensor([1, 2, 3]), 2).tolist() == [1 + 8 + 16 + 32]
    assert pack_bits(torch.tensor([0x1FF]), 9).tolist() == [0xFF, 0x01]
    assert unpack_bits(torch.tensor([0b10110100], dtype=torch.uint8), 3, 2).tolist() == [4, 6]


@pytest.mark.parametrize("bits", range(1, 17))
def test_pack_unpack_round_trip_is_exact(bits):
    generator = torch.Generator().manual_seed(bits)
    for numel in (0, 1, 7, 1001):
        codes = torch.randint(0, 2 ** bits, (numel,), generator=generator)
        packed = pack_bits(codes, bits)
        assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(numel * bits / 8)
        assert torch.equal(unpack_bits(packed, bits, numel), codes)


def test_pack_across_chunks_and_bad_arguments():
    codes = torch.randint(0, 2 ** 13, (3 * 65536 + 5,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(unpack_bits(pack_bits(codes, 13), 13, codes.numel()), codes)
    with pytest.raises(ValueError, match="codes must be in"):
        pack_bits(torch.tensor([4]), 2)
    with pytest.raises(ValueError, match="bits must be in 1..16"):
        pack_bits(torch.tensor([0]), 17)
    with pytest.raises(ValueError, match="expected uint8"):
        unpack_bits(torch.zeros(3, dtype=torch.uint8), 4, 7)


# -- files -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(MAKERS))
def test_mixed_bits_round_trip_is_bit_exact(tmp_path, kind):
    model = quantized_resnet20(kind)
    path = str(tmp_path / "q.pt")
    size = save_quantized_model(path, model, SPEC, meta={"kind": kind})
    loaded, obj = load_quantized_model(path)
    assert obj["meta"] == {"kind": kind} and size > 0
    assert {e["bits"] for e in obj["quantized"].values()} == {2, 4, 8}
    for name, module in maskable_layers(loaded).items():
        assert torch.equal(module.weight, model.get_submodule(name).weight), name
    state = model.state_dict()
    for key, value in loaded.state_dict().items():
        if not key.endswith("weight") or key.replace(".weight", "") not in quantizers_of(model):
            assert torch.equal(value, state[key]), key
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(loaded.eval()(x), model(x))


def test_4_bit_file_is_under_a_fifth_of_fp32(tmp_path, capsys):
    model = quantized_resnet20("uniform-channel", bits=4)
    plain = create_net("resnet20", num_classes=10, in_channels=1)
    fp32 = save_model(str(tmp_path / "fp32.pt"), plain, SPEC)
    size = save_quantized_model(str(tmp_path / "q4.pt"), model, SPEC)
    report = quantized_size_report(model)
    with capsys.disabled():
        print(f"\nresnet20 fp32 file {fp32} B, 4-bit channel file {size} B ({size / fp32:.3f}x), "
              f"payload {report['payload_bytes']} B + other {report['other_bytes']} B")
    assert size < 0.2 * fp32, (size, fp32)
    layer = report["layers"]["layer3.0.conv2"]
    assert layer == {"bits": 4, "numel": 36864, "buckets": 64, "code_bytes": 18432,
                     "overhead_bytes": 512, "payload_bytes": 18944, "fp32_bytes": 147456}
    assert report["numel"] == sum(m.weight.numel() for m in maskable_layers(plain).values())
    assert report["fp32_bytes"] == 4 * report["numel"] and 4 < report["bits_per_weight"] < 4.2


def test_full_precision_layers_and_activation_ranges_travel(tmp_path):
    model = quantized_resnet20("uniform-split", bits=3)
    quantizers_of(model)["fc"].bits = None                      # fc stays fp32: stored dense
    acts = attach_activation_quantizers(model, ["layer1", "layer3.2.conv1"], 6)
    x = torch.randn(4, 1, 8, 8)
    assert not any(q.training for q in acts.values())            # follow their layer's mode
    for quantizer in acts.values():
        quantizer.train()
    model(x)
    for quantizer in acts.values():
        quantizer.eval()
    path = str(tmp_path / "q.pt")
    save_quantized_model(path, model, SPEC)
    loaded, obj = load_quantized_model(path)
    assert "fc.weight" in obj["dense"] and "fc.weight" not in obj["quantized"]
    assert set(activation_quantizers_of(loaded)) == {"layer1", "layer3.2.conv1"}
    loaded.eval()
    for quantizer in activation_quantizers_of(loaded).values():   # frozen: ranges do not move
        assert quantizer.frozen
        quantizer.train()
    loaded(torch.randn(4, 1, 8, 8) * 10)
    assert torch.equal(loaded(x), model(x))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("quant")
    paths = {}
    for kind in ("uniform-channel", "codebook"):
        paths[kind] = str(root / f"{kind}.pt")
        save_quantized_model(paths[kind], quantized_resnet20(kind, bits=4), SPEC)
    return paths


def _corrupt(tmp_path, path: str, edit) -> str:
    obj = load_file(path)
    edit(obj["quantized"]["layer2.0.conv1.weight"])
    out = str(tmp_path / "bad.pt")
    save_file(out, "quantized_model", {k: v for k, v in obj.items()
                                       if k not in ("format", "version", "kind")})
    return out


@pytest.mark.parametrize("kind,edit,message", [
    ("uniform-channel", lambda e: e.update(codes=e["codes"][:-1]), "packed codes must be uint8"),
    ("uniform-channel", lambda e: e.update(bits=0), "bits must be an int in 1..16"),
    ("uniform-channel", lambda e: e.update(bits=17), "bits must be an int in 1..16"),
    ("uniform-channel", lambda e: e.pop("scales"), "'scales' must be a float tensor"),
    ("uniform-channel", lambda e: e.update(offsets=e["offsets"][:-1]), "'offsets' must be"),
    ("uniform-channel", lambda e: e.update(bucket_type="row"), "unknown bucket_type"),
    ("codebook", lambda e: e.update(centres=e["centres"][:, :3]), "out of range for 3 centres"),
    ("codebook", lambda e: e.update(centres=torch.zeros(len(e["centres"]), 17)),
     "with 1 <= n <= 16"),
    ("codebook", lambda e: e.update(centres=e["centres"][:-1]), "'centres' must be"),
    ("codebook", lambda e: e["centres"].__setitem__((0, 0), float("nan")), "non-finite"),
])
def test_corrupt_quantized_file_is_refused(tmp_path, saved, kind, edit, message):
    path = _corrupt(tmp_path, saved[kind], edit)
    with pytest.raises(QuantFormatError, match="layer2.0.conv1.weight") as err:
        load_quantized_model(path)
    assert message in str(err.value)


def test_truncated_or_foreign_file_is_refused(tmp_path, saved):
    data = open(saved["codebook"], "rb").read()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match="not a valid pocketflow-torch file"):
        load_quantized_model(str(path))
    save_model(str(tmp_path / "plain.pt"), create_net("resnet20", num_classes=10, in_channels=1),
               SPEC)
    with pytest.raises(CheckpointError, match="expected a 'quantized_model'"):
        load_quantized_model(str(tmp_path / "plain.pt"))
