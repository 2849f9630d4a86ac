"""Selection: which input channels each layer keeps, and the weights it keeps them with.

    from compression.selection import select_channels
    keep, stats = select_channels(full, pruned, chosen, counts, batches, options, seed=0)

Layer by layer, in execution order, a layer's regression rows are sampled with inputs from the
network being pruned and targets from the full one; a registered criterion
(``register_selection``: ``ista``, ``l1``, ``random``, ``group-prox``) picks ``counts[name]``
channels and the kept weights are refitted by least squares. Residual streams can be chosen
once for all their readers (``residual_groups``). Gate Decorator's gates and DCP's
discrimination-aware objective are the other two selection cores.

Modules:

- ``criteria``: the criteria registry, ``SelectionOptions`` (the options every criterion and
  refit reads), ``select_channels``, ``refit_layers``;
- ``sampling``: per-layer regression rows (input patches and the outputs they must give);
- ``ista``: LASSO by ISTA and the exact-count penalty search; ``lstsq``: the refits;
  ``group_prox``: the L2,1 proximal selection of chn-pruned-gpu;
- ``residual_groups``: coupled selection of the channels several readers share whole;
- ``gates``: Gate Decorator's gated BN and its global Taylor ranking;
- ``dcp``, ``dcp_heads``: discrimination-aware channel pruning's objective, greedy selection
  and auxiliary heads.
"""
from utils.lazy import lazy_exports

_EXPORTS = {
    "SELECTIONS": "criteria", "register_selection": "criteria", "select_channels": "criteria",
    "refit_layers": "criteria", "refit_kept": "criteria",
    "SelectionOptions": "criteria",
    "collect": "sampling", "normal_equations": "sampling", "layer_weight": "sampling",
    "select_exact": "ista", "refit_closed": "lstsq", "refit_adam": "lstsq",
    "reconstruction_error": "lstsq", "group_prox": "group_prox",
    "ResidualGroup": "residual_groups", "residual_groups": "residual_groups",
    "coupled_keep": "residual_groups", "why_no_groups": "residual_groups",
    "register_group_criterion": "residual_groups",
    "GatedBatchNorm2d": "gates", "GlobalGatePruner": "gates", "attach_gates": "gates",
    "melt_gates": "gates",
    "DcpObjective": "dcp", "greedy_channels": "dcp", "build_heads": "dcp_heads",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
