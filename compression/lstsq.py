"""Least-squares refit of a layer's weights on the input channels it keeps.

``closed``: the ridge solution of ``min_W ||P_K W' - Y||^2 + ridge ||W||^2`` (its exact
minimiser, so it reconstructs at least as well as any iterative solver); ``adam``:
PocketFlow's iterative refit (Adam, ``nb_iters`` steps, ``lrn_rate``), kept for comparison.
"""
from __future__ import annotations

import torch


def reconstruction_error(patches: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor,
                         keep: torch.Tensor) -> float:
    """Relative error ||P_K W_K' - Y|| / ||Y|| of a (c_out, c_in, k*k) weight on kept channels."""
    pred = torch.einsum("mik,oik->mo", patches[:, keep].double(), weight[:, keep].double())
    return float((pred - targets.double()).norm() / targets.double().norm().clamp_min(1e-30))


def refit_closed(ptp: torch.Tensor, pty: torch.Tensor, keep: torch.Tensor, kk: int,
                 ridge: float = 1e-6) -> torch.Tensor:
    """(c_out, |K|, k*k) weights minimising the squared error on the kept channels, from the
    normal equations ``P'P``/``P'Y`` (ridge relative to the mean diagonal)."""
    cols = (keep.reshape(-1, 1) * kk + torch.arange(kk, device=keep.device)).reshape(-1)
    xtx = ptp[cols][:, cols].clone()
    xtx += torch.eye(len(cols), dtype=xtx.dtype, device=xtx.device) * (
        ridge * xtx.diagonal().mean().clamp_min(1e-30))
    solution = torch.linalg.solve(xtx, pty[cols])                         # (|K|*kk, c_out)
    return solution.T.reshape(pty.shape[1], len(keep), kk).float()


def refit_adam(patches: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor,
               init: torch.Tensor, lrn_rate: float = 1e-3, nb_iters: int = 100,
               weight_decay: float = 0.0) -> torch.Tensor:
    """PocketFlow's refit: Adam from the current weights of the kept channels."""
    x = patches[:, keep].reshape(patches.shape[0], -1)
    weight = init[:, keep].reshape(init.shape[0], -1).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([weight], lr=lrn_rate, weight_decay=weight_decay)
    for _ in range(nb_iters):
        optimizer.zero_grad()
        loss = ((x @ weight.T - targets) ** 2).mean()
        loss.backward()
        optimizer.step()
    return weight.detach().reshape(init.shape[0], len(keep), -1)
