"""The flow the fake-quantization learners share (``uniform``, ``non-uniform``).

Pre-trained model -> per-layer bit widths (fixed, or searched by DDPG under an average-bits
budget) -> weight quantizers (parametrizations) and optional activation quantizers -> Adam
fine-tuning (optionally distilled) -> quantized values baked into the artifact + bit-packed
file (exact round trip checked) + ONNX + report with bits per layer and bytes.
A subclass only says how to build a layer's weight quantizer.
"""
from __future__ import annotations

import copy
import logging
from abc import abstractmethod

import torch
from torch import nn

from compression.sparsity.batchnorm import recalibrate_bn
from compression.sparsity.regression import layerwise_regression
from compression.sparsity.masks import maskable_layers
from compression.artifacts import export_quantized
from compression.quantization.spec import act_quant_entry
from compression.quantization.activations import attach_activation_quantizers
from compression.quantization.quantizers import (attach_weight_quantizers, detach_weight_quantizers,
                                                 keep_zeros)
from learners.run import composition
from learners.base import Learner, Result
from learners.quant.search_env import BitsEnv
from learners.search.preference_env import layer_features
from utils.lrn_rate import CosineLr

log = logging.getLogger("pocketflow")


class QuantLearnerBase(Learner):
    produces = frozenset({"quantized"})
    refuses = {"quantized": composition.REQUANTIZE}

    @abstractmethod
    def make_quantizer(self, name: str, bits: int) -> nn.Module:
        """The weight quantizer (a parametrization) of layer ``name`` at ``bits``."""

    # -- which layers, how many bits -----------------------------------------------------------
    def layers(self, model: nn.Module) -> dict[str, nn.Module]:
        layers = maskable_layers(model)
        if not self.cfg.quantize_all_layers and len(layers) > 2:
            names = list(layers)  # first and last layers stay full precision (PocketFlow)
            layers = {n: layers[n] for n in names[1:-1]}
        return layers

    def quantize(self, model: nn.Module, bits: dict[str, int]) -> nn.Module:
        """Attach weight quantizers at ``bits`` (and activation quantizers) to ``model``; a
        layer with pruned (exactly zero) weights keeps them at zero (``keep_zeros``)."""
        pruned = {name: model.get_submodule(name).weight for name in bits
                  if bool((model.get_submodule(name).weight == 0).any())}

        def make(name: str) -> nn.Module:
            quantizer = self.make_quantizer(name, bits[name])
            return keep_zeros(quantizer, pruned[name]) if name in pruned else quantizer

        attach_weight_quantizers(model, list(bits), make)
        if self.cfg.activation_bits < 32:
            attach_activation_quantizers(model, list(bits), self.cfg.activation_bits)
        return model

    def bit_widths(self, full: nn.Module, layers: dict, sections: dict) -> dict[str, int]:
        if not self.cfg.enbl_rl_agent:
            return dict.fromkeys(layers, self.cfg.weight_bits)
        s = self.cfg
        best, sections["search"] = self.ctx.search(lambda: self._env(full, layers), s.ddpg,
                                                   s.nb_rlouts, s.nb_rlouts_min)
        return dict(zip(layers, best["bits"]))

    def _env(self, full: nn.Module, layers: dict) -> BitsEnv:
        """Reward: quantize -> (layer-wise regression) -> (short fine-tune) -> BN statistics
        re-estimated -> accuracy on held-out batches of the training set."""
        s = self.cfg
        names = list(layers)
        train, val = self.ctx.search_batches(min(s.tune_global_steps, 100), s.nb_iters_feval)

        def score(bits: list[int]) -> dict:
            model = self.quantize(copy.deepcopy(full), dict(zip(names, bits)))
            model(train[0][0])  # quantizers initialise (codebooks) before any optimizer exists
            if s.enbl_rl_layerwise_tune:
                layerwise_regression(full, model, names, train[0][0], s.lrn_rate_rg,
                                     s.tune_layerwise_steps)
            if s.enbl_rl_global_tune:
                self.ctx.short_finetune(model, train, s.lrn_rate, s.tune_global_steps)
            recalibrate_bn(model, train[:10])
            return self.ctx.evaluate(model, loader=val, local=True)

        sizes = [m.weight.numel() for m in layers.values()]
        return BitsEnv(layer_features(layers), sizes, s.equivalent_bits, s.w_bit_min,
                       s.w_bit_max, score, s.rl_min_gain)

    # -- the flow ----------------------------------------------------------------------------
    def compress(self, full: nn.Module, full_spec: dict) -> Result:
        cfg, ctx, sections = self.cfg, self.ctx, {}
        layers = self.layers(full)
        bits = self.bit_widths(full, layers, sections)
        model = self.quantize(copy.deepcopy(full), bits)
        before = ctx.accuracy(model)
        spec = dict(full_spec)
        if cfg.activation_bits < 32:
            spec["transforms"] = [*full_spec.get("transforms", []),
                                  act_quant_entry(list(bits), cfg.activation_bits)]
        schedule = CosineLr(cfg.lrn_rate, ctx.helper.nb_iters_train(ctx.mgw.size()))
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lrn_rate)
        ctx.fit(model, schedule, tag="finetune", spec=spec, teacher=ctx.teacher(),
                optimizer=optimizer)
        accuracy = ctx.accuracy(model)
        if ctx.mgw.is_primary():
            # the bit-packed file carries the activation ranges itself: the plain spec
            sections["quantization"] = self._export(model, full_spec, bits)
        plain = detach_weight_quantizers(model)
        full_precision_outputs = cfg.activation_bits >= 32
        return Result(plain, spec, before_finetune=before, accuracy=accuracy, sections=sections,
                      deploy_kind="fp32" if full_precision_outputs else None,
                      deploy_reason="" if full_precision_outputs else
                      "activation quantizers have no ONNX export yet")

    def finish(self, result: Result, report) -> None:
        """The bit-packed file is the result's size on disk."""
        if "quantization" in result.sections:
            report.bytes_on_disk.compressed = result.sections["quantization"]["file"]["bytes"]

    def _export(self, model: nn.Module, spec: dict, bits: dict) -> dict:
        """Bit-packed file beside the artifact, loaded back and compared weight by weight."""
        packed = export_quantized(self.ctx.outputs.derived("quant"), model,
                                  spec, {"learner": self.learner_name}, self.ctx.base)
        log.info("quantized file %s: %d bytes | round trip exact: %s", packed["file"]["path"],
                 packed["file"]["bytes"], packed["file"]["round_trip_exact"])
        return {"bits": dict(bits), **packed, "activation_bits": self.cfg.activation_bits,
                "bucket_type": self.cfg.buckets, "sparsity": _sparsity(model, bits)}


@torch.no_grad()
def _sparsity(model: nn.Module, bits: dict) -> dict:
    """Zero fraction of each quantized weight and of all of them (a sparse start keeps its
    zeros through quantization)."""
    layers = {name: model.get_submodule(name).weight for name in bits}
    zeros = {name: int((w == 0).sum()) for name, w in layers.items()}
    total = sum(w.numel() for w in layers.values())
    return {"layers": {name: zeros[name] / layers[name].numel() for name in layers},
            "total": sum(zeros.values()) / total if total else 0.0}
