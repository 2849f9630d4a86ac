"""non-uniform: per-layer (or per-bucket) codebooks of 2^k trainable centres, STE to the
weights, centre gradients summed over members; optional DDPG bit widths; exported bit-packed."""
from __future__ import annotations

from torch import nn

from compression.quantization.codebook import CodebookQuantizer
from learners.quant.base import QuantLearnerBase
from learners.quant.config import NuqlConfig
from learners.registry import register_learner


@register_learner("non-uniform", config=NuqlConfig, prefix="nuql")
class NonUniformQuantLearner(QuantLearnerBase):

    def make_quantizer(self, name: str, bits: int) -> nn.Module:
        s = self.cfg
        return CodebookQuantizer(bits, s.init_style, s.buckets, s.bucket_size, s.opt_mode)
