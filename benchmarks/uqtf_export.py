"""uniform-tf's export time on a small user network (not one of the project's nets): a CNN
with a concatenation of two branches, given to the Python API (``learners.api.compress``) with
scikit-learn's digits, ``--export_format=both`` (int8 and fp32 ``.pte`` and ONNX, each checked
in its runtime). Issue 26's goal: the export at most 30 s.

Prints the run's ``wall_s`` and, as the LAST line, one JSON object:
{"wall_s": {"finetune", "export"}, "total_s", "export_le_30s", "files": {name: bytes}}

    python benchmarks/uqtf_export.py [--nb_epochs_rat=0.05]
"""
from __future__ import annotations

import json
import os
import tempfile
import time

import torch
from absl import app, flags
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

from learners.api import compress
from utils.malloc import tune_malloc

flags.DEFINE_float("nb_epochs_rat", 0.05, "--nb_epochs_rat of the QAT")
flags.DEFINE_integer("threads", 2, "torch intra-op threads")
FLAGS = flags.FLAGS


class BranchNet(nn.Module):
    """stem -> [3x3 branch | 1x1 branch] concatenated -> strided conv -> mean -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.wide = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.point = nn.Sequential(nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32),
                                  nn.ReLU())
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.down(torch.cat([self.wide(x), self.point(x)], 1))
        return self.fc(x.mean((2, 3)))


def main(argv: list) -> None:
    del argv
    tune_malloc()
    torch.set_num_threads(FLAGS.threads)
    torch.manual_seed(0)
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target)
    train, test = TensorDataset(images[:1400], labels[:1400]), TensorDataset(images[1400:], labels[1400:])
    with tempfile.TemporaryDirectory(prefix="bench_uqtf_") as out:
        start = time.perf_counter()
        result = compress(BranchNet(), train, test, learner="uniform-tf", out_dir=out,
                          nb_epochs_rat=FLAGS.nb_epochs_rat, export_format="both")
        total = time.perf_counter() - start
        files = {name: os.path.getsize(entry["path"])
                 for name, entry in (result.report.get("deploy") or {}).items()}
    wall = result.report["wall_s"]
    print(f"uniform-tf on BranchNet: wall_s {wall}, total {total:.1f} s, files {files}")
    print(json.dumps({"wall_s": wall, "total_s": round(total, 1),
                      "export_le_30s": wall.get("export", 1e9) <= 30.0, "files": files}))


if __name__ == "__main__":
    app.run(main)
