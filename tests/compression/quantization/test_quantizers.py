"""Fake quantizers: hand-computed values, SQNR, straight-through gradients, attach/detach."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from compression.quantization.activations import (ActivationQuantizer, activation_quantizers_of,
                                                  attach_activation_quantizers,
                                                  detach_activation_quantizers)
from compression.quantization.codebook import CodebookQuantizer, nearest_centre
from compression.quantization.quantizers import (UniformWeightQuantizer, attach_weight_quantizers,
                                                 dequantize, detach_weight_quantizers,
                                                 quantize_codes, quantizers_of, sqnr_db)
from nets.registry import create_net

pytestmark = pytest.mark.usefixtures("one_thread")  # restored after each test

X = torch.tensor([[0.0, 0.1, 0.5, 1.0], [2.0, 2.0, 2.0, 2.0]])


def resnet20() -> nn.Module:
    torch.manual_seed(0)
    return create_net("resnet20", num_classes=10, in_channels=1)


# -- uniform -----------------------------------------------------------------------------------
@pytest.mark.parametrize("bucket_type,size,codes,scale,offset,expected", [
    # per channel: [0, .1, .5, 1] -> a=1, b=0, *3 -> [0, .3, 1.5, 3] -> [0, 0, 2, 3]; row 2 constant
    ("channel", 512, [[0, 0, 2, 3], [0, 0, 0, 0]], [1.0, 0.0], [0.0, 2.0],
     [[0, 0, 2 / 3, 1], [2, 2, 2, 2]]),
    # one range: a=2, b=0 -> x/2*3 = [0, .15, .75, 1.5, 3...] -> [0, 0, 1, 2, 3...]
    ("layer", 512, [[0, 0, 1, 2], [3, 3, 3, 3]], [2.0], [0.0], [[0, 0, 2 / 3, 4 / 3], [2, 2, 2, 2]]),
    # buckets of 3: [0 .1 .5] a=.5 -> [0 1 3]; [1 2 2] a=1 b=1 -> [0 3 3]; short last [2 2] constant
    ("split", 3, [[0, 1, 3, 0], [3, 3, 0, 0]], [0.5, 1.0, 0.0], [0.0, 1.0, 2.0],
     [[0, 0.5 / 3, 0.5, 1], [2, 2, 2, 2]]),
])
def test_uniform_hand_computed(bucket_type, size, codes, scale, offset, expected):
    got_codes, got_scale, got_offset = quantize_codes(X, 2, bucket_type, size)
    assert got_codes.dtype == torch.int64 and got_codes.tolist() == codes
    assert got_scale.tolist() == scale and got_offset.tolist() == offset
    q = UniformWeightQuantizer(2, bucket_type, size)(X)
    assert not q.isnan().any()
    torch.testing.assert_close(q, torch.tensor(expected), rtol=0, atol=1e-7)


@pytest.mark.parametrize("bucket_type", ["layer", "channel", "split"])
def test_fake_quant_is_bit_exact_dequantize_of_codes(bucket_type):
    torch.manual_seed(1)
    w = torch.randn(8, 5, 3, 3)
    for bits in (1, 3, 8, 16):
        quantizer = UniformWeightQuantizer(bits, bucket_type, bucket_size=50)
        codes, scale, offset = quantize_codes(w, bits, bucket_type, 50)
        assert int(codes.min()) >= 0 and int(codes.max()) <= 2 ** bits - 1
        assert torch.equal(quantizer(w), dequantize(codes.flatten(), scale, offset, bits,
                                                    bucket_type, 50, w.shape))


def test_sqnr_rises_strictly_with_bits_and_codebook_beats_uniform_on_gaussian():
    torch.manual_seed(2)
    w = torch.randn(32, 16, 3, 3) * 0.05
    for make in (lambda b: UniformWeightQuantizer(b, "channel"),
                 lambda b: UniformWeightQuantizer(b, "split", 128),
                 lambda b: CodebookQuantizer(b, "quantile", "layer"),
                 lambda b: CodebookQuantizer(b, "uniform", "channel")):
        sqnr = [sqnr_db(w, make(b)(w)) for b in (2, 4, 8)]
        assert sqnr[0] < sqnr[1] < sqnr[2], sqnr
    gauss = torch.randn(128, 128, 3, 3)
    uniform = sqnr_db(gauss, UniformWeightQuantizer(4, "layer")(gauss))
    codebook = sqnr_db(gauss, CodebookQuantizer(4, "quantile", "layer")(gauss))
    assert codebook >= uniform, (codebook, uniform)
    # k-means centres: the least-squares codebook, better than quantiles and than uniform at
    # every width (Lloyd-Max for a Gaussian at 2 bits: 9.30 dB)
    for bits in (2, 3, 4):
        kmeans = sqnr_db(gauss, CodebookQuantizer(bits, "kmeans", "layer")(gauss))
        assert kmeans > sqnr_db(gauss, CodebookQuantizer(bits, "quantile", "layer")(gauss))
        assert kmeans > sqnr_db(gauss, UniformWeightQuantizer(bits, "layer")(gauss)) + 1.0
    assert sqnr_db(gauss, CodebookQuantizer(2, "kmeans", "layer")(gauss)) == pytest.approx(
        9.30, abs=0.1)
    assert sqnr_db(w, w) == float("inf")


def test_uniform_ste_gradient_is_the_upstream_gradient():
    torch.manual_seed(3)
    layer = nn.Linear(6, 4)
    attach_weight_quantizers(layer, None, lambda name: UniformWeightQuantizer(3, "split", 5))
    upstream = torch.randn(4, 6)
    (layer.weight * upstream).sum().backward()
    assert torch.equal(layer.parametrizations["weight"].original.grad, upstream)


def test_uniform_bits_can_change_after_creation():
    torch.manual_seed(4)
    conv = nn.Conv2d(4, 8, 3)
    raw = conv.weight.detach().clone()
    quantizer = attach_weight_quantizers(conv, None, lambda name: UniformWeightQuantizer(8))[""]
    for bits in (1, 2, 5):
        quantizer.bits = bits
        assert all(len(row.unique()) <= 2 ** bits for row in conv.weight.detach().reshape(8, -1))
    quantizer.bits = 32                                       # full precision: identity
    assert quantizer.bits is None and torch.equal(conv.weight, raw)
    with pytest.raises(ValueError, match="bits"):
        quantizer.bits = 20


# -- codebook ----------------------------------------------------------------------------------
W = torch.tensor([[-0.9, -0.4, 0.3, 0.8, 0.2, 1.7, -3.0]])
CENTRES = torch.tensor([[-1.0, 0.0, 1.0, 0.5]])               # unsorted on purpose
CODES = [[0, 1, 3, 2, 1, 2, 0]]


def codebook(opt_mode: str = "both") -> CodebookQuantizer:
    quantizer = CodebookQuantizer(2, "uniform", "layer", opt_mode=opt_mode)
    quantizer.init_centres(W)
    quantizer.centres.data.copy_(CENTRES)
    return quantizer


def test_codebook_assignment_and_init_hand_computed():
    quantizer = codebook()
    assert nearest_centre(W, CENTRES).tolist() == CODES
    codes, centres = quantizer.encode(W)
    assert codes.tolist() == CODES and torch.equal(centres, CENTRES)
    assert quantizer(W).tolist() == [[-1.0, 0.0, 0.5, 1.0, 0.0, 1.0, -1.0]]
    ramp = torch.arange(8.0).view(1, 8)
    quantile = CodebookQuantizer(1, "quantile", "layer")      # quantiles (j + .5) / 2 of 0..7
    quantile.init_centres(ramp)
    assert quantile.centres.tolist() == [[1.75, 5.25]]
    kmeans = CodebookQuantizer(1, "kmeans", "layer")      # Lloyd from 1.75 / 5.25: 0..3 | 4..7
    kmeans.init_centres(ramp)
    assert kmeans.centres.tolist() == [[1.5, 5.5]]
    uniform = CodebookQuantizer(2, "uniform", "split", bucket_size=5)    # buckets 0..4, 5..7
    uniform.init_centres(ramp)
    torch.testing.assert_close(uniform.centres.detach(), torch.tensor(
        [[0, 4 / 3, 8 / 3, 4], [5, 17 / 3, 19 / 3, 7]]), rtol=0, atol=1e-6)


def test_nearest_centre_matches_brute_force_argmin():
    torch.manual_seed(5)
    rows, centres = torch.randn(6, 300), torch.randn(6, 16)
    brute = centres.gather(1, (rows[:, :, None] - centres[:, None, :]).abs().argmin(2))
    assert torch.equal(centres.gather(1, nearest_centre(rows, centres)), brute)


def test_codebook_gradients_ste_to_weights_and_member_sums_to_centres():
    quantizer = codebook("both")
    w = W.clone().requires_grad_()
    upstream = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]])
    (quantizer(w) * upstream).sum().backward()
    assert torch.equal(w.grad, upstream)
    # centre 0: members 0, 6 -> 1+7; centre 1: 1, 4 -> 2+5; centre 2: 3, 5 -> 4+6; centre 3: 2 -> 3
    assert quantizer.centres.grad.tolist() == [[8.0, 7.0, 10.0, 3.0]]


@pytest.mark.parametrize("opt_mode,weights_train,centres_train",
                         [("weights", True, False), ("cluster", False, True), ("both", True, True)])
def test_opt_mode_freezes_the_right_things(opt_mode, weights_train, centres_train):
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(5, 3))
    attach_weight_quantizers(model, None, lambda name: CodebookQuantizer(2, opt_mode=opt_mode))
    quantizer, original = quantizers_of(model)["0"], model[0].parametrizations["weight"].original
    before_w, before_c = original.detach().clone(), quantizer.centres.detach().clone()
    assert any(p is quantizer.centres for p in model.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(4, 5)).pow(2).sum().backward()
    assert (original.grad is not None) == weights_train
    assert (quantizer.centres.grad is not None) == centres_train
    optimizer.step()
    assert (not torch.equal(original, before_w)) == weights_train
    assert (not torch.equal(quantizer.centres, before_c)) == centres_train


def test_codebook_assignments_follow_the_weights_and_bits_reinitialise():
    quantizer = codebook("weights")
    moved = W.clone()
    moved[0, 1] = 0.9                                            # now nearest to centre 2 (1.0)
    assert quantizer.encode(moved)[0].tolist() == [[0, 2, 3, 2, 1, 2, 0]]
    quantizer.bits = 3
    assert quantizer(W).shape == W.shape and quantizer.centres.shape == (1, 8)


# -- attach / detach ---------------------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda name: UniformWeightQuantizer(3, "split", 100),
                                  lambda name: CodebookQuantizer(2, bucket_type="channel")])
def test_detach_bakes_exactly_the_quantized_weights(make):
    model = resnet20()
    keys = list(model.state_dict())
    quantizers = attach_weight_quantizers(model, None, make)
    assert len(quantizers) == 22 and set(quantizers) == set(quantizers_of(model))
    quantized = {name: model.get_submodule(name).weight.detach().clone() for name in quantizers}
    with pytest.raises(ValueError, match="already has a parametrization"):
        attach_weight_quantizers(model, ["conv1"], make)
    detach_weight_quantizers(model)
    assert not quantizers_of(model) and sorted(model.state_dict()) == sorted(keys)
    for name, weight in quantized.items():
        module = model.get_submodule(name)
        assert not parametrize.is_parametrized(module) and torch.equal(module.weight, weight)
    with pytest.raises(ValueError, match="not conv/linear"):
        attach_weight_quantizers(model, ["bn1"], make)


def test_activation_quantizer_range_ema_eval_freeze_and_clipped_ste():
    quantizer = ActivationQuantizer(2, momentum=0.5)
    x = torch.tensor([0.0, 0.1, 0.5, 1.0])
    torch.testing.assert_close(quantizer(x), torch.tensor([0, 0, 2 / 3, 1]), rtol=0, atol=1e-7)
    quantizer(torch.tensor([-1.0, 3.0]))                        # EMA: lo=.5*0+.5*-1, hi=.5*1+.5*3
    assert (quantizer.lo.item(), quantizer.hi.item()) == (-0.5, 2.0)
    quantizer.eval()
    y = torch.tensor([-2.0, -0.5, 0.5, 5.0], requires_grad=True)
    out = quantizer(y)                                            # frozen range [-0.5, 2]
    assert (quantizer.lo.item(), quantizer.hi.item()) == (-0.5, 2.0)
    # grid -0.5 + 2.5 * j / 3: clamp, -0.5 on it, 0.5 -> 1.2 steps -> j = 1, clamp
    torch.testing.assert_close(out.detach(), torch.tensor([-0.5, -0.5, 2.5 / 3 - 0.5, 2.0]),
                               rtol=0, atol=1e-7)
    out.sum().backward()
    assert y.grad.tolist() == [0.0, 1.0, 1.0, 0.0]
    assert ActivationQuantizer(None)(x) is x and ActivationQuantizer(32)(x) is x


def test_activation_quantizers_detach_restores_the_exact_forward():
    model = resnet20().eval()
    x = torch.randn(2, 1, 8, 8)
    reference, keys = model(x), list(model.state_dict())
    names = ["conv1", "layer1.0.conv1", "layer2", "fc"]
    attached = attach_activation_quantizers(model, names, 4)
    assert set(attached) == set(names) == set(activation_quantizers_of(model))
    for quantizer in attached.values():                          # track ranges, BN stays eval
        quantizer.train()
    model(x)
    model.eval()
    assert all(bool(q.initialized) for q in attached.values())
    assert not torch.equal(model(x), reference)
    with pytest.raises(ValueError, match="already has"):
        attach_activation_quantizers(model, ["fc"], 4)
    detach_activation_quantizers(model)
    assert not activation_quantizers_of(model) and list(model.state_dict()) == keys
    assert all(not m._forward_hooks for m in model.modules())
    assert torch.equal(model(x), reference)
    attach_activation_quantizers(model, names, 32)               # full precision: identity
    assert torch.equal(model(x), reference)
