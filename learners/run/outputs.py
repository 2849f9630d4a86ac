"""What a run writes beside its artifact: the artifact itself, files derived from it (sparse
and bit-packed copies, deployment files, each checked in its runtime) and the report. Which
files derive from an artifact is the table of ``compression.artifacts.files``.

The first output of a run marks the folder ``INCOMPLETE`` (``compression.artifacts.incomplete``,
removed once ``report.json`` is written) and removes the files a previous run derived from the
same artifact (``remove_stale``), so every file beside the new artifact comes from this run; a
run that fails before its first output leaves the previous result whole. Primary process only, except
``save_artifact`` (every process calls it; it ends with a barrier).
"""
from __future__ import annotations

import hashlib
import logging
import os
import time

import torch
from torch import nn

from compression.artifacts import (derived_suffixes, export_sparse_files, mark_incomplete, path_of,
                                   save_model)
from deployment.formats import formats_for
from deployment.pipeline import deploy, eval_batches, result_key
from utils.stopping import phase
from training.trainer import TrainingDivergedError, model_is_finite
from utils.multi_gpu_wrapper import MultiGpuWrapper

log = logging.getLogger("pocketflow")


class Outputs:
    """The files of one learner's result, rooted at its artifact path."""

    def __init__(self, artifact: str, mgw: MultiGpuWrapper, helper, export_format: str,
                 export_kinds: tuple, deploy_eval_batches: int, wall_s: dict) -> None:
        self.artifact = artifact
        self.mgw = mgw
        self.helper = helper
        self.export_format = export_format
        self.export_kinds = export_kinds
        self.deploy_eval_batches = deploy_eval_batches
        self.wall_s = wall_s
        self._begun = False
        self.formats()  # an export format that is not installed fails before training

    @property
    def report_path(self) -> str:
        return os.path.join(os.path.dirname(self.artifact) or ".", "report.json")

    def derived_paths(self) -> list[str]:
        stem = os.path.splitext(self.artifact)[0]
        return [stem + suffix for suffix in derived_suffixes()]

    def stem(self) -> str:
        """``<artifact without extension>``, the stem of every derived file; asking for it
        starts this run's outputs (``remove_stale``)."""
        self.remove_stale()
        return os.path.splitext(self.artifact)[0]

    def derived(self, name: str) -> str:
        """The path of the file ``name`` of ``compression.artifacts.files`` beside the artifact
        (``"quant"``: the bit-packed copy); asking for it starts this run's outputs."""
        return path_of(self.stem(), name)

    def remove_stale(self) -> None:
        """Remove the files a previous run derived from the artifact, and its report (once)."""
        if self._begun:
            return
        self._begun = True
        mark_incomplete(self.artifact)              # removed once report.json is written
        for path in [*self.derived_paths(), self.report_path]:
            if os.path.abspath(path) != os.path.abspath(self.artifact) and os.path.isfile(path):
                os.remove(path)
                log.info("removed %s, written by the previous run of this artifact", path)

    def save_artifact(self, model: nn.Module, spec: dict, meta: dict) -> int | None:
        """Write the model artifact (primary process); returns its size in bytes."""
        if not model_is_finite(model):
            raise TrainingDivergedError(f"the model holds NaN/inf values; not saving it over "
                                        f"{self.artifact}")
        size = None
        if self.mgw.is_primary():
            self.remove_stale()
            size = save_model(self.artifact, model, spec, meta)
        self.mgw.barrier()
        return size

    def files(self) -> dict:
        """``{path: {"bytes", "sha256"}}`` of the artifact and the derived files that exist."""
        files = {}
        for path in [self.artifact, *self.derived_paths()]:
            if os.path.isfile(path):
                digest = hashlib.sha256()
                with open(path, "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(block)
                files[path] = {"bytes": os.path.getsize(path), "sha256": digest.hexdigest()}
        return files

    # -- derived files -------------------------------------------------------------------
    def export_sparse(self, model: nn.Module, spec: dict, inputs: torch.Tensor,
                      meta: dict, base: nn.Module | None = None) -> dict:
        """COO and CSR files of a sparse result, each loaded back and compared on ``inputs``."""
        files = export_sparse_files(model, spec, self.stem(), inputs, meta, base)
        for layout, f in files.items():
            log.info("sparse %s file %s: %d bytes | round-trip max |diff| = %.1e", layout,
                     f["path"], f["bytes"], f["max_abs_diff"])
        return files

    def formats(self) -> list:
        """The formats of ``--export_format``; an explicit one must be installed."""
        return formats_for(self.export_format, self.export_kinds)

    def deploy(self, models: dict, formats: list | None = None, max_batch: int = 256) -> dict:
        """Export ``models`` (kind -> (model, path stem)) to the chosen formats, each checked in
        its runtime (``deployment.pipeline``): ``{"<format>_<kind>": figures}``. A file that does
        not reproduce its model is kept, recorded with ``parity_ok: false`` and logged."""
        formats = self.formats() if formats is None else formats
        if not formats:
            return {}
        self.remove_stale()
        start = time.perf_counter()
        example = torch.zeros(2, *self.helper.input_shape)
        batches = eval_batches(self.helper, self.deploy_eval_batches)
        with phase("export"):
            results = deploy(models, formats, batches, example, max_batch=max_batch)
        self.wall_s["export"] = self.wall_s.get("export", 0.0) + time.perf_counter() - start
        return results

    def deploy_sections(self, model: nn.Module, kind: str = "fp32") -> dict:
        """The float result exported beside the artifact; the report's ``deploy`` and ``onnx``
        sections (empty when no format is chosen)."""
        return deploy_sections(self.deploy({kind: (model, self.stem())}))


def deploy_sections(results: dict) -> dict:
    """``{"deploy": results, "onnx": the fp32 (or fakequant) ONNX figures}``."""
    if not results:
        return {}
    sections = {"deploy": results}
    onnx = results.get(result_key("onnx", "fp32")) or results.get(result_key("onnx", "fakequant"))
    if onnx is not None:
        sections["onnx"] = {key: onnx[key] for key in ("path", "max_abs_diff", "max_abs_output",
                                                       "parity_ok", "bytes")}
    return sections
