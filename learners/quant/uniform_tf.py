"""uniform-tf: 8-bit quantization-aware training ending in a REAL int8 model.

The counterpart of TensorFlow's QAT in PocketFlow, on PyTorch's current tooling: torchao's PT2E
flow (``prepare_qat_pt2e`` with ExecuTorch's XNNPACK quantizer: per-channel symmetric int8
weights, per-tensor int8 activations) -> fine-tuning through the shared loop -> ``convert_pt2e``
-> an ExecuTorch program lowered to XNNPACK (``model.pte``), which loads and runs with the
ExecuTorch runtime alone. XNNPACK is the runtime because int8 paid most there on an AVX2 CPU
without VNNI (~2.4x over fp32 on ResNet-20, against ~1.4x in onnxruntime and none through
torch.compile, as reported to us); on an AMD Zen 1 CPU, where int8 and fp32 multiply-adds have
the same throughput, we measured no gain (``benchmarks/int8_latency.py`` prints the CPU).
The report gives the int8 program's accuracy on the eval set, its agreement with the QAT model,
and int8 vs fp32 latency in the same runtime.
"""
from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass

import torch
from torch import nn

from compression.int8_qat import (PteModel, convert_int8, output_scale, prepare_qat,
                                  save_int8_program)
from compression.thinning import gathers_as_matrices
from deployment.formats import FORMATS
from learners import composition
from learners.abstract_learner import AbstractLearner
from learners.registry import register_learner
from utils.checkpoint import CheckpointError
from utils.config import check, option
from utils.lrn_rate import ScaledLr
from utils.model_stats import count_flops, count_params, time_forward

log = logging.getLogger("pocketflow")


@dataclass
class UqtfConfig:
    save_path: str = option("./models_uqtf/model.ckpt", "uniform-tf: training checkpoint")
    save_path_eval: str = option("./models_uqtf_eval/model.pte",
                                 "uniform-tf: the int8 ExecuTorch program (XNNPACK); the fp32 "
                                 "program and report.json go beside it")
    lrn_rate_dcy: float = option(1e-2, "uniform-tf: QAT learning rate = the helper's "
                                       "schedule x this (PocketFlow's default)")
    nb_calib_batches: int = option(10, "uniform-tf: training batches that initialise the "
                                       "quantization ranges before QAT")
    max_batch: int = option(256, "uniform-tf: largest batch the program runs at once "
                                 "(bigger batches are split)")

    def __post_init__(self) -> None:
        check(self.lrn_rate_dcy > 0, "lrn_rate_dcy", "must be positive")
        check(self.nb_calib_batches > 0, "nb_calib_batches", "must be positive")
        check(self.max_batch > 0, "max_batch", "must be positive")


class _Program(nn.Module):
    """An ExecuTorch program as a module, so the shared evaluation can run it."""

    def __init__(self, program: PteModel) -> None:
        super().__init__()
        self.program = program

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x).to(x.device)


@register_learner("uniform-tf", config=UqtfConfig, prefix="uqtf")
class UniformQuantTFLearner(AbstractLearner):
    export_kinds = ("fp32", "int8")
    produces = frozenset({"quantized"})
    refuses = {"quantized": composition.REQUANTIZE}

    @property
    def checkpoint_path(self) -> str:
        return self.own_cfg.save_path

    @property
    def artifact_path(self) -> str:
        return self.own_cfg.save_path_eval

    @property
    def fp32_path(self) -> str:
        return os.path.splitext(self.artifact_path)[0] + "_fp32.pte"

    def evaluate(self) -> dict:
        """``--exec_mode=eval``: run the saved int8 program over the eval set."""
        if not os.path.isfile(self.artifact_path):
            raise CheckpointError(f"no int8 program at {self.artifact_path}; train first")
        metrics = self.run_evaluation(_Program(PteModel(self.artifact_path)))
        log.info("eval %s: accuracy = %.4f", self.artifact_path, metrics["accuracy"])
        return metrics

    def train(self) -> dict:
        cfg = self.own_cfg
        report = self.new_report()
        full, _ = self.load_start()
        full.eval()
        report["accuracy"]["full"] = self.run_evaluation(self.original())["accuracy"]
        example = torch.zeros(2, *self.helper.input_shape, device=self.device)
        # thinned layers pick channels by one-hot matrices: one XNNPACK program, no gathers
        qat = prepare_qat(gathers_as_matrices(full, self.helper.input_shape), example)
        calib = self.cached_batches(self.helper.build_dataset_train(), cfg.nb_calib_batches)
        qat.calibrate(x for x, _ in calib)
        report["accuracy"]["compressed_before_finetune"] = self.run_evaluation(qat)["accuracy"]
        schedule = ScaledLr(self.helper.lr_schedule(self.mgw.size()), cfg.lrn_rate_dcy)
        teacher = self.distillation_teacher()
        self.fit(qat, schedule, tag="finetune", teacher=teacher)
        report["accuracy_qat"] = self.run_evaluation(qat)["accuracy"]
        if self.mgw.is_primary():
            report["int8"] = self._export(full, qat, example, report)
            program = _Program(PteModel(self.artifact_path))
            report["accuracy"]["compressed"] = self.run_evaluation(program, local=True)["accuracy"]
            self.model_report(self.original(), "full", report,
                              os.path.getsize(self.cfg.save_path_eval))
            report["flops"]["compressed"] = count_flops(full, self.helper.input_shape)
            report["params"]["compressed"] = count_params(full)  # int8 weights
            report["bytes_on_disk"]["compressed"] = report["int8"]["bytes"]
            if self.cfg.report_latency:
                report["latency_ms"]["compressed"] = report["int8"]["latency_ms"]["pte_int8"]
        self.mgw.barrier()
        return self.finish_report(report)

    def _export(self, full: nn.Module, qat, example: torch.Tensor, report: dict) -> dict:
        """The int8 program (the artifact), the int8 PyTorch model (``.pt2``) and their fp32
        counterparts, in ``.pte`` always and in the other chosen formats, each checked in its
        runtime; agreement of the int8 program with the converted model; int8 vs fp32
        latency in ExecuTorch."""
        int8 = convert_int8(qat)
        stem = self.output_stem()
        pt2_bytes = save_int8_program(int8, example.cpu(), stem + ".pt2")
        formats = self.export_formats()
        formats = [FORMATS["pte"], *[f for f in formats if f.name != "pte"]]
        models = {"int8": (int8, stem), "fp32": (copy.deepcopy(full).cpu(), stem + "_fp32")}
        results = self.deploy(report, models, formats, max_batch=self.own_cfg.max_batch)
        program, fp32 = PteModel(self.artifact_path), PteModel(self.fp32_path)
        inputs, _ = next(iter(self.eval_loader()))
        with torch.no_grad():
            reference = int8(inputs.cpu())
        step = output_scale(int8)
        within = float(((program(inputs) - reference).abs() <= step * 1.001).float().mean())
        size, fp32_size = results["pte_int8"]["bytes"], results["pte_fp32"]["bytes"]
        result = {"pte": self.artifact_path, "bytes": size, "fp32_pte": self.fp32_path,
                  "fp32_bytes": fp32_size, "pt2": stem + ".pt2", "pt2_bytes": pt2_bytes,
                  "output_step": step, "within_one_step_of_converted": within}
        if self.cfg.report_latency:
            shape = self.helper.input_shape
            latency = {"pte_int8": time_forward(program, shape), "pte_fp32": time_forward(fp32, shape)}
            latency["speedup"] = {k: latency["pte_fp32"][k] / latency["pte_int8"][k]
                                  for k in latency["pte_int8"]}
            result["latency_ms"] = latency
        log.info("int8 program %s: %d bytes (fp32 %d) | %.2f %% of outputs within one step (%.3g) "
                 "of the converted model", self.artifact_path, size, fp32_size, 100 * within, step)
        return result
