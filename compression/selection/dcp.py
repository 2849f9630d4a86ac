"""The pieces of discrimination-aware channel pruning (Zhuang et al., NeurIPS 2018).

- ``DcpObjective`` wraps the network being pruned, the frozen full network and the auxiliary
  heads, and computes, for the current block ``b`` and (optionally) layer: the final loss, the
  discrimination loss L_p of head ``b`` (the final loss itself in the last block), and the
  reconstruction loss L_rec = mean squared difference between the layer's output in the
  pruned and in the full network. Block fine-tuning minimises L_final + L_p, a layer's channel
  selection and fine-tuning minimise L_rec + L_p. It is a module, so both fine-tunings run in
  the project's one training loop (``training.trainer.Trainer``).
- ``greedy_channels`` is the selection of the paper's Algorithm 2 (and of PocketFlow's code):
  starting from NO input channel, repeatedly ADD the channel whose weights have the largest sum
  of squared gradients of L_rec + L_p, until the layer keeps its count. (PocketFlow's docs say
  "remove the channel with the smallest gradient norm"; at the unpruned network the
  reconstruction loss is zero and so is its gradient, which makes removal uninformative.)
- ``ZeroPrunedInputs`` holds the pruned input channels of every selected layer at zero after
  each optimizer step (a callback of the loop).
- ``layer_blocks`` maps each layer to the block (0 .. number of heads) that executes it.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from compression.graph.layers import PrunableLayer
from compression.selection.sampling import capture
from compression.selection.dcp_heads import StageTaps
from training.trainer import Callback
from utils.model_stats import probe_forward

TARGET_CACHE = 256   # batches whose full-net layer outputs are kept (the cached batches cycle)
LossFn = Callable[[torch.Tensor, torch.Tensor], "tuple[torch.Tensor, dict]"]


class DcpObjective(nn.Module):
    def __init__(self, pruned: nn.Module, full: nn.Module, heads: nn.ModuleList,
                 points: Sequence[str], calc_loss: LossFn) -> None:
        super().__init__()
        self.pruned, self.heads = pruned, heads
        self._full = [full]            # frozen reference: not a submodule, never trained
        self.points, self.calc_loss = list(points), calc_loss
        self.block, self.layer, self.bn_train = 0, None, False
        self._taps: StageTaps | None = None
        self._stop = None
        # the frozen full net's output of the current layer, per input batch (the selection and
        # the layer's fine-tuning cycle through the same cached batches)
        self._targets: dict[int, tuple] = {}

    def set_stage(self, block: int, layer: str | None, bn_train: bool) -> "DcpObjective":
        """What the next passes compute: block ``block``'s head, ``layer``'s reconstruction
        (None: block fine-tuning), and whether the network's BN layers train."""
        self.close()
        self._targets = {}
        self.block, self.layer, self.bn_train = block, layer, bn_train
        names = ([self.points[block]] if block < len(self.points) else []) + ([layer] if layer else [])
        self._taps = StageTaps(self.pruned, names)
        if layer is not None and block < len(self.points):
            # a layer's loss reads the block's head and the layer, never the logits: the pass
            # stops at the head point (registered after the tap, so the tap keeps its output)
            self._stop = self.pruned.get_submodule(self.points[block]).register_forward_hook(
                _stop_forward)
        return self

    def close(self) -> None:
        if self._taps is not None:
            self._taps.remove()
            self._taps = None
        if self._stop is not None:
            self._stop.remove()
            self._stop = None

    def train(self, mode: bool = True) -> "DcpObjective":
        super().train(mode)
        self.pruned.train(mode and self.bn_train)  # BN frozen while a layer is selected/tuned
        return self

    def forward(self, x: torch.Tensor) -> dict:
        try:
            out = {"logits": self.pruned(x)}
        except _HeadReached:
            out = {}
        taps = self._taps.outputs
        if self.block < len(self.points):
            out["aux"] = self.heads[self.block](taps[self.points[self.block]])
        if self.layer is not None:
            out["rec"] = F.mse_loss(taps[self.layer], self._target(x))
        return out

    def _target(self, x: torch.Tensor) -> torch.Tensor:
        """The full net's output of the layer for batch ``x``, computed once per batch object
        (the entry holds the batch, so an id is never reused for another while cached)."""
        entry = self._targets.get(id(x))
        if entry is None or entry[0] is not x or entry[1] != x._version:
            with torch.no_grad():
                entry = (x, x._version, capture(self._full[0], self.layer, x, "output"))
            if len(self._targets) < TARGET_CACHE:
                self._targets[id(x)] = entry
        return entry[2]

    def loss(self, labels: torch.Tensor, outputs: dict) -> tuple[torch.Tensor, dict]:
        """Block stage: final + head loss (final alone after the last head); layer stage:
        reconstruction + head loss (+ final's after the last head). Metrics: the logits',
        the head's where the pass stopped there."""
        if "logits" not in outputs:
            discrimination, metrics = self.calc_loss(labels, outputs["aux"])
            return outputs["rec"] + discrimination, metrics
        final, metrics = self.calc_loss(labels, outputs["logits"])
        discrimination = self.calc_loss(labels, outputs["aux"])[0] if "aux" in outputs else final
        if self.layer is None:
            return (final + discrimination if "aux" in outputs else final), metrics
        return outputs["rec"] + discrimination, metrics


class _HeadReached(BaseException):
    """Raised at the block's head point when the rest of the network is not needed; a
    BaseException, so a user's forward that catches ``Exception`` lets it through."""


def _stop_forward(_module, _args, _output) -> None:
    raise _HeadReached


class ZeroPrunedInputs(Callback):
    """Keeps ``keep[name]``'s complement of input channels of each layer at zero."""

    def __init__(self, model: nn.Module, keep: dict[str, torch.Tensor]) -> None:
        self.model, self.keep = model, keep

    @torch.no_grad()
    def apply(self) -> None:
        for name, index in self.keep.items():
            weight = self.model.get_submodule(name).weight
            mask = torch.zeros(weight.shape[1], dtype=torch.bool, device=weight.device)
            mask[index.to(weight.device)] = True
            weight[:, ~mask] = 0.0

    def on_minibatch_end(self, trainer, state) -> None:
        self.apply()


def _override_weight(module: nn.Module, weight: torch.Tensor):
    """A forward hook making ``module`` use ``weight`` (a leaf we take gradients of)."""
    def hook(_module, args, _output):
        if not isinstance(module, nn.Linear):
            return module._conv_forward(args[0], weight, module.bias)
        return F.linear(args[0], weight, module.bias)
    return module.register_forward_hook(hook, prepend=True)  # before the taps see the output


def greedy_channels(objective: DcpObjective, name: str, nb_keep: int,
                    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                    per_pass: int = 1) -> torch.Tensor:
    """Indices (sorted) of ``nb_keep`` input channels of layer ``name``, added ``per_pass`` at a
    time (1: the paper's one) by the largest squared gradient of the layer objective, one
    batch per pass.

    What a pass computes is unchanged by two savings: the full network's output of the layer
    is computed once per batch (``DcpObjective`` caches it), and the network's own parameters
    are frozen during the passes, so autograd records only what lies between the layer's
    weight and the losses."""
    module = objective.pruned.get_submodule(name)
    weight = module.weight.detach().clone()
    shape = (1, -1) + (1,) * (weight.dim() - 2)
    chosen = torch.zeros(weight.shape[1], dtype=torch.bool, device=weight.device)
    objective.eval()
    with frozen(objective.parameters()):
        step = 0
        while int(chosen.sum()) < nb_keep:
            inputs, labels = batches[step % len(batches)]
            leaf = (weight * chosen.reshape(shape)).requires_grad_(True)
            handle = _override_weight(module, leaf)
            try:
                loss, _ = objective.loss(labels, objective(inputs))
                (grad,) = torch.autograd.grad(loss, leaf)
            finally:
                handle.remove()
            dims = [d for d in range(grad.dim()) if d != 1]
            score = grad.pow(2).sum(dim=dims)
            score[chosen] = -float("inf")
            count = min(per_pass, nb_keep - int(chosen.sum()))
            chosen[torch.topk(score, count).indices] = True
            step += 1
    return chosen.nonzero().flatten().cpu()


@contextlib.contextmanager
def frozen(params: Iterable[nn.Parameter], trained: Sequence[nn.Parameter] = ()):
    """Every parameter but ``trained`` without gradients inside the block (autograd then records
    only the graph between the trained ones and the loss); restored afterwards."""
    keep = {id(p) for p in trained}
    stopped = [p for p in params if p.requires_grad and id(p) not in keep]
    for p in stopped:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in stopped:
            p.requires_grad_(True)


def layer_blocks(model: nn.Module, layers: Sequence[PrunableLayer], points: Sequence[str],
                 input_shape: Sequence[int]) -> dict[str, int]:
    """``layer -> block``: the number of head points that finished before the layer ran."""
    order: list[tuple[str, str]] = []
    handles = [model.get_submodule(layer.name).register_forward_pre_hook(
        lambda _m, _a, n=layer.name: order.append(("layer", n))) for layer in layers]
    handles += [model.get_submodule(point).register_forward_hook(
        lambda _m, _a, _o, n=point: order.append(("point", n))) for point in points]
    probe_forward(model, input_shape, handles)
    blocks, done = {}, 0
    for kind, name in order:
        if kind == "point":
            done += 1
        else:
            blocks.setdefault(name, done)
    return blocks
