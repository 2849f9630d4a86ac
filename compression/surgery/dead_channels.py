"""Dead-channel elimination: no layer computes a channel that nothing reads afterwards.

The channel graph (``compression.graph``) removes a channel when no reader keeps it, along a
whole residual stream at once. What it cannot see is *when* a channel is read: a residual
stream ``x1 = x0 + f1(x0)``, ``x2 = x1 + f2(x1)`` keeps a channel that only ``f1`` reads, so
``f2``'s last layer still computes it, and nobody reads it after ``x2``. This pass finds such
channels by liveness over the fx trace of a (thinned) model (``compression.surgery.liveness``:
a channel of a tensor is *live* when an op after it needs it).

Every conv / linear layer (a *writer*) with dead output channels then computes only its live
ones: the writer and the per-channel modules on its private path (BN, depthwise convs,
activations) shrink, and the last of them becomes a ``Scatter*`` module
(``compression.surgery.picks``) that places the live channels at their positions of the
tensor the sum expects, zeros in the dead ones. Exact: the zeros lie only in channels no later
op reads. ``eliminate(model, input_shape)`` returns the new model and the modules it changed;
``unread_outputs`` counts the dead output channels per writer (0 everywhere after the pass).

``report`` says what the pass did and *measures* what is left: by liveness where every op on
the trace has a rule that was followed exactly, else by the perturbation probe
(``compression.surgery.unread``) where the model is small enough, else ``None`` with the ops
named, never a count it did not check.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import fx, nn

from compression.graph.ops import channel_role, op_kind, shaped_graph, unknown_ops
from compression.graph.pruners import pruner_for
from compression.surgery.liveness import Liveness
from compression.surgery.picks import is_scatter, set_scatter, set_submodule
from compression.surgery.unread import WRITERS, unread_channels
from utils.model_stats import count_flops

# The perturbation probe runs two forward passes of 4 samples per output channel; above this
# many FLOPs in all it is not run and an inexact liveness leaves the count unknown (None).
PROBE_FLOPS = 3e10


def _single_calls(gm: fx.GraphModule) -> dict[str, fx.Node]:
    """module -> its call node, for the modules called exactly once."""
    calls: dict[str, list[fx.Node]] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls.setdefault(node.target, []).append(node)
    return {name: nodes[0] for name, nodes in calls.items() if len(nodes) == 1}


def _writer_nodes(gm: fx.GraphModule, roles=("reader",)) -> dict[str, fx.Node]:
    """Conv / linear modules called exactly once whose role is one of ``roles`` (readers in
    the graph's sense; with "grouped" and "channelwise" also grouped and depthwise convs, all
    the modules the perturbation probe perturbs)."""
    modules = dict(gm.named_modules())
    return {name: node for name, node in _single_calls(gm).items()
            if isinstance(modules[name], WRITERS) and channel_role(modules[name], node) in roles}


def _live_outputs(module: nn.Module, live) -> torch.Tensor:
    """The live channels of what ``module`` itself computes (before its scatter)."""
    if not isinstance(live, torch.Tensor):
        live = torch.ones(len(module.out_index) if is_scatter(module) else 0, dtype=torch.bool)
    return live[module.out_index.cpu()] if is_scatter(module) else live


def unread_outputs(model: nn.Module, input_shape: Sequence[int]) -> dict[str, int]:
    """``writer -> output channels nothing reads afterwards`` (writers with none left out),
    by liveness (a lower bound where ``liveness_of`` says it is not exact)."""
    return liveness_of(model, input_shape)[0]


def liveness_of(model: nn.Module, input_shape: Sequence[int]) -> tuple[dict[str, int], list[str]]:
    """``(unread_outputs, ops)``: the count by liveness, and the ops it could not follow
    exactly (no rule, or a rule that needed every channel where fewer may be read); the count
    is exact when ``ops`` is empty."""
    return _counts(shaped_graph(model, input_shape))


def _counts(gm: fx.GraphModule) -> tuple[dict[str, int], list[str]]:
    liveness = Liveness(gm)
    live = liveness.run()
    modules = dict(gm.named_modules())
    out = {}
    for name, node in _writer_nodes(gm, ("reader", "grouped", "channelwise")).items():
        own = _live_outputs(modules[name], live.get(node, torch.zeros(0, dtype=torch.bool)))
        dead = int((~own).sum()) if node in live else _out_channels(modules[name])
        if dead:
            out[name] = dead
    return out, sorted(liveness.unknown | liveness.inexact)


def _out_channels(module: nn.Module) -> int:
    return pruner_for(module).channels(module)[1]


def _private_chain(gm: fx.GraphModule, node: fx.Node, single: dict) -> list[str]:
    """Per-channel modules after ``node`` on a path of single users, nearest first (where the
    writer's scatter can move to, so they shrink too)."""
    modules, chain = dict(gm.named_modules()), []
    while len(node.users) == 1:
        (user,) = node.users
        if user.args[:1] != (node,):
            break
        if user.op == "call_module":
            module = modules[user.target]
            role = channel_role(module, user)
            if role == "channelwise" and user.target in single:
                chain.append(user.target)
                if is_scatter(module):
                    break
            elif role != "passthrough" or is_scatter(module):
                break
        elif op_kind(user.target) != "passthrough":
            break
        node = user
    # the scatter goes on the last per-channel module; later passthrough ops see the zeros
    return chain


@torch.no_grad()
def eliminate(model: nn.Module, input_shape: Sequence[int],
              not_worth: dict | None = None) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` in which no conv / linear layer computes an output channel that no
    later op reads where removing it saves more than its scatter costs (``_pays``), and the
    names of the modules that changed (see the module docstring); ``not_worth`` (a dict)
    receives ``writer -> unread channels`` left because their scatter would cost more."""
    gm = shaped_graph(model, input_shape)
    live = Liveness(gm).run()
    modules, single = dict(model.named_modules()), _single_calls(gm)
    model, changed = copy.deepcopy(model), []
    for name, node in _writer_nodes(gm).items():
        writer = modules[name]
        chain = [] if is_scatter(writer) else _private_chain(gm, node, single)
        host = chain[-1] if chain else name
        host_live = live.get(single[host])
        if not isinstance(host_live, torch.Tensor):
            continue
        own = _live_outputs(modules[host], host_live).clone()
        if own.all():
            continue
        if not own.any():
            own[0] = True                                 # a layer keeps one channel
        if not is_scatter(modules[host]) and not _pays(modules, [name, *chain], own):
            if not_worth is not None:      # the scatter would cost more than the channels
                not_worth[name] = int((~own).sum())
            continue
        keep = own.nonzero().flatten()
        pruner = pruner_for(writer)
        set_submodule(model, name, pruner.shrink(model.get_submodule(name), None, keep))
        for follower in chain:
            module = model.get_submodule(follower)
            set_submodule(model, follower, pruner_for(module).shrink_channels(module, keep))
        target = model.get_submodule(host)
        if is_scatter(modules[host]):
            set_scatter(target, modules[host].out_index[keep.to(modules[host].out_index.device)],
                        modules[host].scatter_width)
        else:
            set_scatter(target, keep, len(own))
        changed.extend([name, *chain])
    return model, changed


def _pays(modules: dict, path: list[str], own: torch.Tensor) -> bool:
    """Whether computing only the live channels of a writer and the per-channel modules after
    it (``path``) saves more multiply-adds per position than the new scatter costs in its
    deployment form (a one-hot 1x1 product: live x width, ``picks.as_matrix_modules``)."""
    per_channel = 0
    for name in path:
        module = modules[name]
        if isinstance(module, nn.Linear):
            per_channel += module.in_features
        elif isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
            per_channel += module.weight[0].numel()
        else:
            per_channel += 1                                # a norm / activation: about one
    dead, live = int((~own).sum()), int(own.sum())
    return dead * per_channel > live * len(own)


def report(before: nn.Module, after: nn.Module, input_shape: Sequence[int],
           not_worth: dict | None = None) -> dict:
    """What ``eliminate`` did (``after`` is ``before`` when it did not run): output channels
    removed per writer, FLOPs before and after, and the output channels nothing reads that are
    left, measured (``unread_channels``; ``checked_by``: ``liveness`` where every op was
    followed exactly, ``perturbation``, or None with the count None where the probe is too
    costly), the writers whose unread channels cost less than a scatter (``not_worth``), the
    ops liveness could not follow (``not_followed``) and the ops of the trace without a
    channel rule (``unknown_ops``)."""
    unread_before = unread_outputs(before, input_shape)
    traced = shaped_graph(after, input_shape)                        # traced once, read twice
    unread, not_followed = _counts(traced)
    removed = {name: count - unread.get(name, 0) for name, count in unread_before.items()
               if count > unread.get(name, 0)} if after is not before else {}
    count, checked_by = sum(unread.values()), "liveness"
    if not_followed:
        count, checked_by = measured(after, input_shape)
    return {"removed": removed,
            "flops_before": count_flops(before, input_shape),
            "flops_after": count_flops(after, input_shape),
            "unread_channels": count, "checked_by": checked_by,
            "not_worth": dict(not_worth or {}), "not_followed": not_followed,
            "unknown_ops": unknown_ops(traced)}


def measured(model: nn.Module, input_shape: Sequence[int]) -> tuple[int | None, str | None]:
    """The unread output channels by the perturbation probe, where its cost is below
    ``PROBE_FLOPS``; ``(None, None)`` where it is not."""
    channels = sum(module.weight.shape[1 if isinstance(module, (nn.ConvTranspose1d,
                                                                  nn.ConvTranspose2d)) else 0]
                   for module in model.modules() if isinstance(module, WRITERS))
    if 2 * channels * 4 * count_flops(model, input_shape) > PROBE_FLOPS:
        return None, None
    return sum(unread_channels(model, input_shape).values()), "perturbation"
