"""compression.artifacts, the one home of saved files: the suffix table is the only place that
spells a suffix, load_model refuses what is not a model artifact with what it is and what to
do, a registered runtime is offered everywhere, and the copies round-trip through the owner."""
from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from compression import artifacts
from compression.artifacts import files as table
from compression.artifacts import (NotAModelArtifact, derived_suffixes, export_quantized,
                                   export_sparse_files, file_of, load_model, load_quantized_model,
                                   load_sparse_model, path_of, runtime_for, save_model)
from compression.quantization.quantizers import UniformWeightQuantizer, attach_weight_quantizers
from compression.sparsity.allocation import nb_zeros_uniform
from compression.sparsity.masks import attach_masks, detach_masks, maskable_layers, set_masks
from compression.sparsity.sparse_format import LAYOUTS
from deployment import formats as formats_module
from deployment.formats import DeployFormat, FormatUnavailable, export_choices, formats_for, register_format
from learners.config import LearnerConfig
from nets.registry import create_net, net_spec
from utils.checkpoint import CheckpointError
from utils.config import ConfigError
from tests.conftest import REPO

SPEC = net_spec("resnet20", num_classes=10, in_channels=1)
TABLE = REPO / "compression" / "artifacts" / "files.py"
# a suffix spelled out, in code or prose: the copies, the float twins; quoted (code): the
# float-twin tag, the deployment suffixes and the int8 QDQ twin
SUFFIX_LITERAL = re.compile(r"\.quant\.pt|\.coo\.pt|\.csr\.pt|_fp32\.(onnx|pte)|[\"']_fp32[\"']"
                            r"|[\"']\.(pt2|onnx|pte|int8\.onnx)[\"']")

pytestmark = pytest.mark.usefixtures("one_thread")


def _sources() -> list[Path]:
    skip = {".venv", "tests", "build", "docs"}
    return [p for p in REPO.rglob("*.py")
            if not ({*p.relative_to(REPO).parts[:-1]} & skip)
            and not p.relative_to(REPO).parts[0].startswith(".")]


# -- the table --------------------------------------------------------------------------------
def test_suffix_literals_live_only_in_the_table():
    hits = {str(p.relative_to(REPO)): [i for i, line in enumerate(p.read_text().splitlines(), 1)
                                       if SUFFIX_LITERAL.search(line)]
            for p in _sources()}
    assert len(hits[str(TABLE.relative_to(REPO))]) >= 8        # the reader is not blind
    outside = {path: lines for path, lines in hits.items() if lines and Path(REPO / path) != TABLE}
    assert outside == {}, outside


def test_encoders_do_not_reach_up_into_artifacts():
    for rel in ("compression/sparsity/sparse_format.py", "compression/quantization/packed_format.py",
                "utils/model_io.py"):
        tree = ast.parse((REPO / rel).read_text())
        names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not {n for n in names if n.startswith("compression.artifacts")}, rel
    import utils.model_io as model_io
    assert not hasattr(model_io, "save_model") and not hasattr(model_io, "load_weights_from")


def test_table_rows():
    assert derived_suffixes() == (".onnx", ".pte", ".pt2", "_fp32.onnx", "_fp32.pte", ".coo.pt",
                                  ".csr.pt", ".quant.pt", ".int8.onnx")
    assert table.model_suffixes() == (".ckpt", ".pt", ".pth")
    assert [row.name for row in table.rows("sparse")] == list(LAYOUTS)
    runtimes = {"m.ckpt": "torch", "m.PT": "torch", "m.pth": "torch", "m.onnx": "onnxruntime",
                "m_fp32.onnx": "onnxruntime", "m.pte": "executorch", "m_fp32.pte": "executorch",
                "m.pt2": "torch.export", "m.coo.pt": "torch", "m.txt": None, "model": None}
    assert {p: runtime_for(p) for p in runtimes} == runtimes
    assert file_of("a/m.coo.pt").name == "coo" and file_of("m_fp32.pte").name == "pte_fp32"
    assert file_of("m.pt").name == "pt" and file_of("m.int8.onnx").name == "onnx_int8"
    assert file_of("m.pte").what == "an ExecuTorch program" and file_of("m.txt") is None
    assert path_of("out/model", "quant") == "out/model.quant.pt"
    with pytest.raises(KeyError, match="no saved file is called 'tflite'"):
        path_of("m", "tflite")


# -- load_model refuses what is not a model artifact -----------------------------------------
@pytest.mark.parametrize("name, what", [
    ("model.pte", "an ExecuTorch program"), ("model.onnx", "an ONNX model"),
    ("model.pt2", "an exported int8 program"),
    ("model_fp32.pte", "an ExecuTorch program (the float twin of an int8 result)")])
def test_load_model_refuses_deployment_files(tmp_path, name, what):
    path = tmp_path / name
    path.write_bytes(b"PK\x03\x04 not a model")
    expected = (f"{name} is {what} (a deployment file), not a model artifact: run it with "
                "tools.latency / deployment.runners.runner_for, or load the .ckpt it was "
                "exported from")
    for present in (True, False):          # refused by what it is, before anything is read
        with pytest.raises(NotAModelArtifact) as info:
            load_model(str(path))
        assert str(info.value) == expected and "weights_only" not in str(info.value)
        if present:
            path.unlink()
    import pocketflow_torch as pf
    from tools.common import ToolError, load_artifact

    path.write_bytes(b"x")
    if name.endswith(".onnx"):
        with pytest.raises(NotAModelArtifact, match=re.escape(expected)):
            pf.load_model(str(path))
    else:                             # the API loads the programs it writes; this one is damaged
        with pytest.raises(CheckpointError, match=f"{re.escape(str(path))} is not an "):
            pf.load_model(str(path))
    with pytest.raises(ToolError, match=re.escape(expected)):
        load_artifact(str(path))


def test_load_model_refuses_a_directory_and_a_missing_file(tmp_path):
    with pytest.raises(NotAModelArtifact) as info:
        load_model(str(tmp_path))
    assert str(info.value).startswith(f"{tmp_path} is a directory, not a model artifact: give the "
                                      "file a learner wrote there")
    missing = tmp_path / "gone.ckpt"
    with pytest.raises(NotAModelArtifact) as info:
        load_model(str(missing))
    assert str(info.value) == (f"no such file: {missing} (expected a model artifact, the .ckpt a "
                               "learner writes at its --*_save_path_eval)")


class _Payload:
    pass


def test_a_pickled_file_gets_no_advice_to_unpickle_it(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"x": _Payload()}, path)
    with pytest.raises(CheckpointError) as info:
        load_model(str(path))
    message = str(info.value)
    assert message.startswith(f"cannot load {path}: not a valid pocketflow-torch file "
                              "(UnpicklingError: it holds Python objects")
    assert "weights_only" not in message and "can still be loaded" not in message


# -- the copies round-trip through the owner ---------------------------------------------------
def _sparse_resnet() -> nn.Module:
    torch.manual_seed(0)
    model = create_net("resnet20", num_classes=10, in_channels=1)
    attach_masks(model)
    layers = maskable_layers(model)
    sizes = [m.weight.numel() for m in layers.values()]
    set_masks(model, dict(zip(layers, nb_zeros_uniform(sizes, 0.9))))
    detach_masks(model)
    return model.eval()


def test_sparse_copies_round_trip(tmp_path):
    from learners.run.composition import stored_bytes

    model, stem = _sparse_resnet(), str(tmp_path / "model")
    dense = save_model(stem + ".ckpt", model, SPEC)
    x = torch.randn(3, 1, 8, 8)
    written = export_sparse_files(model, SPEC, stem, x)
    assert {k: v["path"] for k, v in written.items()} == {"coo": stem + ".coo.pt",
                                                          "csr": stem + ".csr.pt"}
    for layout, entry in written.items():
        assert entry["max_abs_diff"] == 0.0 and entry["bytes"] == os.path.getsize(entry["path"])
        assert entry["bytes"] < 0.25 * dense, (layout, entry["bytes"], dense)
        loaded, obj = load_sparse_model(entry["path"])
        assert obj["layout"] == layout
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
        with pytest.raises(CheckpointError, match=re.escape(
                "holds a 'sparse_model', not a model; read it with "
                "compression.artifacts.load_sparse_model")):
            load_model(entry["path"])
    assert stored_bytes(stem + ".ckpt") == min(e["bytes"] for e in written.values())


def test_packed_copy_round_trips(tmp_path):
    torch.manual_seed(0)
    model = create_net("resnet20", num_classes=10, in_channels=1)
    attach_weight_quantizers(model, None, lambda name: UniformWeightQuantizer(3, "channel"))
    model.eval()
    path = path_of(str(tmp_path / "model"), "quant")
    packed = export_quantized(path, model, SPEC, {"learner": "test"})
    assert packed["file"]["path"] == str(tmp_path / "model.quant.pt")
    assert packed["file"]["round_trip_exact"] is True
    assert packed["file"]["bytes"] == os.path.getsize(path)
    assert packed["sizes"]["bits_per_weight"] < 3.5      # 3-bit codes + a scale/offset per channel
    loaded, obj = load_quantized_model(path)
    assert obj["meta"] == {"learner": "test"}
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), model(x))
    with pytest.raises(CheckpointError, match="load_quantized_model"):
        load_model(path)


# -- a registered runtime ----------------------------------------------------------------------
class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def _export(model: nn.Module, example: torch.Tensor, path: str, kind: str, max_batch: int) -> int:
    torch.save(model.state_dict(), path)
    return os.path.getsize(path)


def _load(path: str, threads):
    model = _Tiny()
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


@pytest.fixture
def registry(monkeypatch):
    """The format and file registries, restored after the test."""
    monkeypatch.setattr(formats_module, "FORMATS", dict(formats_module.FORMATS))
    monkeypatch.setattr(table, "_FILES", dict(table._FILES))


def test_a_registered_format_is_offered_everywhere(tmp_path, registry):
    from deployment.pipeline import deploy
    from deployment.runners import runner_for

    fmt = register_format(DeployFormat("toyrt", ".toy", "toyruntime", {"fp32": ()}, "nothing to install",
                                       _export, "a toy program", _load))
    assert export_choices() == ("auto", "none", "onnx", "pte", "both", "toyrt")
    assert formats_for("toyrt") == [fmt]
    assert LearnerConfig(export_format="toyrt").export_format == "toyrt"
    assert {".toy", "_fp32.toy"} <= set(derived_suffixes())
    assert runtime_for("m_fp32.toy") == "toyruntime"
    path = tmp_path / "m.toy"
    path.write_bytes(b"x")
    with pytest.raises(NotAModelArtifact, match=re.escape("m.toy is a toy program (a deployment file)")):
        load_model(str(path))
    torch.manual_seed(0)
    model = _Tiny().eval()
    batches = [(torch.randn(5, 1, 2, 2), torch.randint(0, 3, (5,)))]
    results = deploy({"fp32": (model, str(tmp_path / "net"))}, [fmt], batches, batches[0][0][:2])
    figures = results["toyrt_fp32"]
    assert figures["path"] == str(tmp_path / "net.toy") and figures["runtime"] == "toyruntime"
    assert figures["parity_ok"] is True and figures["max_abs_diff"] == 0.0
    runner = runner_for(figures["path"])
    assert torch.equal(runner(batches[0][0]), model(batches[0][0]))
    with pytest.raises(FormatUnavailable, match="'toyrt' .toyruntime. does not export int8 models"):
        formats_for("toyrt", ("int8",))


def test_register_format_refusals(registry):
    before = (dict(formats_module.FORMATS), dict(table._FILES))
    with pytest.raises(ValueError, match="'both' is built in"):
        register_format(DeployFormat("both", ".bth", "rt", {"fp32": ()}, "", _export))
    with pytest.raises(ValueError, match="suffix '.ckpt' is already the file 'ckpt'"):
        register_format(DeployFormat("ckptrt", ".ckpt", "rt", {"fp32": ()}, "", _export))
    with pytest.raises(ValueError, match="suffix '.onnx' is already the file 'onnx'"):
        register_format(DeployFormat("onnx2", ".onnx", "rt", {"fp32": ()}, "", _export))
    assert (formats_module.FORMATS, table._FILES) == before
    table.register_file(table.ArtifactFile("half", "_fp32.half", "deployment", "a half file"))
    before = (dict(formats_module.FORMATS), dict(table._FILES))
    with pytest.raises(ValueError, match="suffix '_fp32.half' is already the file 'half'"):
        register_format(DeployFormat("halfrt", ".half", "rt", {"fp32": ()}, "", _export))
    assert (formats_module.FORMATS, table._FILES) == before       # nothing half-registered
    assert file_of("m.half") is None


def test_an_unknown_export_format_lists_the_valid_ones():
    valid = "auto, none, onnx, pte, both"
    with pytest.raises(FormatUnavailable, match=f"unknown export format 'tflite'; valid: {valid}$"):
        formats_for("tflite")
    with pytest.raises(ConfigError, match=f"--export_format: unknown export format 'tflite'; valid: "
                                          f"{valid}$"):
        LearnerConfig(export_format="tflite")


def test_the_front_lists_every_name():
    assert set(artifacts.__all__) >= {"save_model", "load_model", "build_model", "load_weights_from",
                                      "save_sparse_model", "load_sparse_model", "export_sparse_files",
                                      "save_quantized_model", "load_quantized_model", "export_quantized",
                                      "path_of", "file_of", "runtime_for", "register_file"}
    for name in artifacts.__all__:
        assert getattr(artifacts, name) is not None


def test_load_model_inference_form_folds_batchnorm(tmp_path):
    """``inference=True``: eval mode, no gradients, every BN after a conv folded (the same
    outputs)."""
    torch.manual_seed(0)
    model = create_net("resnet20", num_classes=10, in_channels=1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    path = str(tmp_path / "m.ckpt")
    save_model(path, model, SPEC)
    plain, _ = artifacts.load_model(path)
    served, _ = artifacts.load_model(path, inference=True)
    assert not served.training and not any(p.requires_grad for p in served.parameters())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in served.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in plain.modules()) == 21
    x = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(served(x), plain.eval()(x), atol=1e-5)
