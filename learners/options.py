"""Options learners share: where they write (``OutputOptions``) and, for channel learners,
what to skip and whether to reuse a selection (``ChannelOptions``).

A ``{prefix}`` in a default is the learner's flag prefix: ``--cpr_save_path`` defaults to
``./models_cpr/model.ckpt`` (``utils.config`` formats it when the flags are defined, the runner
when a config is built in Python).
"""
from __future__ import annotations

from dataclasses import dataclass

from utils.config import option, split_names


@dataclass
class OutputOptions:
    save_path: str = option("./models_{prefix}/model.ckpt", "training checkpoint (resumable state)")
    save_path_eval: str = option("./models_{prefix}_eval/model.ckpt",
                                 "final model (report.json and the files derived from it beside "
                                 "it)")


@dataclass
class ChannelOptions(OutputOptions):
    save_path_ws: str = option("./models_{prefix}_ws/model.ckpt",
                               "thinned model right after selection")
    skip_op_names: str = option("", "comma-separated substrings of layer names not to prune")
    warm_start: bool = option(False, "skip selection: start from save_path_ws", run_only=True)

    def __post_init__(self) -> None:
        """Subclasses validate their own options (calling this first)."""

    @property
    def skip_names(self) -> list[str]:
        return split_names(self.skip_op_names)
