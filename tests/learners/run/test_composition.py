"""Chains of learners (``--enbl_warm_start --warm_start_path``): the stages recorded, the full
model kept as reference and teacher, every deployment file checked, unfit chains refused."""
from __future__ import annotations

import json

import pytest
import torch

from learners.run.composition import ChainError
from learners.launch import build, run
from nets import resnet_at_digits
from tests.conftest import flag_values
from compression.artifacts import load_model
from utils.multi_gpu_wrapper import SingleProcess

Helper = resnet_at_digits.ModelHelper


def values_in(root, *extra: str) -> dict:
    return flag_values(root, "--image_size=8", "--nb_epochs_rat=0.1", *extra)


def paths(root, prefix: str, suffix: str = "ckpt") -> list[str]:
    return [f"--{prefix}_save_path={root}/{prefix}/model.ckpt",
            f"--{prefix}_save_path_eval={root}/{prefix}_eval/model.{suffix}"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A full model (one epoch), chn-pruned-rmt at half the FLOPs, then uniform-tf started from
    the thinned model, distilled from the full one, exported to both formats."""
    root = tmp_path_factory.mktemp("chain")
    full = run(Helper, flag_values(root, "--image_size=8", "--nb_epochs_rat=1.0",
                                   "--export_format=none"))
    cpr_values = values_in(root, "--learner=chn-pruned-rmt", "--cpr_prune_ratio_prtl=uniform",
                           "--cpr_preserve_ratio=0.5", "--cpr_nb_smpls=128",
                           "--cpr_nb_crops_per_smpl=4", "--nb_epochs_rat=0.3",
                           f"--cpr_save_path_ws={root}/cpr_ws/model.ckpt",
                           "--export_format=none", *paths(root, "cpr"))
    cpr = run(Helper, cpr_values)
    uqtf_values = values_in(root, "--learner=uniform-tf", "--enbl_warm_start",
                            f"--warm_start_path={cpr_values['cpr_save_path_eval']}", "--enbl_dst",
                            "--export_format=both", *paths(root, "uqtf", "pte"))
    uqtf = run(Helper, uqtf_values)
    return root, full, cpr, uqtf, cpr_values, uqtf_values


def test_chain_records_every_stage(chain):
    root, full, cpr, uqtf, cpr_values, _ = chain
    learners = [stage["learner"] for stage in uqtf["chain"]]
    assert learners == ["full-prec", "chn-pruned-rmt", "uniform-tf"]
    first, middle, last = uqtf["chain"]
    assert first["flops"] == full["flops"]["full"] and first["params"] == full["params"]["full"]
    assert middle["artifact"] == cpr_values["cpr_save_path_eval"]
    assert middle["flops"] == cpr["flops"]["compressed"]
    assert middle["accuracy"] == pytest.approx(cpr["accuracy"]["compressed"], abs=1e-9)
    # a budget of 0.5; thinning also drops the channels no reader kept, so it may end below
    assert 0.40 <= middle["flops"] / first["flops"] <= 0.50 + 1e-9
    # the report compares with the ORIGINAL full model; the compressed side is the thinned net
    assert uqtf["accuracy"]["full"] == pytest.approx(full["accuracy"]["full"], abs=1e-9)
    assert uqtf["flops"]["full"] == first["flops"]
    assert uqtf["flops"]["compressed"] == middle["flops"]
    assert last["bytes"] == uqtf["bytes_on_disk"]["compressed"] < middle["bytes"] / 2
    saved = json.load(open(root / "uqtf_eval" / "report.json"))
    assert [s["learner"] for s in saved["chain"]] == learners
    # the thinned artifact records its own chain for the next stage
    _, obj = load_model(cpr_values["cpr_save_path_eval"])
    assert [s["learner"] for s in obj["meta"]["chain"]] == ["full-prec"]


def test_chain_keeps_accuracy_and_every_file_matches_its_model(chain):
    _, full, _, uqtf, _, _ = chain
    assert full["accuracy"]["full"] >= 0.8
    assert uqtf["accuracy"]["compressed"] >= full["accuracy"]["full"] - 0.05
    files = uqtf["deploy"]
    assert set(files) == {"pte_int8", "pte_fp32", "onnx_int8", "onnx_fp32"}
    for name, figures in files.items():
        assert figures["parity_ok"], (name, figures)
        assert figures["nb_samples"] == 359 and figures["bytes"] > 0
    for name in ("pte_fp32", "onnx_fp32"):
        assert files[name]["max_abs_diff"] <= 1e-4
        assert files[name]["accuracy"] == files[name]["accuracy_torch"]
    for name in ("pte_int8", "onnx_int8"):  # int8: within 1 point of the int8 PyTorch model
        assert abs(files[name]["accuracy"] - files[name]["accuracy_torch"]) <= 0.005
        assert files[name]["top1_agreement"] >= 0.97
        assert files[name]["bytes"] < files[name.replace("int8", "fp32")]["bytes"] / 2.2
    # the int8 program agrees with the converted model within one output step almost everywhere
    assert uqtf["int8"]["within_one_step_of_converted"] >= 0.95
    assert uqtf["accuracy"]["compressed"] == pytest.approx(files["pte_int8"]["accuracy"], abs=1e-6)


def test_warm_start_compresses_the_artifact_and_distils_from_the_full_model(chain):
    _, full, cpr, _, _, uqtf_values = chain
    runner, learner = build(Helper, uqtf_values, SingleProcess())
    start, _ = runner.start(learner)
    assert sum(p.numel() for p in start.parameters()) == cpr["params"]["compressed"]
    teacher = learner.ctx.teacher()
    assert sum(p.numel() for p in teacher.parameters()) == full["params"]["full"]
    assert teacher is not runner.original()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(teacher.eval()(x), runner.original().eval()(x))


@pytest.mark.parametrize("quantizer,prefix", [("non-uniform", "nuql"), ("uniform", "uql")])
def test_weight_sparse_then_quantized_keeps_the_zeros(chain, tmp_path, quantizer, prefix):
    """A quantizer started from a sparse model keeps every pruned weight exactly 0 (in the
    baked model and in its bit-packed codes), and reports both the sparsity and the bits; the
    chain lists the sparse stage at the size of its sparse file."""
    from compression.artifacts import load_quantized_model

    root = chain[0]
    common = [f"--save_path_eval={root}/eval/model.ckpt", "--export_format=onnx"]
    ws = run(Helper, values_in(tmp_path, "--learner=weight-sparse", "--ws_prune_ratio=0.75",
                               "--ws_prune_ratio_prtl=uniform", *paths(tmp_path, "ws"), *common))
    quant = run(Helper, values_in(tmp_path, f"--learner={quantizer}", "--enbl_warm_start",
                                  f"--warm_start_path={tmp_path}/ws_eval/model.ckpt",
                                  f"--{prefix}_weight_bits=4", *paths(tmp_path, prefix), *common))
    assert [s["learner"] for s in quant["chain"]] == ["full-prec", "weight-sparse", quantizer]
    assert quant["chain"][1]["accuracy"] == pytest.approx(ws["accuracy"]["compressed"], abs=1e-9)
    assert quant["chain"][1]["bytes"] == min(f["bytes"] for f in ws["sparse_files"].values())
    assert quant["deploy"]["onnx_fp32"]["max_abs_diff"] <= 1e-4
    sparse, _ = load_model(f"{tmp_path}/ws_eval/model.ckpt")
    model, _ = load_model(f"{tmp_path}/{prefix}_eval/model.ckpt")
    packed, _ = load_quantized_model(quant["quantization"]["file"]["path"])
    section = quant["quantization"]
    assert section["file"]["round_trip_exact"] and set(section["bits"].values()) == {4}
    for name in section["bits"]:
        before = sparse.get_submodule(name).weight
        after = model.get_submodule(name).weight
        assert torch.equal(after[before == 0], torch.zeros_like(after[before == 0])), name
        assert torch.equal(packed.get_submodule(name).weight, after), name
        assert len(torch.unique(after)) <= 16 + (quantizer == "uniform") * 16 * after.shape[0]
        assert section["sparsity"]["layers"][name] >= float((before == 0).float().mean()) - 1e-9
    assert section["sparsity"]["total"] >= 0.74
    assert quant["accuracy"]["compressed"] >= ws["accuracy"]["compressed"] - 0.1


@pytest.mark.slow
def test_weight_sparse_then_uniform_tf_keeps_the_zeros_in_the_int8_program(chain, tmp_path):
    """uniform-tf from a 75 %-sparse model: QAT holds the pruned weights at 0 and the int8
    program's weights (symmetric per channel: zero point 0) are exactly 0 there."""
    root = chain[0]
    common = [f"--save_path_eval={root}/eval/model.ckpt", "--export_format=none"]
    run(Helper, values_in(tmp_path, "--learner=weight-sparse", "--ws_prune_ratio=0.75",
                          "--ws_prune_ratio_prtl=uniform", *paths(tmp_path, "ws"), *common))
    sparse, _ = load_model(f"{tmp_path}/ws_eval/model.ckpt")
    report = run(Helper, values_in(tmp_path, "--learner=uniform-tf", "--enbl_warm_start",
                                   f"--warm_start_path={tmp_path}/ws_eval/model.ckpt",
                                   "--nb_epochs_rat=0.2", *paths(tmp_path, "uqtf", "pte"),
                                   *common))
    assert report["sparsity"]["kept_zeros"] >= 0.74
    program = torch.export.load(f"{tmp_path}/uqtf_eval/model.pt2")
    weights = [t for t in program.state_dict.values() if t.dtype == torch.int8 and t.dim() >= 2]
    weights += [t for t in program.constants.values()
                if isinstance(t, torch.Tensor) and t.dtype == torch.int8 and t.dim() >= 2]
    sparse_weights = [m.weight for m in sparse.modules()
                      if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(weights) == len(sparse_weights)
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    expected = sum(int((w == 0).sum()) for w in sparse_weights) / sum(
        w.numel() for w in sparse_weights)
    assert zeros >= expected - 1e-9 and expected >= 0.74


# -- unfit chains ----------------------------------------------------------------------------
def refused(root, tmp_path, learner: str, start: str, *extra: str) -> str:
    prefix = {"uniform": "uql", "non-uniform": "nuql", "uniform-tf": "uqtf",
              "chn-pruned-rmt": "cpr", "weight-sparse": "ws"}[learner]
    values = values_in(tmp_path, f"--learner={learner}", "--enbl_warm_start",
                       f"--warm_start_path={start}", f"--save_path_eval={root}/eval/model.ckpt",
                       *paths(tmp_path, prefix, "pte" if prefix == "uqtf" else "ckpt"), *extra)
    with pytest.raises(ChainError) as err:
        run(Helper, values)
    return str(err.value)


def test_an_int8_program_is_never_a_start(chain, tmp_path):
    root = chain[0]
    for learner in ("uniform", "uniform-tf"):
        message = refused(root, tmp_path, learner, f"{root}/uqtf_eval/model.pte")
        assert "is an ExecuTorch program (a deployment artifact)" in message
        assert "cannot be compressed or quantized again" in message
    message = refused(root, tmp_path, "uniform", f"{root}/uqtf_eval/model.pt2")
    assert "exported int8 program" in message


def test_quantized_models_are_not_quantized_or_pruned_again(chain, tmp_path):
    root = chain[0]
    uql_values = values_in(tmp_path, "--learner=uniform", "--uql_weight_bits=4",
                           f"--save_path_eval={root}/eval/model.ckpt", "--export_format=none",
                           *paths(tmp_path, "uql"))
    run(Helper, uql_values)
    start = uql_values["uql_save_path_eval"]
    for learner in ("non-uniform", "uniform-tf"):
        message = refused(root, tmp_path, learner, start)
        assert "the model is quantized (by uniform; chain full-prec -> uniform)" in message
        assert "quantizing an already quantized model again" in message
    for learner in ("chn-pruned-rmt", "weight-sparse"):
        assert "prune before quantizing" in refused(root, tmp_path, learner, start)


def test_bad_starts_are_named(chain, tmp_path):
    root = chain[0]
    assert "does not exist" in refused(root, tmp_path, "uniform", f"{tmp_path}/none.ckpt")
    message = refused(root, tmp_path, "uniform", f"{root}/ckpt/model.ckpt")
    assert "holds a 'checkpoint', not a model artifact" in message
    # an artifact of another input size (16x16) for an 8x8 helper
    other = tmp_path / "other"
    run(Helper, flag_values(other, "--nb_epochs_rat=0.01", "--export_format=none"))
    message = refused(root, tmp_path, "uniform", f"{other}/eval/model.ckpt")
    assert "takes inputs of shape [1, 16, 16] but this helper feeds [1, 8, 8]" in message
