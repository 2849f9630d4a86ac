"""--learner=schedule with Distiller's range-linear quantizers on the tiny digits ResNet-20:
QAT lowered to an int8 .pte (parity vs the fake-quantized model), the published
ASYMMETRIC file kept fake-quantized (with the reason), and post-training quantization from a
stats file in Distiller's format."""
from __future__ import annotations

import pytest
import torch

from compression.artifacts import load_model
from tests.compression.schedule.test_range_linear import write_stats
from tests.conftest import REPO
from tests.learners.test_schedule import sch

PUBLISHED_QAT = REPO / "examples" / "distiller" / "quant_aware_train_linear_quant.yaml"
INT8_QAT = """quantizers:
  linear_quantizer:
    class: QuantAwareTrainRangeLinearQuantizer
    bits_activations: 8
    bits_weights: 8
    mode: {activations: ASYMMETRIC_UNSIGNED, weights: SYMMETRIC_RESTRICTED}
    ema_decay: 0.9
    per_channel_wts: True
policies:
    - quantizer:
        instance_name: linear_quantizer
      starting_epoch: 0
      ending_epoch: 1
      frequency: 1
"""


def _levels_per_channel(model, layers):
    for layer in layers:
        w = model.get_submodule(layer).weight.detach()
        for channel in w.reshape(w.shape[0], -1):
            assert torch.unique(channel).numel() <= 256, layer


@pytest.mark.slow
def test_qat_lowers_to_int8_with_parity(tmp_path, tiny_pretrained, one_thread):
    policy = tmp_path / "qat.yaml"
    policy.write_text(INT8_QAT)
    result = sch(tmp_path, tiny_pretrained, policy, epoch_iters=2, export_format="onnx")
    report = result.report
    (info,) = report["quantization"]
    assert info["method"] == "range_linear_qat" and info["input_bits"] == 8
    int8 = report["int8"]
    assert int8["written"] and int8["parity_ok"], int8
    assert int8["moved_weights"] == 0 and not int8["unmatched_quantizers"]
    assert int8["parity_vs_fakequant"]["top1_agreement"] > 0.9
    model, _ = load_model(result.artifact)
    _levels_per_channel(model, info["weight_layers"])


def test_published_asymmetric_file_stays_fake_quantized(tmp_path, tiny_pretrained, one_thread):
    result = sch(tmp_path, tiny_pretrained, PUBLISHED_QAT, nb_epochs=1, epoch_iters=1,
                 export_format="onnx")
    report = result.report
    assert not report["int8"]["written"] and "symmetric" in report["int8"]["reason"]
    assert report["onnx"]["parity_ok"]
    model, _ = load_model(result.artifact)
    _levels_per_channel(model, report["quantization"][0]["weight_layers"])


@pytest.mark.slow
def test_post_train_from_a_stats_file(tmp_path, tiny_pretrained, one_thread):
    from nets.registry import build_from_spec, net_spec
    stats = write_stats(tmp_path / "stats.yaml", build_from_spec(net_spec("resnet20", num_classes=10,
                                                                          in_channels=1)))
    policy = tmp_path / "ptq.yaml"
    policy.write_text(f"""quantizers:
  post_train_quantizer:
    class: PostTrainLinearQuantizer
    bits_activations: 8
    bits_parameters: 8
    bits_accum: 32
    mode: {{activations: ASYMMETRIC_UNSIGNED, weights: SYMMETRIC}}
    model_activation_stats: {stats}
    per_channel_wts: True
    clip_acts: AVG
""")
    result = sch(tmp_path, tiny_pretrained, policy, export_format="none")
    (info,) = result.report["quantization"]
    ranges = info["ranges"]
    assert not ranges["collected"] and len(ranges["from_file"]) == 19
    assert all(v == [0.0, 3.0] for v in ranges["values"].values())       # avg_min / avg_max
    model, _ = load_model(result.artifact)
    q = model.get_submodule("layer1.0.relu1")
    assert q.scale.item() == pytest.approx(255 / 3.0)
    int8 = result.report["int8"]
    assert int8["written"] and int8["parity_vs_converted"]["parity_ok"], int8
