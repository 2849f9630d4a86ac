"""Export a result to every chosen format and check each file in its runtime.

``deploy({"fp32": (model, stem), "int8": (int8_model, stem)}, formats, batches, example)``
writes ``<stem><suffix>`` for every format and kind, runs it on ``batches`` of real inputs in
its runtime and returns ``{"<format>_<kind>": figures}`` (path, bytes, runtime, max |diff|,
accuracy of the file and of the PyTorch model, top-1 agreement, export seconds, ``parity_ok``).
A file that does not reproduce its model within ``deployment.verify``'s criteria is kept, marked
``parity_ok: false`` with the reason, and logged as an error (``strict``: raised instead).
"""
from __future__ import annotations

import logging
import os
import time
from typing import Sequence

import torch
from torch import nn

from deployment.formats import DeployFormat
from deployment.verify import verify_artifact
from utils.data_loading import make_eval_loader

log = logging.getLogger("pocketflow")


def eval_batches(helper, limit: int = 0) -> list:
    """The helper's eval set as ``(inputs, labels)`` batches on the CPU (``limit`` > 0: the
    first ``limit`` batches): the real inputs every file is checked on."""
    batches = []
    for inputs, labels in make_eval_loader(helper.build_dataset_eval(), helper.cfg.batch_size_eval):
        batches.append((inputs, labels))
        if limit and len(batches) >= limit:
            break
    return batches


def result_key(fmt: str, kind: str) -> str:
    """The key of one file's figures in ``deploy``'s results: ``"<format>_<kind>"``."""
    return f"{fmt}_{kind}"


def deploy(models: dict[str, tuple[nn.Module, str]], formats: Sequence[DeployFormat],
           batches: list, example: torch.Tensor, nb_threads: int | None = None,
           max_batch: int = 256, strict: bool = False) -> dict:
    results = {}
    for fmt in formats:
        for kind, (model, stem) in models.items():
            path = stem + fmt.suffix
            start = time.perf_counter()
            size = fmt.export(model, example.detach().cpu(), path, kind, max_batch)
            seconds = time.perf_counter() - start
            figures = verify_artifact(path, model, batches, kind, nb_threads=nb_threads,
                                      strict=strict)
            if not figures["parity_ok"]:
                log.error("%s", figures["mismatch"])
            results[result_key(fmt.name, kind)] = {**figures, "bytes": os.path.getsize(path),
                                             "export_s": round(seconds, 2)}
            log.info("%s %s %s: %d bytes | max |%s - torch| = %.2e | accuracy %.4f (torch %.4f)",
                     fmt.name, kind, path, size, figures["runtime"], figures["max_abs_diff"],
                     figures["accuracy"], figures["accuracy_torch"])
    return results
