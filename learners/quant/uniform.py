"""uniform: k-bit uniform fake quantization of weights (per layer or bucket), STE fine-tuning,
optional DDPG search of per-layer bit widths; exported bit-packed."""
from __future__ import annotations

from torch import nn

from compression.quantization.quantizers import UniformWeightQuantizer
from learners.quant.base import QuantLearnerBase
from learners.quant.config import UqlConfig
from learners.registry import register_learner


@register_learner("uniform", config=UqlConfig, prefix="uql")
class UniformQuantLearner(QuantLearnerBase):

    def make_quantizer(self, name: str, bits: int) -> nn.Module:
        s = self.cfg
        return UniformWeightQuantizer(bits, s.buckets, s.bucket_size)
