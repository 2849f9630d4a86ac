"""Modules that pick channels around their own computation.

- ``Gather*`` (input side): a reader that first keeps the input channels listed in
  ``in_index`` (``index_select``), so it can read a few channels of a wider shared tensor;
- ``Scatter*`` (output side): a module that computes only some channels of a wider tensor and
  places them at ``out_index`` in ``scatter_width`` channels, zeros elsewhere. A member of a
  residual sum that computes only the channels someone reads after the sum is one
  (``compression.surgery.dead_channels``): the zeros fill channels nobody reads.

A class gets these behaviours as mixins over its own type (a user's subclass included):
``GatherConv2d``, ``ScatterBatchNorm2d``, ``ScatterGatherConv2d``... ``set_gather`` and
``set_scatter`` add or remove them on a module in place. For deployment,
``as_matrix_modules`` turns every pick into a product with a constant one-hot matrix (exact:
each output is one input times 1), which backends run inside their conv/linear kernels where
an ``index_select`` / ``index_copy`` would split the program.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

_CONV_BY_RANK = {3: nn.functional.conv1d, 4: nn.functional.conv2d, 5: nn.functional.conv3d}
_CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}     # by the number of spatial dimensions


def _one_hot(rows: torch.Tensor, n_rows: int, n_cols: int, cols: torch.Tensor,
             like: torch.Tensor, rank: int) -> torch.Tensor:
    matrix = torch.zeros(n_rows, n_cols, device=like.device, dtype=like.dtype)
    matrix[rows.to(like.device), cols.to(like.device)] = 1.0
    return matrix.reshape(n_rows, n_cols, *[1] * (rank - 2))


def _by_matrix(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    if x.dim() == 2:
        return nn.functional.linear(x, matrix.reshape(matrix.shape[:2]))
    return _CONV_BY_RANK[x.dim()](x, matrix.reshape(*matrix.shape[:2], *[1] * (x.dim() - 2)))


class _Gather:
    """The input-channel pick: ``index_select`` by default; after ``select_by_matrix(c_in)``
    a product with a constant one-hot matrix."""

    in_index: torch.Tensor
    selection: torch.Tensor | None

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        width = self.in_features if isinstance(self, nn.Linear) else self.in_channels
        self.register_buffer("in_index", torch.arange(width))

    def select_by_matrix(self, c_in: int) -> None:
        n = len(self.in_index)
        one_hot = _one_hot(torch.arange(n), n, c_in, self.in_index, self.weight, self.weight.dim())
        self.register_buffer("selection", one_hot, persistent=False)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self, "selection", None) is None:
            return x.index_select(1, self.in_index)
        return _by_matrix(x, self.selection)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return super().forward(self.gather(x), *args, **kwargs)


class _Scatter:
    """The output-channel placement: the module's channels go to ``out_index`` of a tensor of
    ``scatter_width`` channels (zeros elsewhere)."""

    out_index: torch.Tensor
    scatter_width: int

    def scatter(self, y: torch.Tensor) -> torch.Tensor:
        out = y.new_zeros(y.shape[0], self.scatter_width, *y.shape[2:])
        return out.index_copy_(1, self.out_index, y)      # in place: no second full copy

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.scatter(super().forward(*args, **kwargs))


class GatherConv2d(_Gather, nn.Conv2d):
    """A conv that first keeps the input channels listed in ``in_index``."""


class GatherLinear(_Gather, nn.Linear):
    """A linear layer that first keeps the input features listed in ``in_index``."""


class GatherConv1d(_Gather, nn.Conv1d):
    """A 1-D conv that first keeps the input channels listed in ``in_index``."""


_CLASSES: dict[tuple[type, bool, bool], type] = {
    (nn.Conv2d, True, False): GatherConv2d, (nn.Linear, True, False): GatherLinear,
    (nn.Conv1d, True, False): GatherConv1d}


def plain_class(cls: type) -> type:
    """The module class under its ``Gather`` / ``Scatter`` mixins."""
    return next(c for c in cls.__mro__ if not issubclass(c, (_Gather, _Scatter)))


def picks_class(base: type, gather: bool, scatter: bool) -> type:
    """``base`` (a plain class) with the chosen mixins (made once per combination)."""
    if not gather and not scatter:
        return base
    key = (base, gather, scatter)
    if key not in _CLASSES:
        mixins = ((_Scatter,) if scatter else ()) + ((_Gather,) if gather else ())
        name = ("Scatter" if scatter else "") + ("Gather" if gather else "") + base.__name__
        parent = picks_class(base, True, False) if gather and scatter else base
        bases = (_Scatter, parent) if gather and scatter else (*mixins, base)
        picks = ", ".join(m.__name__[1:].lower() for m in mixins)
        _CLASSES[key] = type(name, bases, {
            "__module__": __name__, "__doc__": f"{base.__name__} with channel picks ({picks})."})
    return _CLASSES[key]


def gather_class(cls: type) -> type:
    """The ``Gather*`` variant of a reader class."""
    return picks_class(plain_class(cls), True, is_scatter(cls))


def is_gather(module_or_cls) -> bool:
    cls = module_or_cls if isinstance(module_or_cls, type) else type(module_or_cls)
    return issubclass(cls, _Gather)


def is_scatter(module_or_cls) -> bool:
    cls = module_or_cls if isinstance(module_or_cls, type) else type(module_or_cls)
    return issubclass(cls, _Scatter)


def _reclass(module: nn.Module, gather: bool, scatter: bool) -> None:
    module.__class__ = picks_class(plain_class(type(module)), gather, scatter)


def set_gather(module: nn.Module, index: torch.Tensor | None) -> nn.Module:
    """``module`` picking its input channels ``index`` first (None: reading all of them)."""
    if index is None:
        module._buffers.pop("in_index", None)
        module.__dict__.pop("selection", None)
        module._buffers.pop("selection", None)
    else:
        device = module.weight.device
        module._buffers["in_index"] = torch.as_tensor(index, dtype=torch.long,
                                                      device=device).clone()
    _reclass(module, index is not None, is_scatter(module))
    return module


def set_scatter(module: nn.Module, index: torch.Tensor | None, width: int = 0) -> nn.Module:
    """``module`` placing its output channels at ``index`` of ``width`` channels (None: its
    outputs as they are)."""
    if index is None:
        module._buffers.pop("out_index", None)
        module.__dict__.pop("scatter_width", None)
    else:
        tensor = next(iter(module.state_dict().values()), torch.empty(0))
        module._buffers["out_index"] = torch.as_tensor(index, dtype=torch.long,
                                                       device=tensor.device).clone()
        module.scatter_width = int(width)
    _reclass(module, is_gather(module), index is not None)
    return module


class _OneHot(nn.Module):
    """A constant one-hot product placing ``n_in`` channels at ``index`` of ``width``."""

    def __init__(self, index: torch.Tensor, n_in: int, width: int, like: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("matrix", _one_hot(index, width, n_in, torch.arange(n_in), like, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # any rank, no Python branch on the input (torch.fx traces it)
        return torch.einsum("oc,nc...->no...", self.matrix.reshape(self.matrix.shape[:2]), x)


def input_widths(model: nn.Module, modules: dict[str, nn.Module], input_shape) -> dict[str, int]:
    """Input width of each module in one eval-mode forward pass."""
    widths: dict[str, int] = {}

    def record(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            widths[name] = int(args[0].shape[1])
        return hook

    hooks = [m.register_forward_pre_hook(record(n)) for n, m in modules.items()]
    param = next(model.parameters())
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape, device=param.device, dtype=param.dtype))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return widths


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, module)


def as_matrix_modules(model: nn.Module, input_shape, fold) -> nn.Module:
    """A copy of ``model`` without ``index_select`` / ``index_copy`` picks (same outputs), for
    deployment. Each gather becomes whichever exact form has fewer weights: ``fold(module,
    width)`` (the plain layer over its whole input with zero columns: never more weights than
    the unpruned layer) or a one-hot matrix before the thinned weight. Each scatter becomes
    the plain module followed by a one-hot 1x1 product into the wider tensor."""
    model = copy.deepcopy(model)
    gathers = {n: m for n, m in model.named_modules() if is_gather(m)}
    widths = input_widths(model, gathers, input_shape) if gathers else {}
    for name, module in gathers.items():
        width, picked = widths[name], len(module.in_index)
        folded = module.weight.numel() // picked * width
        if folded <= module.weight.numel() + picked * width:
            new = fold(module, width)
        else:
            new = _picked_by_matrix(module, width)
        if new is not module:
            set_submodule(model, name, new)
            if name == "":
                model = new
    return scatters_as_products(model, copy_model=False)


def _picked_by_matrix(module: nn.Module, width: int) -> nn.Module:
    """A conv / linear gather as ``Sequential(one-hot pick, plain layer)``: the pick is a
    bias-free 1x1 conv / linear layer whose weight is a *parameter*, so runtimes that need
    static weights (XNNPACK) run it in their delegate; a constant buffer as the weight of a
    functional conv ran outside it, in ExecuTorch's portable kernels (a thinned ResNet-20's
    .pte was 16x slower than the full model's). Other gathers: ``select_by_matrix``."""
    index = module.in_index
    rank = module.weight.dim() - 2
    if isinstance(module, nn.Linear):
        pick = nn.Linear(width, len(index), bias=False)
    elif isinstance(module, nn.modules.conv._ConvNd) and not module.transposed and rank in _CONVS:
        pick = _CONVS[rank](width, len(index), 1, bias=False)
    else:
        module.select_by_matrix(width)
        return module
    matrix = _one_hot(torch.arange(len(index)), len(index), width, index, module.weight,
                      pick.weight.dim())
    pick.weight = nn.Parameter(matrix, requires_grad=False)
    return nn.Sequential(pick, set_gather(module, None))


def scatters_as_products(model: nn.Module, copy_model: bool = True) -> nn.Module:
    """``model`` (a copy) with every ``Scatter*`` module replaced by the plain module followed
    by a constant one-hot 1x1 product into the wider tensor (same outputs; one more conv /
    linear where a runtime or a lowering has no ``index_copy``)."""
    model = copy.deepcopy(model) if copy_model else model
    for name, module in [(n, m) for n, m in model.named_modules() if is_scatter(m)]:
        index, width = module.out_index, module.scatter_width
        set_scatter(module, None)
        reference = next(p for p in module.state_dict().values() if p.is_floating_point())
        set_submodule(model, name, nn.Sequential(module, _one_hot_module(
            module, index, width, reference)))
    return model


def _one_hot_module(host: nn.Module, index: torch.Tensor, width: int,
                    like: torch.Tensor) -> nn.Module:
    """A bias-free 1x1 conv (after a 2-d module) or linear layer (after a linear one) whose
    weight places the host's channels at ``index``; else a functional product of any rank."""
    n_in = len(index)
    if isinstance(host, nn.Linear):
        layer = nn.Linear(n_in, width, bias=False)
    elif type(host).__name__.endswith("2d"):
        layer = nn.Conv2d(n_in, width, 1, bias=False)
    else:
        return _OneHot(index, n_in, width, like)
    matrix = _one_hot(index, width, n_in, torch.arange(n_in), like, layer.weight.dim())
    layer.weight = nn.Parameter(matrix, requires_grad=False)
    return layer
