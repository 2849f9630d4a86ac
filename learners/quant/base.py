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

from compression.batchnorm import recalibrate_bn
from compression.layer_regression import layerwise_regression
from compression.masks import maskable_layers
from compression.quant_format import export_quantized
from compression.quant_spec import act_quant_entry
from compression.quantizers import (attach_activation_quantizers, attach_weight_quantizers,
                                    detach_weight_quantizers)
from learners import composition
from learners.abstract_learner import AbstractLearner
from learners.quant.bits_env import BitsEnv
from learners.weight_sparse.search_env import layer_features
from utils.lrn_rate import CosineLr

log = logging.getLogger("pocketflow")


class QuantLearnerBase(AbstractLearner):
    produces = frozenset({"quantized"})
    refuses = {"quantized": composition.REQUANTIZE}

    @abstractmethod
    def make_quantizer(self, name: str, bits: int) -> nn.Module:
        """The weight quantizer (a parametrization) of layer ``name`` at ``bits``."""

    @property
    def checkpoint_path(self) -> str:
        return self.own_cfg.save_path

    @property
    def artifact_path(self) -> str:
        return self.own_cfg.save_path_eval

    # -- which layers, how many bits -----------------------------------------------------------
    def layers(self, model: nn.Module) -> dict[str, nn.Module]:
        layers = maskable_layers(model)
        if not self.own_cfg.quantize_all_layers and len(layers) > 2:
            names = list(layers)  # first and last layers stay full precision (PocketFlow)
            layers = {n: layers[n] for n in names[1:-1]}
        return layers

    def quantize(self, model: nn.Module, bits: dict[str, int]) -> nn.Module:
        """Attach weight quantizers at ``bits`` (and activation quantizers) to ``model``."""
        attach_weight_quantizers(model, list(bits), lambda n: self.make_quantizer(n, bits[n]))
        if self.own_cfg.activation_bits < 32:
            attach_activation_quantizers(model, list(bits), self.own_cfg.activation_bits)
        return model

    def bit_widths(self, full: nn.Module, layers: dict, report: dict) -> dict[str, int]:
        if not self.own_cfg.enbl_rl_agent:
            return dict.fromkeys(layers, self.own_cfg.weight_bits)
        s = self.own_cfg
        best = self.search_on_primary(lambda: self._env(full, layers), s.nb_rlouts,
                                      s.nb_rlouts_min, report)
        return dict(zip(layers, best["bits"]))

    def _env(self, full: nn.Module, layers: dict) -> BitsEnv:
        """Reward: quantize -> (layer-wise regression) -> (short fine-tune) -> BN statistics
        re-estimated -> accuracy on held-out batches of the training set."""
        s = self.own_cfg
        names = list(layers)
        train, val = self.search_batches(min(s.tune_global_steps, 100), s.nb_iters_feval)

        def score(bits: list[int]) -> dict:
            model = self.quantize(copy.deepcopy(full), dict(zip(names, bits)))
            model(train[0][0])  # quantizers initialise (codebooks) before any optimizer exists
            if s.enbl_rl_layerwise_tune:
                layerwise_regression(full, model, names, train[0][0], s.lrn_rate_rg,
                                     s.tune_layerwise_steps)
            if s.enbl_rl_global_tune:
                self.short_finetune(model, train, s.lrn_rate, s.tune_global_steps)
            recalibrate_bn(model, train[:10])
            return self.run_evaluation(model, loader=val, local=True)

        sizes = [m.weight.numel() for m in layers.values()]
        return BitsEnv(layer_features(layers), sizes, s.equivalent_bits, s.w_bit_min,
                       s.w_bit_max, score, s.rl_min_gain)

    # -- the flow ----------------------------------------------------------------------------
    def train(self) -> dict:
        report, full, full_spec = self.begin()
        layers = self.layers(full)
        bits = self.bit_widths(full, layers, report)
        model = self.quantize(copy.deepcopy(full), bits)
        report["accuracy"]["compressed_before_finetune"] = self.run_evaluation(model)["accuracy"]
        spec = dict(full_spec)
        if self.own_cfg.activation_bits < 32:
            spec["transforms"] = [*full_spec.get("transforms", []),
                                  act_quant_entry(list(bits), self.own_cfg.activation_bits)]
        schedule = CosineLr(self.own_cfg.lrn_rate, self.helper.nb_iters_train(self.mgw.size()))
        optimizer = torch.optim.Adam(model.parameters(), lr=self.own_cfg.lrn_rate)
        teacher = self.distillation_teacher()
        self.fit(model, schedule, tag="finetune", spec=spec, teacher=teacher, optimizer=optimizer)
        report["accuracy"]["compressed"] = self.run_evaluation(model)["accuracy"]
        if self.mgw.is_primary():
            # the bit-packed file carries the activation ranges itself: the plain spec
            report["quantization"] = self._export(model, full_spec, bits)
        plain = detach_weight_quantizers(model)
        size = self.save_artifact(plain, spec, {"accuracy": report["accuracy"]["compressed"]})
        if self.mgw.is_primary():
            self.report_sides(report, plain, size)
            report["bytes_on_disk"]["compressed"] = report["quantization"]["file"]["bytes"]
            if self.own_cfg.activation_bits >= 32:
                self.deploy_model(plain, report)
            else:
                report["onnx"] = {"path": None, "max_abs_diff": None,
                                  "reason": "activation quantizers have no ONNX export yet"}
        return self.finish_report(report)

    def _export(self, model: nn.Module, spec: dict, bits: dict) -> dict:
        """Bit-packed file beside the artifact, loaded back and compared weight by weight."""
        packed = export_quantized(self.output_stem() + ".quant.pt", model,
                                  spec, {"learner": self.learner_name})
        log.info("quantized file %s: %d bytes | round trip exact: %s", packed["file"]["path"],
                 packed["file"]["bytes"], packed["file"]["round_trip_exact"])
        return {"bits": dict(bits), **packed, "activation_bits": self.own_cfg.activation_bits,
                "bucket_type": self.own_cfg.buckets}
