"""Options every channel learner has (unprefixed: ``chn-pruned-rmt`` defines them as
``--cpr_*`` flags, ``channel`` as ``--cp_*`` ...). Each learner's config subclasses
``ChannelOptions`` and redefines the fields whose defaults are its own (the paths)."""
from __future__ import annotations

from dataclasses import dataclass

from utils.config import option, split_names


@dataclass
class ChannelOptions:
    save_path: str = option("./models_ch/model.ckpt", "training checkpoint")
    save_path_eval: str = option("./models_ch_eval/model.ckpt",
                                 "final thinned model (report.json beside it)")
    save_path_ws: str = option("./models_ch_ws/model.ckpt", "thinned model right after selection")
    skip_op_names: str = option("", "comma-separated substrings of layer names not to prune")
    warm_start: bool = option(False, "skip selection: start from save_path_ws", run_only=True)

    def __post_init__(self) -> None:
        """Subclasses validate their own options (calling this first)."""

    @property
    def skip_names(self) -> list[str]:
        return split_names(self.skip_op_names)
