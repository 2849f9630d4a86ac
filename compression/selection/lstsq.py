"""Least-squares refit of a layer's weights on the input channels it keeps.

``closed``: the ridge solution of ``min_W ||P_K W' - Y||^2 + ridge ||W||^2`` (its exact
minimiser, so it reconstructs at least as well as any iterative solver); ``adam``:
PocketFlow's iterative refit (Adam, ``nb_iters`` steps, ``lrn_rate``), kept for comparison
and used by ``chn-pruned-gpu``. Both work on the normal equations ``P'P`` / ``P'Y``.
"""
from __future__ import annotations

import torch


def reconstruction_error(patches: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor,
                         keep: torch.Tensor) -> float:
    """Relative error ||P_K W_K' - Y|| / ||Y|| of a (c_out, c_in, k*k) weight on kept channels."""
    pred = torch.einsum("mik,oik->mo", patches[:, keep].double(), weight[:, keep].double())
    return float((pred - targets.double()).norm() / targets.double().norm().clamp_min(1e-30))


def refit_closed(ptp: torch.Tensor, pty: torch.Tensor, keep: torch.Tensor, kk: int,
                 ridge: float = 1e-6, max_abs: float | None = None) -> torch.Tensor:
    """(c_out, |K|, k*k) weights minimising the squared error on the kept channels, from the
    normal equations ``P'P``/``P'Y`` (ridge relative to the mean diagonal). ``max_abs``: when
    the solution has a larger weight (strongly correlated kept inputs make the problem
    ill-conditioned: a DenseNet's classifier reached weights of 158 from 1.6, and fine-tuning
    then diverged), the ridge grows tenfold until it has not (at most to 1)."""
    cols = (keep.reshape(-1, 1) * kk + torch.arange(kk, device=keep.device)).reshape(-1)
    xtx = ptp[cols][:, cols].clone()
    eye = torch.eye(len(cols), dtype=xtx.dtype, device=xtx.device) * xtx.diagonal().mean().clamp_min(1e-30)
    while True:
        solution = torch.linalg.solve(xtx + ridge * eye, pty[cols])       # (|K|*kk, c_out)
        if max_abs is None or ridge >= 1.0 or float(solution.abs().max()) <= max_abs:
            break
        ridge *= 10.0
    return solution.T.reshape(pty.shape[1], len(keep), kk).float()


def quadratic_loss(ptp: torch.Tensor, pty: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``||P W' - Y||^2 - ||Y||^2`` from the normal equations, for a flat (c_out, c_in*kk)
    weight: ``tr(W P'P W') - 2 tr(W P'Y)``. Each evaluation costs c_out (c_in kk)^2, whatever
    the number of rows."""
    return (weight @ ptp * weight).sum() - 2.0 * (weight * pty.T).sum()


def refit_adam(ptp: torch.Tensor, pty: torch.Tensor, keep: torch.Tensor, init: torch.Tensor,
               lrn_rate: float = 1e-3, nb_iters: int = 100) -> torch.Tensor:
    """PocketFlow's refit: Adam on the kept channels from the current weights, on the same
    squared error as ``refit_closed`` (through the normal equations, scaled by ``||P'P||_F``;
    Adam's steps do not depend on the scale)."""
    kk = init.shape[2]
    cols = (keep.reshape(-1, 1) * kk + torch.arange(kk, device=keep.device)).reshape(-1)
    scale = ptp.norm().clamp_min(1e-30)
    a, b = (ptp[cols][:, cols] / scale).float(), (pty[cols] / scale).float()
    weight = init[:, keep].reshape(init.shape[0], -1).float().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([weight], lr=lrn_rate)
    with torch.enable_grad():
        for _ in range(nb_iters):
            optimizer.zero_grad()
            quadratic_loss(a, b, weight).backward()
            optimizer.step()
    return weight.detach().reshape(init.shape[0], len(keep), kk)
