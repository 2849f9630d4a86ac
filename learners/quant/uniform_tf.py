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
import re
import tempfile

import torch
from torch import nn

from compression.artifacts import FLOAT_TWIN, path_of
from compression.quantization.int8_qat import convert_int8, output_scale, prepare_qat
from compression.sparsity.masks import KeepZeros
from compression.surgery.thinning import gathers_as_matrices
from deployment.formats import FORMATS
from deployment.pipeline import result_key
from deployment.pte import PteModel, export_pte, save_int8_program
from learners.run import composition
from learners.base import Learner, Result
from learners.run.outputs import deploy_sections
from learners.registry import register_learner
from utils.config import ConfigError
from utils.lrn_rate import ScaledLr
from utils.model_stats import time_forward
from learners.quant.config import UqtfConfig
from training.trainer import Callback

log = logging.getLogger("pocketflow")


class _Program(nn.Module):
    """An ExecuTorch program as a module, so the shared evaluation can run it."""

    def __init__(self, program: PteModel) -> None:
        super().__init__()
        self.program = program

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x).to(x.device)


class QatDelays(Callback):
    """TensorFlow QAT's ``quant_delay`` (fake quantization off for the first steps) and
    ``freeze_bn_delay`` (BN on running statistics from that step on), also on a resumed run."""

    def __init__(self, qat, quant_delay: int, freeze_bn_delay: int) -> None:
        self.qat, self.quant_delay, self.freeze_bn_delay = qat, quant_delay, freeze_bn_delay

    def on_train_begin(self, trainer) -> None:
        self.qat.fake_quant(trainer.step >= self.quant_delay)

    def on_minibatch_begin(self, trainer, state) -> None:
        if state.step == self.quant_delay:
            self.qat.fake_quant(True)
        if 0 <= self.freeze_bn_delay <= state.step and not self.qat.bn_frozen:
            log.info("uniform-tf: BN statistics frozen from step %d", state.step)
            self.qat.freeze_bn()

    def on_train_end(self, trainer) -> None:
        self.qat.fake_quant(True)        # what is converted to int8 is the quantized model


@register_learner("uniform-tf", config=UqtfConfig, prefix="uqtf")
class UniformQuantTFLearner(Learner):
    export_kinds = ("fp32", "int8")
    produces = frozenset({"quantized"})
    refuses = {"quantized": composition.REQUANTIZE}

    @property
    def artifact(self) -> str:
        return self.ctx.outputs.artifact

    @property
    def fp32_path(self) -> str:
        return path_of(os.path.splitext(self.artifact)[0] + FLOAT_TWIN, "pte")

    def load_result(self, path: str) -> nn.Module:
        """The saved int8 program, run by ExecuTorch (``--exec_mode=eval``)."""
        return _Program(PteModel(path))

    def compress(self, full: nn.Module, spec: dict) -> Result:
        cfg, ctx = self.cfg, self.ctx
        full.eval()
        example = torch.zeros(2, *ctx.helper.input_shape, device=ctx.device)
        # thinned layers pick channels by one-hot matrices: one XNNPACK program, no gathers
        qat = prepare_qat(gathers_as_matrices(full, ctx.helper.input_shape), example)
        calib = ctx.cached_batches(ctx.helper.build_dataset_train(), cfg.nb_calib_batches)
        qat.calibrate(x for x, _ in calib)
        problem = ctx.on_primary(lambda: self._lowering_problem(full, qat, example))
        if problem:                      # found before any training, on every process
            raise ConfigError(f"uniform-tf: {problem}")
        before = ctx.accuracy(qat)
        schedule = ScaledLr(ctx.helper.lr_schedule(ctx.mgw.size()), cfg.lrn_rate_dcy)
        zeros = KeepZeros(qat)              # a sparse start keeps its zeros (int8 0 is exact)
        delays = QatDelays(qat, cfg.quant_delay, cfg.freeze_bn_delay)
        ctx.fit(qat, schedule, tag="finetune", teacher=ctx.teacher(),
                callbacks=[delays, zeros] if zeros.masks else [delays])
        sections = {"accuracy_qat": ctx.accuracy(qat)}
        if zeros.masks:
            sections["sparsity"] = {"kept_zeros": zeros.sparsity}
        # the artifact is the int8 program: written here, not by the runner (spec None); the
        # figures count the float model it was converted from
        result = Result(full, None, before_finetune=before, sections=sections, deploy_kind=None)
        if ctx.mgw.is_primary():
            int8, deployed = self._export(full, qat, example)
            sections.update({**deployed, "int8": int8})
            result.accuracy = ctx.evaluate(_Program(PteModel(self.artifact)), local=True)["accuracy"]
        return result

    def _lowering_problem(self, full: nn.Module, qat, example: torch.Tensor) -> str | None:
        """Why this net's int8 (and float) program cannot be lowered to ExecuTorch, found on
        the calibrated model before the QAT training (None: it can)."""
        with tempfile.TemporaryDirectory(prefix="pf-preflight-") as scratch:
            for kind, model in (("int8", convert_int8(copy.deepcopy(qat))),
                                ("fp32", copy.deepcopy(full).cpu())):
                try:
                    export_pte(model, example.cpu(), os.path.join(scratch, f"{kind}.pte"),
                               quantized=kind == "int8", max_batch=self.cfg.max_batch)
                except Exception as exc:     # the lowering's own errors, of many kinds
                    return (f"the {kind} program of this net cannot be lowered to ExecuTorch "
                            f"({_lowering_cause(exc)}); nothing was trained. Use a learner "
                            "whose result exports as float (uniform, non-uniform), or replace "
                            "the op")
        return None

    def finish(self, result: Result, report) -> None:
        """The program's size on disk and its latency in ExecuTorch."""
        int8 = result.sections["int8"]
        report.bytes_on_disk.compressed = int8["bytes"]
        report.latency_ms.compressed = int8.get("latency_ms", {}).get(result_key("pte", "int8"))

    def _export(self, full: nn.Module, qat, example: torch.Tensor) -> tuple[dict, dict]:
        """The int8 program (the artifact), the int8 PyTorch model (row ``pt2``) and their fp32
        counterparts, in ``.pte`` always and in the other chosen formats, each checked in its
        runtime; agreement of the int8 program with the converted model; int8 vs fp32
        latency in ExecuTorch. Returns the ``int8`` section and the deployment sections."""
        ctx = self.ctx
        int8 = convert_int8(qat)
        stem = ctx.outputs.stem()
        pt2 = path_of(stem, "pt2")
        pt2_bytes = save_int8_program(int8, example.cpu(), pt2)
        formats = [FORMATS["pte"], *[f for f in ctx.outputs.formats() if f.name != "pte"]]
        models = {"int8": (int8, stem), "fp32": (copy.deepcopy(full).cpu(), stem + FLOAT_TWIN)}
        results = ctx.outputs.deploy(models, formats, max_batch=self.cfg.max_batch)
        program, fp32 = PteModel(self.artifact), PteModel(self.fp32_path)
        inputs, _ = next(iter(ctx.eval_loader()))
        with torch.no_grad():
            reference = int8(inputs.cpu())
        step = output_scale(int8)
        within = float(((program(inputs) - reference).abs() <= step * 1.001).float().mean())
        int8_key, float_key = result_key("pte", "int8"), result_key("pte", "fp32")
        size, fp32_size = results[int8_key]["bytes"], results[float_key]["bytes"]
        section = {"pte": self.artifact, "bytes": size, "fp32_pte": self.fp32_path,
                   "fp32_bytes": fp32_size, "pt2": pt2, "pt2_bytes": pt2_bytes,
                   "output_step": step, "within_one_step_of_converted": within}
        if ctx.cfg.report_latency:
            shape = ctx.helper.input_shape
            latency = {int8_key: time_forward(program, shape), float_key: time_forward(fp32, shape)}
            latency["speedup"] = {k: latency[float_key][k] / latency[int8_key][k]
                                  for k in latency[int8_key]}
            section["latency_ms"] = latency
        log.info("int8 program %s: %d bytes (fp32 %d) | %.2f %% of outputs within one step (%.3g) "
                 "of the converted model", self.artifact, size, fp32_size, 100 * within, step)
        return section, deploy_sections(results)


def _lowering_cause(exc: Exception) -> str:
    """The op a lowering error names (``aten.adaptive_max_pool2d``, an op without an out
    variant...), else its first line."""
    text = str(exc)
    found = re.search(r"Operator torch\._ops\.(\S+?)(?:\.default)? is not in Core ATen", text)
    if found:
        return f"{found.group(1)} is not in the core ATen op set ExecuTorch runs"
    found = re.search(r"Missing out variants: \{([^}]*)\}", text)
    if found:
        return f"no ExecuTorch kernel for {found.group(1)}"
    return f"{type(exc).__name__}: {text.strip().splitlines()[0][:300] if text.strip() else ''}"
