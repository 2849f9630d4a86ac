"""The Python API on a plain nn.Module defined here (no ModelHelper, no registered net): two
learners and a chain, artifacts reloaded from files, bad options refused."""
from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import pocketflow_torch as pf
from utils.checkpoint import CheckpointError
from utils.config import ConfigError


class UserNet(nn.Module):
    """A user's own CNN: not registered anywhere."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.body = nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(2 * width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.body(self.stem(x))), 1))


def conv_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


@pytest.fixture(scope="module")
def trained():
    """The digits as (1x8x8 image, label) tensors; a UserNet trained on them in plain torch."""
    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    labels = torch.tensor(digits.target, dtype=torch.long)
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(labels), generator=gen)
    train = TensorDataset(images[order[:1400]], labels[order[:1400]])
    test = TensorDataset(images[order[1400:]], labels[order[1400:]])
    torch.manual_seed(0)
    model = UserNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(6):
        for x, y in DataLoader(train, batch_size=64, shuffle=True, generator=gen):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(test.tensors[0]).argmax(1) == test.tensors[1]).float().mean())
    assert accuracy > 0.9
    return model, train, test, accuracy


FAST = dict(epochs=1, report_latency=False, batch_size_eval=200)


@pytest.fixture(scope="module")
def pruned(trained, tmp_path_factory):
    model, train, test, _ = trained
    return pf.compress(model, DataLoader(train, batch_size=64), test, "chn-pruned-rmt",
                       out_dir=str(tmp_path_factory.mktemp("api") / "run"), prune_ratio=0.5,
                       nb_smpls=500, **FAST)


def test_channel_pruning_a_plain_module(trained, pruned):
    model, _, test, accuracy = trained
    report = pruned.report
    assert report["learner"] == "chn-pruned-rmt" and report["model"] == "usernet"
    assert report["accuracy"]["full"] == pytest.approx(accuracy, abs=1e-6)  # the model as given
    assert report["accuracy"]["compressed"] >= accuracy - 0.1
    # ratio 0.5 of each pruned layer's inputs (the stem reads the image and is skipped)
    kept = report["kept_channels"]
    assert kept == {"body.0": [8, 16], "body.3": [16, 32], "head": [16, 32]}
    assert sum(p.numel() for p in pruned.model.parameters()) == report["params"]["compressed"]
    assert report["params"]["compressed"] < 0.5 * report["params"]["full"]
    weights = conv_weights(pruned.model)
    assert weights["body.0"].shape == (16, 8, 3, 3) and weights["body.3"].shape[1] == 16
    # the artifact rebuilds from an instance of the user's class, and computes the same
    with pytest.raises(CheckpointError, match=r"the base architecture is the module .*UserNet"):
        pf.load_model(pruned.artifact)
    again = pf.load_model(pruned.artifact, base=UserNet())
    x = test.tensors[0][:32]
    with torch.no_grad():
        assert torch.equal(again(x), pruned.model(x))
    assert pruned.artifact in pruned.files and all(f["sha256"] for f in pruned.files.values())
    if "onnx" in report:  # checked in onnxruntime on the eval set
        assert report["onnx"]["parity_ok"] is True


def test_weight_sparsity_on_a_plain_module(trained, tmp_path):
    model, train, test, accuracy = trained
    result = pf.compress(model, train, test, "weight-sparse", out_dir=str(tmp_path),
                         prune_ratio=0.5, prune_ratio_prtl="uniform", batch_size=64,
                         export_format="none", **{**FAST, "epochs": 4})
    for name, weight in conv_weights(result.model).items():
        zeros = float((weight == 0).float().mean())
        assert zeros == pytest.approx(0.5, abs=0.01), name
    assert result.report["sparsity"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert set(result.report["sparse_files"]) == {"coo", "csr"}
    assert result.report["accuracy"]["compressed"] >= accuracy - 0.1
    assert result.report["chain"][0]["accuracy"] == pytest.approx(accuracy, abs=1e-6)


def test_report_times_the_full_and_the_compressed_model_side_by_side(trained, tmp_path,
                                                                    monkeypatch):
    import learners.run.runner as runner_module
    model, train, test, _ = trained
    timed = []

    def spy(models, input_shape, *args, **kwargs):
        timed.append(sorted(models))
        return real(models, input_shape, *args, **{**kwargs, "repeats": 2, "rounds": 2})

    real = runner_module.measure_latencies
    monkeypatch.setattr(runner_module, "measure_latencies", spy)
    result = pf.compress(model, DataLoader(train, batch_size=64), test, "chn-pruned-rmt",
                         out_dir=str(tmp_path), prune_ratio=0.5, nb_smpls=200,
                         export_format="none", **{**FAST, "report_latency": True})
    assert timed == [["compressed", "full"]]   # one interleaved measurement of both
    latency = result.report["latency_ms"]
    assert all(latency[side][f"bs{b}"] > 0 for side in ("full", "compressed") for b in (1, 64))


def test_a_chain_quantizes_the_pruned_model(trained, pruned, tmp_path):
    model, _, test, _ = trained
    result = pf.compress(model, DataLoader(trained[1], batch_size=64), test, "uniform",
                         start=pruned, out_dir=str(tmp_path), weight_bits=4,
                         export_format="none", **FAST)
    chain = result.report["chain"]
    assert [stage["learner"] for stage in chain] == ["full-prec", "chn-pruned-rmt", "uniform"]
    assert result.report["params"]["compressed"] == pruned.report["params"]["compressed"]
    weights = conv_weights(result.model)
    for name in ("body.0", "body.3"):   # quantized (first and last layers stay full precision)
        per_channel = [len(torch.unique(w)) for w in weights[name]]
        assert max(per_channel) <= 16, name
    assert set(result.report["quantization"]["bits"]) == {"body.0", "body.3"}  # not stem, head
    assert result.report["quantization"]["file"]["round_trip_exact"] is True


def test_bad_options_are_refused_with_the_valid_ones(trained, tmp_path):
    model, train, test, _ = trained
    with pytest.raises(ConfigError, match=r"prune_ration: did you mean prune_ratio or "):
        pf.compress(model, train, test, "chn-pruned-rmt", out_dir=str(tmp_path), prune_ration=0.5)
    with pytest.raises(ConfigError, match=r"unknown option\(s\) zzz for .*valid: .*prune_ratio"):
        pf.compress(model, train, test, "chn-pruned-rmt", out_dir=str(tmp_path), zzz=0.5)
    with pytest.raises(ConfigError, match=r"^--prune_ratio: must be in \[0, 1\)"):   # prefixed
        pf.compress(model, train, test, "chn-pruned-rmt", out_dir=str(tmp_path),
                    cpr_prune_ratio=1.5)
    with pytest.raises(ConfigError, match="both cpr_prune_ratio and prune_ratio are given"):
        pf.compress(model, train, test, "chn-pruned-rmt", out_dir=str(tmp_path),
                    cpr_prune_ratio=0.5, prune_ratio=0.5)
    with pytest.raises(ConfigError, match=r"^--prune_ratio: must be in \[0, 1\)"):
        pf.compress(model, train, test, "chn-pruned-rmt", out_dir=str(tmp_path), prune_ratio=1.5)
    with pytest.raises(ValueError, match="unknown learner 'prune'; valid learners: "):
        pf.compress(model, train, test, "prune", out_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="needs both datasets"):
        pf.compress(model, train, None, "chn-pruned-rmt", out_dir=str(tmp_path))
    assert "chn-pruned-rmt" in pf.list_learners()


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 3)

    def forward(self, x, y):
        return self.a(x) + self.b(y)


def test_a_model_or_data_with_several_inputs_is_refused_by_name(tmp_path):
    pairs = TensorDataset(torch.randn(8, 4), torch.randn(8, 4), torch.randint(3, (8,)))
    items = [((x, y), label) for x, y, label in pairs]
    with pytest.raises(ConfigError, match=r"TwoInputs.forward takes several inputs \(x, y\)"):
        pf.compress(TwoInputs(), items, items, "chn-pruned-rmt", out_dir=str(tmp_path))
    single = TensorDataset(torch.randn(8, 4), torch.randint(3, (8,)))
    with pytest.raises(ConfigError, match="TwoInputs.forward takes several inputs"):
        pf.compress(TwoInputs(), single, single, "full-prec", out_dir=str(tmp_path))
