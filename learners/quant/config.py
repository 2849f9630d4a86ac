"""Options of the quantization learners: ``uql_*`` (uniform) and ``nuql_*`` (non-uniform).

The two learners share one flow (``learners.quant.base``); each config turns its prefixed flags
into the same ``QuantSettings``.
"""
from __future__ import annotations

from dataclasses import dataclass

from compression.quantizers import BUCKET_TYPES, INIT_STYLES, OPT_MODES
from learners.rl.config import DdpgConfig
from utils.config import check, option

MAX_BITS = 16


@dataclass
class QuantSettings:
    save_path: str
    save_path_eval: str
    weight_bits: int
    activation_bits: int
    bucket_type: str           # "layer" when buckets are off
    bucket_size: int
    quantize_all_layers: bool
    lrn_rate: float
    enbl_rl_agent: bool
    equivalent_bits: float
    nb_rlouts: int
    nb_rlouts_min: int
    w_bit_min: int
    w_bit_max: int
    tune_layerwise_steps: int
    tune_global_steps: int
    enbl_rl_layerwise_tune: bool
    enbl_rl_global_tune: bool
    lrn_rate_rg: float
    nb_iters_feval: int
    rl_min_gain: float

    def check(self, prefix: str) -> None:
        def bits_ok(value: int, name: str) -> None:
            check(1 <= value <= MAX_BITS, f"{prefix}_{name}",
                  f"must be in [1, {MAX_BITS}], got {value}")

        bits_ok(self.weight_bits, "weight_bits")
        check(1 <= self.activation_bits <= MAX_BITS or self.activation_bits == 32,
              f"{prefix}_activation_bits", f"must be in [1, {MAX_BITS}] or 32 (full precision), "
              f"got {self.activation_bits}")
        bits_ok(self.w_bit_min, "w_bit_min")
        bits_ok(self.w_bit_max, "w_bit_max")
        check(self.w_bit_min <= self.w_bit_max, f"{prefix}_w_bit_min",
              f"must be <= {prefix}_w_bit_max, got {self.w_bit_min} > {self.w_bit_max}")
        check(self.w_bit_min <= self.equivalent_bits <= self.w_bit_max, f"{prefix}_equivalent_bits",
              f"must be in [{prefix}_w_bit_min, {prefix}_w_bit_max] = [{self.w_bit_min}, "
              f"{self.w_bit_max}] for a budget the layers can meet, got {self.equivalent_bits}")
        check(self.bucket_size > 0, f"{prefix}_bucket_size", "must be positive")
        check(self.lrn_rate > 0, f"{prefix}_lrn_rate", "must be positive")
        check(self.nb_rlouts > 0, f"{prefix}_nb_rlouts", "must be positive")
        check(0 < self.nb_rlouts_min <= self.nb_rlouts, f"{prefix}_nb_rlouts_min",
              f"must be in [1, {prefix}_nb_rlouts={self.nb_rlouts}], got {self.nb_rlouts_min}")
        check(self.nb_iters_feval > 0, f"{prefix}_nb_iters_feval", "must be positive")
        check(0 <= self.rl_min_gain < 1, f"{prefix}_rl_min_gain",
              f"must be in [0, 1), got {self.rl_min_gain}")


def _settings(cfg, prefix: str) -> QuantSettings:
    get = lambda name: getattr(cfg, f"{prefix}_{name}")  # noqa: E731
    return QuantSettings(
        get("save_path"), get("save_path_eval"), get("weight_bits"), get("activation_bits"),
        get("bucket_type") if get("use_buckets") else "layer", get("bucket_size"),
        get("quantize_all_layers"), get("lrn_rate"), get("enbl_rl_agent"), get("equivalent_bits"),
        get("nb_rlouts"), get("nb_rlouts_min"), get("w_bit_min"), get("w_bit_max"),
        get("tune_layerwise_steps"), get("tune_global_steps"), get("enbl_rl_layerwise_tune"),
        get("enbl_rl_global_tune"), get("lrn_rate_rg"), get("nb_iters_feval"), get("rl_min_gain"))


@dataclass
class UqlConfig(DdpgConfig):
    uql_save_path: str = option("./models_uql/model.ckpt", "uniform: training checkpoint")
    uql_save_path_eval: str = option("./models_uql_eval/model.ckpt",
                                     "uniform: final model (quantized values; the bit-packed "
                                     "file and report.json go beside it)")
    uql_weight_bits: int = option(4, "uniform: bits per weight (without the RL agent)")
    uql_activation_bits: int = option(32, "uniform: bits of the quantized layers' outputs "
                                          "(32: full precision)")
    uql_use_buckets: bool = option(True, "uniform: one range per bucket (else one per layer)")
    uql_bucket_type: str = option("channel", "uniform: buckets are output channels or chunks "
                                             "of uql_bucket_size weights",
                                  choices=[b for b in BUCKET_TYPES if b != "layer"])
    uql_bucket_size: int = option(256, "uniform: weights per bucket (split)")
    uql_quantize_all_layers: bool = option(False, "uniform: also quantize the first and last "
                                                  "layers (kept full precision otherwise)")
    uql_lrn_rate: float = option(1e-4, "uniform: Adam learning rate of the fine-tuning")
    uql_enbl_rl_agent: bool = option(False, "uniform: DDPG search of per-layer bit widths")
    uql_equivalent_bits: float = option(4.0, "uniform: RL budget, bits per weight on average "
                                             "(never exceeded)")
    uql_nb_rlouts: int = option(200, "uniform: roll-outs of the bit-width search")
    uql_nb_rlouts_min: int = option(50, "uniform: roll-outs that fill the replay buffer")
    uql_w_bit_min: int = option(2, "uniform: smallest bit width the agent may choose")
    uql_w_bit_max: int = option(8, "uniform: largest bit width the agent may choose")
    uql_tune_layerwise_steps: int = option(100, "uniform: RL reward, regression steps per layer")
    uql_tune_global_steps: int = option(2000, "uniform: RL reward, fine-tune steps")
    uql_enbl_rl_layerwise_tune: bool = option(False, "uniform: RL reward after layer-wise tuning")
    uql_enbl_rl_global_tune: bool = option(True, "uniform: RL reward after global fine-tuning")
    uql_lrn_rate_rg: float = option(1e-3, "uniform: Adam rate of the layer-wise tuning")
    uql_nb_iters_feval: int = option(25, "uniform: held-out batches of the RL reward")
    uql_rl_min_gain: float = option(0.0, "uniform: held-out accuracy a searched strategy must "
                                         "gain over the uniform one to replace it (0: any "
                                         "gain; a lower loss alone keeps uniform)")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.settings.check("uql")

    @property
    def settings(self) -> QuantSettings:
        return _settings(self, "uql")


@dataclass
class NuqlConfig(DdpgConfig):
    nuql_save_path: str = option("./models_nuql/model.ckpt", "non-uniform: training checkpoint")
    nuql_save_path_eval: str = option("./models_nuql_eval/model.ckpt",
                                      "non-uniform: final model (codebook values; the bit-packed "
                                      "file and report.json go beside it)")
    nuql_weight_bits: int = option(4, "non-uniform: bits per weight (2^bits centres per bucket)")
    nuql_activation_bits: int = option(32, "non-uniform: bits of the quantized layers' outputs")
    nuql_use_buckets: bool = option(False, "non-uniform: one codebook per bucket (else per layer)")
    nuql_bucket_type: str = option("split", "non-uniform: buckets are output channels or chunks",
                                   choices=[b for b in BUCKET_TYPES if b != "layer"])
    nuql_bucket_size: int = option(256, "non-uniform: weights per bucket (split)")
    nuql_init_style: str = option("kmeans", "non-uniform: initial centres by k-means from the "
                                            "quantiles (least squares), at quantiles "
                                            "(PocketFlow's default) or uniformly spaced",
                                  choices=INIT_STYLES)
    nuql_opt_mode: str = option("both", "non-uniform: train the weights, the centres or both",
                                choices=OPT_MODES)
    nuql_quantize_all_layers: bool = option(False, "non-uniform: also quantize first/last layers")
    nuql_lrn_rate: float = option(1e-4, "non-uniform: Adam learning rate of the fine-tuning")
    nuql_enbl_rl_agent: bool = option(False, "non-uniform: DDPG search of per-layer bit widths")
    nuql_equivalent_bits: float = option(4.0, "non-uniform: RL budget, bits per weight")
    nuql_nb_rlouts: int = option(200, "non-uniform: roll-outs of the bit-width search")
    nuql_nb_rlouts_min: int = option(50, "non-uniform: roll-outs that fill the replay buffer")
    nuql_w_bit_min: int = option(2, "non-uniform: smallest bit width of the agent")
    nuql_w_bit_max: int = option(8, "non-uniform: largest bit width of the agent")
    nuql_tune_layerwise_steps: int = option(100, "non-uniform: RL reward, regression steps")
    nuql_tune_global_steps: int = option(2000, "non-uniform: RL reward, fine-tune steps")
    nuql_enbl_rl_layerwise_tune: bool = option(False, "non-uniform: reward after layer-wise tuning")
    nuql_enbl_rl_global_tune: bool = option(True, "non-uniform: reward after global fine-tuning")
    nuql_lrn_rate_rg: float = option(1e-3, "non-uniform: Adam rate of the layer-wise tuning")
    nuql_nb_iters_feval: int = option(25, "non-uniform: held-out batches of the RL reward")
    nuql_rl_min_gain: float = option(0.0, "non-uniform: held-out accuracy a searched strategy "
                                          "must gain over the uniform one to replace it")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.settings.check("nuql")

    @property
    def settings(self) -> QuantSettings:
        return _settings(self, "nuql")
