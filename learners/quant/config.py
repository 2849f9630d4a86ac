"""Options of the quantization learners: one ``QuantConfig`` whose fields are flags
``--uql_*`` (uniform, ``UqlConfig``) and ``--nuql_*`` (non-uniform, ``NuqlConfig``: a codebook's
own options, other defaults). Both learners share one flow (``learners.quant.base``).
"""
from __future__ import annotations

from dataclasses import dataclass

from compression.artifacts import suffix
from compression.quantization.quantizers import BUCKET_TYPES, INIT_STYLES, OPT_MODES
from learners.search.config import DdpgConfig
from learners.config import OutputOptions
from utils.config import check, nested, option

MAX_BITS = 16
BUCKETS = [b for b in BUCKET_TYPES if b != "layer"]


@dataclass
class QuantConfig(OutputOptions):
    weight_bits: int = option(4, "bits per weight (without the RL agent)")
    activation_bits: int = option(32, "bits of the quantized layers' outputs (32: full precision)")
    use_buckets: bool = option(False, "one range/codebook per bucket (else one per layer, "
                                      "PocketFlow's default)")
    bucket_type: str = option("channel", "buckets are output channels or chunks of bucket_size "
                                         "weights", choices=BUCKETS)
    bucket_size: int = option(256, "weights per bucket (split)")
    quantize_all_layers: bool = option(False, "also quantize the first and last layers (kept "
                                              "full precision otherwise)")
    lrn_rate: float = option(1e-4, "Adam learning rate of the fine-tuning")
    enbl_rl_agent: bool = option(False, "DDPG search of per-layer bit widths")
    equivalent_bits: float = option(4.0, "RL budget, bits per weight on average (never exceeded)")
    nb_rlouts: int = option(200, "roll-outs of the bit-width search")
    nb_rlouts_min: int = option(50, "roll-outs that fill the replay buffer")
    w_bit_min: int = option(2, "smallest bit width the agent may choose")
    w_bit_max: int = option(8, "largest bit width the agent may choose")
    tune_layerwise_steps: int = option(100, "RL reward, regression steps per layer")
    tune_global_steps: int = option(2000, "RL reward, fine-tune steps")
    enbl_rl_layerwise_tune: bool = option(False, "RL reward after layer-wise tuning")
    enbl_rl_global_tune: bool = option(True, "RL reward after global fine-tuning")
    lrn_rate_rg: float = option(1e-3, "Adam rate of the layer-wise tuning")
    nb_iters_feval: int = option(25, "held-out batches of the RL reward")
    rl_min_gain: float = option(0.0, "held-out accuracy a searched strategy must gain over the "
                                     "uniform one to replace it (0: any gain; a lower loss alone "
                                     "keeps uniform)")
    ddpg: DdpgConfig = nested(DdpgConfig)

    def __post_init__(self) -> None:
        def bits_ok(value: int, name: str) -> None:
            check(1 <= value <= MAX_BITS, name, f"must be in [1, {MAX_BITS}], got {value}")

        bits_ok(self.weight_bits, "weight_bits")
        check(1 <= self.activation_bits <= MAX_BITS or self.activation_bits == 32,
              "activation_bits", f"must be in [1, {MAX_BITS}] or 32 (full precision), "
              f"got {self.activation_bits}")
        bits_ok(self.w_bit_min, "w_bit_min")
        bits_ok(self.w_bit_max, "w_bit_max")
        check(self.w_bit_min <= self.w_bit_max, "w_bit_min",
              f"must be <= --w_bit_max, got {self.w_bit_min} > {self.w_bit_max}")
        check(self.w_bit_min <= self.equivalent_bits <= self.w_bit_max, "equivalent_bits",
              f"must be in [--w_bit_min, --w_bit_max] = [{self.w_bit_min}, {self.w_bit_max}] "
              f"for a budget the layers can meet, got {self.equivalent_bits}")
        check(self.bucket_size > 0, "bucket_size", "must be positive")
        check(self.lrn_rate > 0, "lrn_rate", "must be positive")
        check(self.nb_rlouts > 0, "nb_rlouts", "must be positive")
        check(0 < self.nb_rlouts_min <= self.nb_rlouts, "nb_rlouts_min",
              f"must be in [1, --nb_rlouts={self.nb_rlouts}], got {self.nb_rlouts_min}")
        check(self.nb_iters_feval > 0, "nb_iters_feval", "must be positive")
        check(0 <= self.rl_min_gain < 1, "rl_min_gain", f"must be in [0, 1), got {self.rl_min_gain}")

    @property
    def buckets(self) -> str:
        """The bucket type in use: ``layer`` when buckets are off."""
        return self.bucket_type if self.use_buckets else "layer"


@dataclass
class UqlConfig(QuantConfig):
    """``uniform``: the shared options and their defaults (one range per layer, PocketFlow's;
    per-channel buckets measured no better at 4 bits: docs/migrating.md)."""


@dataclass
class NuqlConfig(QuantConfig):
    use_buckets: bool = option(False, "one codebook per bucket (else per layer)")
    bucket_type: str = option("split", "buckets are output channels or chunks of bucket_size "
                                       "weights", choices=BUCKETS)
    init_style: str = option("kmeans", "initial centres by k-means from the quantiles (least "
                                       "squares), at quantiles (PocketFlow's default) or "
                                       "uniformly spaced", choices=INIT_STYLES)
    opt_mode: str = option("weights", "train the weights (centres fixed, PocketFlow's "
                                      "default), the centres or both (PocketFlow's 'clusters' "
                                      "is read as 'cluster')",
                           choices=[*OPT_MODES, "clusters"])

    def __post_init__(self) -> None:
        if self.opt_mode == "clusters":          # PocketFlow's spelling (its test cases)
            self.opt_mode = "cluster"
        super().__post_init__()


@dataclass
class UqtfConfig(OutputOptions):
    save_path_eval: str = option("./models_{prefix}_eval/model.pte",
                                 "final int8 ExecuTorch program (report.json and the other "
                                 "exports beside it)")
    lrn_rate_dcy: float = option(1e-2, "uniform-tf: QAT learning rate = the helper's "
                                       "schedule x this (PocketFlow's default)")
    nb_calib_batches: int = option(10, "uniform-tf: training batches that initialise the "
                                       "quantization ranges before QAT")
    max_batch: int = option(256, "uniform-tf: largest batch the program runs at once "
                                 "(bigger batches are split)")
    weight_bits: int = option(8, "uniform-tf: bits of the weights (8: XNNPACK's int8 kernels)")
    activation_bits: int = option(8, "uniform-tf: bits of the activations (8)")
    quant_delay: int = option(0, "uniform-tf: QAT steps with fake quantization off (the "
                                 "observers still track ranges); then on")
    freeze_bn_delay: int = option(-1, "uniform-tf: QAT step after which BN runs on its "
                                      "running statistics (frozen); -1: never (PocketFlow: None)")

    def __post_init__(self) -> None:
        # the artifact IS the ExecuTorch program: another extension would be written as
        # <stem>.pte and then looked for under the given name, after the whole QAT run
        check(self.save_path_eval.endswith(suffix("pte")), "save_path_eval",
              f"the int8 ExecuTorch program is written here: give a path ending in {suffix('pte')}, got "
              f"{self.save_path_eval!r}")
        check(self.lrn_rate_dcy > 0, "lrn_rate_dcy", "must be positive")
        check(self.nb_calib_batches > 0, "nb_calib_batches", "must be positive")
        check(self.max_batch > 0, "max_batch", "must be positive")
        for name in ("weight_bits", "activation_bits"):
            check(getattr(self, name) == 8, name,
                  f"uniform-tf deploys int8 programs (ExecuTorch's XNNPACK kernels take 8-bit "
                  f"weights and activations), got {getattr(self, name)}; for other widths use "
                  f"--learner=uniform (--uql_weight_bits, --uql_activation_bits)")
        check(self.quant_delay >= 0, "quant_delay", "must be >= 0")
        check(self.freeze_bn_delay >= -1, "freeze_bn_delay", "must be >= 0, or -1 (never)")
