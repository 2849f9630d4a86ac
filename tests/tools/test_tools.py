"""The model tools: summary, draw, ONNX export, latency (``tools/``) and their library code.

Models are tiny digits ResNet-20s at 8x8: a random-weight artifact written here, and a thinned
copy of the shared ``tiny_pretrained`` model (GatherConv2d / GatherLinear layers). The entry
scripts run as subprocesses, all started together by one module fixture so they overlap.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from torch import nn

from compression.quantization import int8_qat
from compression.graph.layers import GraphError, analyse
from compression.quantization.spec import act_quant_entry
from compression.quantization.activations import attach_activation_quantizers
from compression.surgery.picks import GatherConv2d, GatherLinear
from compression.surgery.thinning import thin
from nets import resnet_at_digits
from nets.registry import create_net
from tests.conftest import INPUT_SIZES, finish, tool
from tools.common import (ToolError, check_writable, helper_names, load_artifact, make_helper,
                          parse_shape, resolve_helper, resolve_input_shape)
from utils.checkpoint import save_file
from utils.config import ConfigError
from utils.data_loading import make_eval_loader
from tools.model_draw import GraphvizUnavailable, count_nodes_edges, render, to_dot, write_dot
from compression.artifacts import load_model
from compression.artifacts import save_model
from deployment import pte as pte_runtime
from deployment.runners import RunnerError, compare_latency, runner_for
from utils.model_stats import count_flops, count_params
from utils.model_summary import COLUMNS, XlsxUnavailable, format_table, summarize, write_csv, write_xlsx
from deployment.onnx_export import (NotExportable, check_exportable, compare_outputs, export_onnx,
                               onnx_session)

SHAPE = (1, 8, 8)
DIGITS8 = ["--helper=resnet_at_digits", "--helper_config=image_size=8"]


def digits_helper():
    return resnet_at_digits.ModelHelper(resnet_at_digits.Config(image_size=8))


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A random-weight digits artifact, its .onnx, a training checkpoint, a text file, and an
    artifact with activation quantizers."""
    root = tmp_path_factory.mktemp("tools")
    helper = digits_helper()
    torch.manual_seed(0)
    model = helper.build_model().eval()
    paths = {"model": root / "model.ckpt", "train": root / "train.ckpt", "text": root / "notes.ckpt",
             "onnx": root / "model.onnx", "act_quant": root / "act_quant.ckpt"}
    save_model(str(paths["model"]), model, helper.net_spec(), helper.describe())
    save_file(str(paths["train"]), "checkpoint", {"model": model.state_dict(), "step": 3,
                                                   "meta": {"spec": helper.net_spec()}})
    paths["text"].write_text("not a model\n")
    export_onnx(model, SHAPE, str(paths["onnx"]))
    quantized = helper.build_model().eval()
    attach_activation_quantizers(quantized, ["layer1.0.conv1"], 8)
    spec = {**helper.net_spec(), "transforms": [act_quant_entry(["layer1.0.conv1"], 8)]}
    save_model(str(paths["act_quant"]), quantized, spec, helper.describe())
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture(scope="module")
def thinned(tiny_pretrained, tmp_path_factory):
    """The pre-trained tiny model with half the input channels of every layer but the first
    removed (chain layers really shrink, residual inputs become gathers), saved as an artifact."""
    root = tmp_path_factory.mktemp("thinned")
    tiny_pretrained(root)
    full, saved = load_model(str(root / "eval" / "model.ckpt"))
    layers = analyse(full, SHAPE)
    gen = torch.Generator().manual_seed(0)
    keep = {layer.name: torch.randperm(layer.in_channels, generator=gen)[:layer.in_channels // 2]
            for layer in layers if not layer.is_first}
    model, spec = thin(full.eval(), layers, keep, saved["spec"])
    path = root / "thin" / "model.ckpt"
    save_model(str(path), model, spec, saved["meta"])
    return str(path), model.eval()


@pytest.fixture(scope="module", autouse=True)
def clis(files, thinned, tmp_path_factory):
    """Every entry script once on a good input and once on a wrong kind of file, started together
    before the first test of the module, so that they overlap the in-process tests."""
    out = tmp_path_factory.mktemp("cli")
    procs = {
        "summary": tool("summary", f"--model={files['model']}", f"--csv={out / 's.csv'}",
                        f"--xlsx={out / 's.xlsx'}"),
        "summary_bad": tool("summary", f"--model={files['train']}"),
        "draw": tool("draw", f"--model={files['model']}", f"--out={out / 'graph' / 'm.dot'}", *DIGITS8),
        "draw_bad": tool("draw", f"--model={files['text']}", f"--out={out / 'bad.dot'}"),
        "draw_png": tool("draw", f"--model={files['model']}", f"--out={out / 'asked' / 'm.dot'}",
                         "--formats=png", *DIGITS8),
        "export": tool("export_onnx", f"--model={thinned[0]}", f"--out={out / 'thin.onnx'}", *DIGITS8),
        "export_bad": tool("export_onnx", f"--model={files['train']}", f"--out={out / 'bad.onnx'}"),
        "latency": tool("latency", f"--model_a={files['model']}", f"--model_b={files['onnx']}",
                        "--batch_sizes=1,3", "--threads=1", "--warmup=1", "--repeats=3"),
        "latency_bad": tool("latency", f"--model_a={files['text']}", f"--model_b={files['onnx']}"),
    }
    yield out, procs
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def done(clis, name: str) -> subprocess.CompletedProcess:
    return finish(clis[1][name], timeout=240)


def assert_user_error(result: subprocess.CompletedProcess, *phrases: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr
    for phrase in phrases:
        assert phrase in result.stderr


# -- tools/common.py -----------------------------------------------------------------------------
def test_resolve_helper_by_module_or_class_path():
    assert resolve_helper("resnet_at_digits") is resnet_at_digits.ModelHelper
    assert resolve_helper("nets.resnet_at_digits:ModelHelper") is resnet_at_digits.ModelHelper
    from examples.convnet_at_fmnist import ModelHelper as FmnistHelper
    assert resolve_helper("examples.convnet_at_fmnist:ModelHelper") is FmnistHelper
    names = helper_names()
    assert {"resnet_at_digits", "resnet_at_cifar10", "lenet_at_cifar10"} <= set(names)
    assert not [n for n in names if n.endswith("_run")]
    with pytest.raises(ToolError) as err:
        resolve_helper("resnet_at_mnist")
    assert "unknown helper 'resnet_at_mnist'; valid helpers: " + ", ".join(names) in str(err.value)
    with pytest.raises(ToolError, match="cannot import no_such_pkg"):
        resolve_helper("no_such_pkg.mod:Helper")
    with pytest.raises(ToolError, match="has no class 'Nope'"):
        resolve_helper("nets.resnet_at_digits:Nope")


def test_make_helper_converts_config_values():
    helper = make_helper(resnet_at_digits.ModelHelper, ["image_size=8", "batch_size_eval=100"])
    assert helper.input_shape == SHAPE and helper.cfg.batch_size_eval == 100
    with pytest.raises(ToolError, match=r"'size=8' is not key=value with a key of .*image_size"):
        make_helper(resnet_at_digits.ModelHelper, ["size=8"])
    with pytest.raises(ToolError, match="image_size must be a int, got 'big'"):
        make_helper(resnet_at_digits.ModelHelper, ["image_size=big"])
    with pytest.raises(ConfigError, match="--image_size: must be >= 8"):
        make_helper(resnet_at_digits.ModelHelper, ["image_size=4"])


def test_input_shape_resolution():
    meta = {"input_shape": [1, 8, 8]}
    assert parse_shape("3,32,32") == (3, 32, 32)
    assert resolve_input_shape("2,4,4", None, meta) == (2, 4, 4)   # explicit wins
    assert resolve_input_shape("", None, meta) == SHAPE              # recorded in the artifact
    assert resolve_input_shape(None, digits_helper(), meta) == SHAPE
    with pytest.raises(ToolError, match=r"trained on inputs of shape \[1, 8, 8\] but the helper feeds "
                                        r"\[1, 16, 16\]"):
        resolve_input_shape(None, resnet_at_digits.ModelHelper(), meta)
    with pytest.raises(ToolError, match="does not record its input shape"):
        resolve_input_shape("", None, {})
    with pytest.raises(ToolError, match="not both"):
        resolve_input_shape("1,8,8", digits_helper(), meta)
    for bad in ("", "a,b", "3,0,4"):
        with pytest.raises(ToolError, match="--input_shape: expected positive integers"):
            parse_shape(bad)


def test_load_artifact_refuses_other_files(files, tmp_path):
    model, obj = load_artifact(files["model"])
    assert not model.training and obj["kind"] == "model" and obj["meta"]["input_shape"] == [1, 8, 8]
    expected = "a model artifact written by a learner's --*_save_path_eval"
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(open(files["model"], "rb").read()[:5000])
    cases = {str(tmp_path / "missing.ckpt"): "no such file: ", files["train"]: "is a training checkpoint",
             files["text"]: "not a valid pocketflow-torch file",
             str(truncated): "not a valid pocketflow-torch file",
             str(tmp_path): "is a directory, not a model artifact"}
    for path, phrase in cases.items():
        with pytest.raises(ToolError) as err:
            load_artifact(path)
        assert path in str(err.value) and phrase in str(err.value) and expected in str(err.value)


def test_check_writable(tmp_path):
    nested = tmp_path / "a" / "b" / "out.csv"
    assert check_writable(str(nested)) == str(nested) and nested.parent.is_dir()
    assert os.listdir(nested.parent) == []                  # the probe file is gone
    (tmp_path / "file").write_text("x")
    with pytest.raises(ToolError, match=re.escape(f"cannot write {tmp_path / 'file' / 'out.csv'}")):
        check_writable(str(tmp_path / "file" / "out.csv"))
    with pytest.raises(ToolError, match="it is a directory"):
        check_writable(str(tmp_path))
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ToolError, match=re.escape(f"cannot write {locked / 'out.csv'}")):
            check_writable(str(locked / "out.csv"))


# -- summary -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(INPUT_SIZES))
def test_summary_flops_equal_count_flops(name):
    size = INPUT_SIZES.get(name, 32)
    torch.manual_seed(0)
    kwargs = {"input_size": size} if name == "lenet" else {}
    model = create_net(name, num_classes=10, in_channels=3, **kwargs)
    summary = summarize(model, (3, size, size))
    assert summary.flops == 2 * summary.macs == count_flops(model, (3, size, size))
    assert summary.total.params == count_params(model)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))]
    assert len(summary.rows) == len(layers)


@pytest.mark.parametrize("name", ["functional", "convnext", "mobilenetv3"])
def test_summary_flops_of_thinned_zoo_nets_with_picks_equal_count_flops(name):
    """Thinned models with Gather*/Scatter* layers (a scatter computes fewer channels than
    the tensor it writes): the summary counts what the weights compute, as flop_counter does."""
    from compression.surgery.picks import is_gather, is_scatter
    from compression.surgery.thinning import thin
    from tests.zoo.nets import INPUT_SHAPE, pruned

    model, layers, keep = pruned(name)
    thinned, _ = thin(model, layers, keep)
    if name == "functional":
        assert any(is_scatter(m) or is_gather(m) for m in thinned.modules())
    summary = summarize(thinned, INPUT_SHAPE)
    assert summary.flops == count_flops(thinned, INPUT_SHAPE)


def test_resnet20_has_41m_macs():
    summary = summarize(create_net("resnet20", num_classes=10, in_channels=3), (3, 32, 32))
    # 3x3 convs: conv1 16*3*9*32^2 + 6 of 16*16*9*32^2 + 32*16*9*16^2 + 5 of 32*32*9*16^2
    # + 64*32*9*8^2 + 5 of 64*64*9*8^2; 1x1 shortcuts 32*16*16^2 + 64*32*8^2; fc 64*10
    expected = (16 * 3 * 9 * 1024 + 6 * 16 * 16 * 9 * 1024 + 32 * 16 * 9 * 256 + 5 * 32 * 32 * 9 * 256
                + 64 * 32 * 9 * 64 + 5 * 64 * 64 * 9 * 64 + 32 * 16 * 256 + 64 * 32 * 64 + 640)
    assert summary.macs == expected == 40_813_184
    assert 40e6 <= summary.macs <= 42e6
    rows = {row.name: row for row in summary.rows}
    assert rows["layer2.0.conv1"].output_shape == (1, 32, 16, 16)
    assert rows["layer2.0.conv1"].macs == 32 * 16 * 9 * 256
    assert rows["layer2.0.conv1"].weight_shape == (32, 16, 3, 3) and rows["layer2.0.conv1"].params == 4608
    assert rows["bn1"].params == 32 and rows["bn1"].macs == 0 and rows["bn1"].filter_sparsity is None


class Zeroed(nn.Module):
    """A conv, a depthwise conv, a grouped conv, BN and a linear layer with hand-zeroed weights."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.grouped = nn.Conv2d(8, 4, 1, groups=2)
        self.fc = nn.Linear(4 * 5 * 5, 10)

    def forward(self, x):
        return self.fc(self.grouped(self.dw(self.bn(self.conv(x)))).flatten(1))


def test_sparsity_of_hand_zeroed_weights():
    torch.manual_seed(0)
    model = Zeroed()
    with torch.no_grad():
        model.conv.weight[[0, 3]] = 0          # 2 whole filters: 2 * 4*9 = 72 zeros
        model.conv.weight[:, 1] = 0            # input channel 1: 8*9, 18 of them already zero: +54
        model.conv.weight[5, 2, 0, :2] = 0     # 2 single elements
        model.bn.weight[[1, 6]] = 0
        model.dw.weight[2] = 0                 # depthwise: channel 2 is filter 2 (9 zeros)
        model.grouped.weight[2:, 0] = 0        # group 1's first input = input channel 4 (2 zeros)
        model.fc.weight[:, 7] = 0              # one input feature (10 zeros)
        model.fc.weight[4] = 0                 # one output (100 zeros, 1 already)
    rows = {row.name: row for row in summarize(model, (4, 5, 5)).rows}
    summary = summarize(model, (4, 5, 5))
    conv = rows["conv"]
    assert (conv.element_sparsity, conv.filter_sparsity, conv.channel_sparsity) == (128 / 288, 2 / 8, 1 / 4)
    assert (rows["bn"].element_sparsity, rows["bn"].filter_sparsity, rows["bn"].channel_sparsity) == (
        2 / 8, None, None)
    assert (rows["dw"].element_sparsity, rows["dw"].filter_sparsity, rows["dw"].channel_sparsity) == (
        9 / 72, 1 / 8, 1 / 8)
    assert (rows["grouped"].element_sparsity, rows["grouped"].filter_sparsity,
            rows["grouped"].channel_sparsity) == (2 / 16, 0.0, 1 / 8)
    assert (rows["fc"].element_sparsity, rows["fc"].filter_sparsity, rows["fc"].channel_sparsity) == (
        109 / 1000, 1 / 10, 1 / 100)
    total = summary.total
    assert total.element_sparsity == (128 + 9 + 2 + 109) / (288 + 72 + 16 + 1000)
    assert total.filter_sparsity == (2 + 1 + 0 + 1) / (8 + 8 + 4 + 10)
    assert total.channel_sparsity == (1 + 1 + 1 + 1) / (4 + 8 + 8 + 100)
    assert summary.macs == 8 * 25 * 36 + 8 * 25 * 9 + 4 * 25 * 4 + 10 * 100
    assert summary.flops == count_flops(model, (4, 5, 5))


def test_csv_and_xlsx_hold_the_same_cells(tmp_path):
    openpyxl = pytest.importorskip("openpyxl")
    torch.manual_seed(0)
    model = Zeroed()
    with torch.no_grad():
        model.conv.weight[1] = 0
    summary = summarize(model, (4, 5, 5))
    write_csv(summary, str(tmp_path / "s.csv"))
    write_xlsx(summary, str(tmp_path / "out" / "s.xlsx"))
    with open(tmp_path / "s.csv", newline="") as handle:
        csv_rows = list(csv.reader(handle))
    sheet = openpyxl.load_workbook(tmp_path / "out" / "s.xlsx").active
    xlsx_rows = [list(row) for row in sheet.iter_rows(values_only=True)]
    assert csv_rows[0] == list(COLUMNS) == xlsx_rows[0]
    assert len(csv_rows) == len(xlsx_rows) == len(summary.rows) + 2
    assert csv_rows[1][:6] == ["conv", "Conv2d", "8x4x3x3", "1x8x5x5", "296", str(8 * 25 * 36)]
    assert csv_rows[-1][0] == "total" and int(csv_rows[-1][4]) == count_params(model)
    for csv_row, xlsx_row in zip(csv_rows[1:], xlsx_rows[1:]):
        for text, value in zip(csv_row, xlsx_row):
            if value is None or value == "":
                assert text == ""
            elif isinstance(value, (int, float)):
                assert float(text) == value
            else:
                assert text == value
    assert float(csv_rows[1][7]) == 1 / 8  # conv filter sparsity, full precision


def test_xlsx_without_openpyxl_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "openpyxl", None)
    with pytest.raises(XlsxUnavailable, match=re.escape("pip install -e .[tools]")):
        write_xlsx(summarize(Zeroed(), (4, 5, 5)), str(tmp_path / "s.xlsx"))
    assert not (tmp_path / "s.xlsx").exists()


def test_summary_of_a_thinned_model(thinned):
    _, model = thinned
    summary = summarize(model, SHAPE)
    types = {row.name: row.type for row in summary.rows}
    assert types["layer1.0.conv1"] == "GatherConv2d" and types["fc"] == "GatherLinear"
    assert types["layer1.0.conv2"] == "Conv2d"
    assert summary.flops == count_flops(model, SHAPE)
    rows = {row.name: row for row in summary.rows}
    assert rows["layer1.0.conv1"].weight_shape == (8, 8, 3, 3)     # 16 -> 8 inputs, 16 -> 8 outputs
    assert rows["layer1.0.conv1"].macs == 8 * 8 * 9 * 64
    assert rows["fc"].weight_shape == (10, 32) and rows["fc"].macs == 320
    assert "GatherConv2d" in format_table(summary)


# -- draw ----------------------------------------------------------------------------------------
def test_dot_of_resnet20():
    model = create_net("resnet20", num_classes=10, in_channels=3)
    text = to_dot(model, (3, 32, 32))
    outputs = {}
    hooks = [m.register_forward_hook(lambda m, a, o, name=name: outputs.__setitem__(name, o.shape))
             for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    model.eval()(torch.zeros(1, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    assert len(outputs) == 21                       # 19 3x3 convs + 2 shortcut 1x1 convs
    labels = re.findall(r'label="([^"]*)"', text)
    conv_labels = [label for label in labels if "\\nConv2d\\n" in label]
    assert sorted(conv_labels) == sorted(f"{name}\\nConv2d\\n{'x'.join(map(str, shape))}"
                                         for name, shape in outputs.items())
    assert sum(label.startswith("add\\n") for label in labels) == 9    # one per residual block
    assert labels[0] == "input\\n1x3x32x32" and labels[-1] == "output"
    assert "flatten\\n1x64" in labels and "fc\\nLinear\\n1x10" in labels
    # 75 nodes: input, 21 convs, 21 BN, 19 ReLU, 9 adds, pool, flatten, fc, output; every
    # node but the input reads one node, and each add one more
    nb_nodes, nb_edges = count_nodes_edges(text)
    assert nb_nodes == len(labels) == 1 + 21 + 21 + 19 + 9 + 3 + 1 == 75
    assert nb_edges == len(re.findall(r"n\d+ -> n\d+;", text)) == nb_nodes - 1 + 9
    assert text.startswith('digraph "model" {') and text.endswith("}\n")


def test_missing_dot_program_keeps_the_dot_file(monkeypatch, tmp_path):
    model = create_net("lenet", num_classes=10, in_channels=1, input_size=8)
    path = str(tmp_path / "lenet.dot")
    write_dot(model, SHAPE, path)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(GraphvizUnavailable) as err:
        render(path, "png")
    for hint in ("apt-get install graphviz", "conda install graphviz", "brew install graphviz", path):
        assert hint in str(err.value)
    assert open(path).read().startswith('digraph "model"') and not (tmp_path / "lenet.png").exists()


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_render_with_dot(tmp_path):
    path = str(tmp_path / "m.dot")
    write_dot(create_net("resnet20", num_classes=10, in_channels=1), SHAPE, path)
    assert open(render(path, "png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in open(render(path, "svg")).read()


def test_untraceable_model_gets_the_graph_error():
    class Dynamic(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else x

    with pytest.raises(GraphError, match="torch.fx cannot trace Dynamic .*PrunableLayer"):
        to_dot(Dynamic(), SHAPE)


# -- ONNX export ---------------------------------------------------------------------------------
def test_thinned_artifact_exports_within_1e4(thinned, tmp_path):
    path, _ = thinned
    model, obj = load_artifact(path)
    assert any(isinstance(m, (GatherConv2d, GatherLinear)) for m in model.modules())
    check_exportable(obj["spec"])
    onnx_path = export_onnx(model, SHAPE, str(tmp_path / "thin.onnx"))
    session = onnx_session(onnx_path, 1)
    inputs = torch.randn(8, *SHAPE, generator=torch.Generator().manual_seed(0))
    random = compare_outputs(session, model, [(inputs, None)])
    assert random["nb_samples"] == 8 and random["max_abs_diff"] <= 1e-4 and random["accuracy_torch"] is None
    helper = digits_helper()
    real = compare_outputs(session, model, make_eval_loader(helper.build_dataset_eval(), 128))
    assert real["nb_samples"] == len(helper.build_dataset_eval()) == 359
    assert real["max_abs_diff"] <= 1e-4
    assert real["accuracy_torch"] == real["accuracy_onnx"]
    assert 0.0 <= real["accuracy_torch"] <= 1.0


def test_activation_quantizers_are_refused(files):
    _, obj = load_artifact(files["act_quant"])
    with pytest.raises(NotExportable, match="activation fake-quantizers have no ONNX export yet"):
        check_exportable(obj["spec"])
    check_exportable(load_artifact(files["model"])[1]["spec"])


# -- latency -------------------------------------------------------------------------------------
def test_onnx_and_ckpt_runners_agree(files, one_thread):
    torch_run = runner_for(files["model"], 1, load=load_artifact)
    onnx_run = runner_for(files["onnx"], 1)
    assert (torch_run.runtime, onnx_run.runtime) == ("torch", "onnxruntime")
    assert torch_run.input_shape == onnx_run.input_shape == SHAPE
    x = torch.randn(5, *SHAPE, generator=torch.Generator().manual_seed(0))
    expected, got = torch_run(x), onnx_run(x)
    assert got.shape == expected.shape == (5, 10)
    assert (got - expected).abs().max() <= 1e-4


def test_compare_latency_reports_medians_and_ratio(files, one_thread):
    result = compare_latency(runner_for(files["model"]), runner_for(files["onnx"], 1), SHAPE,
                             batch_sizes=(1, 3), nb_threads=1, warmup=1, repeats=3)
    assert set(result["a"]) == set(result["b"]) == set(result["ratio_b_over_a"]) == {"bs1", "bs3"}
    for key in ("bs1", "bs3"):
        assert result["a"][key] > 0 and result["b"][key] > 0
        assert result["ratio_b_over_a"][key] == result["b"][key] / result["a"][key]
    assert result["input_shape"] == [1, 8, 8] and result["threads"] == 1


def test_runner_bad_input(files, tmp_path, monkeypatch):
    with pytest.raises(RunnerError, match=r"unknown model file type '\.txt'; expected a model artifact"):
        runner_for(str(tmp_path / "model.txt"))
    with pytest.raises(RunnerError, match=re.escape(f"no such file: {tmp_path / 'gone.onnx'}")):
        runner_for(str(tmp_path / "gone.onnx"))
    with pytest.raises(RunnerError, match="--device=cuda runs only model artifacts"):
        runner_for(files["onnx"], device="cuda")
    with pytest.raises(ToolError, match="is a training checkpoint"):
        runner_for(files["train"], load=load_artifact)
    (tmp_path / "m.pte").write_bytes(b"\0" * 16)

    def missing():
        raise int8_qat.Int8ExportUnavailable(f"running a .pte needs executorch: {int8_qat.INSTALL_HINT}")
    monkeypatch.setattr(pte_runtime, "runtime", missing)
    with pytest.raises(int8_qat.Int8ExportUnavailable, match=re.escape(int8_qat.INSTALL_HINT)):
        runner_for(str(tmp_path / "m.pte"))


# -- the entry scripts, end to end ---------------------------------------------------------------
def test_summary_cli(clis, files):
    out = clis[0]
    result = done(clis, "summary")
    assert result.returncode == 0, result.stderr
    flops = count_flops(load_model(files["model"])[0], SHAPE)
    assert f"input [1, 8, 8]: {flops // 2:,} MACs = {flops:,} FLOPs" in result.stdout
    assert re.search(r"^layer3\.2\.conv2 +Conv2d +64x64x3x3 +1x64x2x2 ", result.stdout, re.MULTILINE)
    with open(out / "s.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[-1][0] == "total" and int(rows[-1][5]) == flops // 2
    assert (out / "s.xlsx").stat().st_size > 0
    assert_user_error(done(clis, "summary_bad"), files["train"], "is a training checkpoint")


def test_draw_cli(clis, files):
    out = clis[0]
    result = done(clis, "draw")
    dot = (out / "graph" / "m.dot").read_text()
    assert f"wrote {out / 'graph' / 'm.dot'} (75 nodes, 83 edges)" in result.stdout
    assert count_nodes_edges(dot) == (75, 83) and "layer1.0.conv1\\nConv2d\\n1x16x8x8" in dot
    asked = done(clis, "draw_png")
    assert (out / "asked" / "m.dot").read_text() == dot
    assert result.returncode == 0, result.stderr       # by default: render only when dot exists
    if shutil.which("dot") is None:
        assert "not rendered: Graphviz's dot is not installed (install Graphviz: apt-get" in result.stdout
        assert not (out / "graph" / "m.png").exists()
        assert_user_error(asked, "needs Graphviz's `dot` program", "apt-get install graphviz")
    else:
        assert (out / "graph" / "m.png").exists()
        assert asked.returncode == 0 and (out / "asked" / "m.png").exists()
    assert_user_error(done(clis, "draw_bad"), files["text"], "not a valid pocketflow-torch file")
    assert not (out / "bad.dot").exists()


def test_export_onnx_cli(clis, files):
    out = clis[0]
    result = done(clis, "export")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["ok"] and figures["onnx"] == str(out / "thin.onnx") and figures["input_shape"] == [1, 8, 8]
    assert figures["random"]["max_abs_diff"] <= 1e-4 and figures["eval"]["max_abs_diff"] <= 1e-4
    assert figures["eval"]["nb_samples"] == 359
    assert figures["eval"]["accuracy_torch"] == figures["eval"]["accuracy_onnx"]
    assert f"accuracy torch = {figures['eval']['accuracy_torch']:.4f}" in result.stdout
    assert_user_error(done(clis, "export_bad"), files["train"], "is a training checkpoint")
    assert not (out / "bad.onnx").exists()


def test_latency_cli(clis, files):
    result = done(clis, "latency")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    figures = json.loads(lines[-1])
    assert figures["a"]["runtime"] == "torch" and figures["b"]["runtime"] == "onnxruntime"
    assert figures["a"]["path"] == files["model"] and figures["batch_sizes"] == [1, 3]
    for key in ("bs1", "bs3"):
        assert figures["ratio_b_over_a"][key] == figures["b"]["ms"][key] / figures["a"]["ms"][key]
    assert any(re.match(r"^ +3 +[\d.]+ +[\d.]+ +[\d.]+$", line) for line in lines)
    assert_user_error(done(clis, "latency_bad"), files["text"], "not a valid pocketflow-torch file")


# -- int8 QDQ ONNX -------------------------------------------------------------------------------
def test_int8_qdq_onnx_of_a_thinned_model(thinned, tmp_path):
    import onnx

    from deployment.onnx_int8 import quantize_qdq

    path, model = thinned
    helper = digits_helper()
    fp32 = export_onnx(model, SHAPE, str(tmp_path / "m.onnx"))
    calibration = [x for x, _ in make_eval_loader(helper.build_dataset_val(), 64)][:2]
    int8 = quantize_qdq(fp32, str(tmp_path / "m.int8.onnx"), calibration)
    ops = [node.op_type for node in onnx.load(int8).graph.node]
    assert ops.count("QuantizeLinear") >= 20 and ops.count("DequantizeLinear") >= 40
    # int8 weights (a quarter) plus the scales and zero points of every QDQ pair
    assert os.path.getsize(int8) < 0.45 * os.path.getsize(fp32)
    loader = make_eval_loader(helper.build_dataset_eval(), 500)
    result = compare_outputs(onnx_session(int8), model, loader)
    assert result["nb_samples"] == 359
    assert abs(result["accuracy_onnx"] - result["accuracy_torch"]) <= 0.03   # 3 points
    with pytest.raises(ValueError, match="at least one calibration batch"):
        quantize_qdq(fp32, str(tmp_path / "none.onnx"), [])
