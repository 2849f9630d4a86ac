"""Sparsity: weights held at zero by masks, how many each layer loses, and sparse files.

    from compression.sparsity import attach_masks, set_masks, magnitude_mask
    attach_masks(model, names)                   # a parametrization per conv/linear weight
    set_masks(model, {"conv1": nb_zeros, ...})   # the smallest weights of each layer at zero

Modules:

- ``masks``: weight masks as ``torch.nn.utils.parametrize`` parametrizations, sparsity tables;
- ``agp``: Zhu & Gupta's automated gradual pruning ramp (the one ramp: weight-sparse and the
  schedule learner's AGP pruner);
- ``allocation``: per-layer zero counts for a ratio (uniform, PocketFlow's heuristic,
  proportional with caps);
- ``regression``: PocketFlow's layer-wise regression of a masked model onto the full one;
- ``batchnorm``: BN statistics re-estimated after pruning or quantization;
- ``sensitivity``: prune one layer at a time and measure (the sensitivity tool);
- ``sparse_format``: COO and CSR encodings of a sparse model's weights (the layout of the
  sparse copies, which ``compression.artifacts.sparse`` writes and reads).
"""
from utils.lazy import lazy_exports

_EXPORTS = {
    "attach_masks": "masks", "detach_masks": "masks", "set_masks": "masks",
    "masks_of": "masks", "magnitude_mask": "masks", "sparsity_of": "masks",
    "KeepZeros": "masks",
    "agp_fraction": "agp", "agp_sparsity": "agp",
    "allocate": "allocation", "nb_zeros_uniform": "allocation", "nb_zeros_heurist": "allocation",
    "layerwise_regression": "regression", "recalibrate_bn": "batchnorm",
    "analyse_sensitivity": "sensitivity", "SensitivityResult": "sensitivity",
    "encode_state_dict": "sparse_format", "decode_state_dict": "sparse_format",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
