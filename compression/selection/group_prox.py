"""chn-pruned-gpu's selection: proximal gradient on a layer's output regression with a group
soft-threshold on input-channel norms (the L2,1 proximal operator).

On the normal equations (``P'P`` / ``P'Y`` divided by ``||P'P||_F``, so one step size suits
every layer) each iteration takes a gradient step on ``||P W' - Y||^2`` and shrinks each input
channel's weights ``W[:, i]`` by ``max(0, 1 - tau / ||W[:, i]||)``. The threshold ``tau`` ramps
linearly, over the first ``ramp`` of the iterations, up to the current norm of the channel at the
target percentile, so that from then on exactly the weakest channels are zero. The step grows
x``incr`` (1.4) after a decrease of the loss and shrinks x``decr`` (0.7) otherwise
(PocketFlow's adaptive rate). The
kept channels are the ``nb_keep`` largest norms at the end; ``compression.selection.lstsq`` then refits
them (masked Adam, or the closed form).
"""
from __future__ import annotations

import torch

from compression.selection.lstsq import quadratic_loss


@torch.no_grad()
def group_prox(ptp: torch.Tensor, pty: torch.Tensor, weight: torch.Tensor, nb_keep: int,
               lrn_rate_init: float = 1e-2, nb_iters: int = 1000,
               ramp: float = 0.5, incr: float = 1.4,
               decr: float = 0.7) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kept input channels (sorted), weights after the proximal iterations)`` for a
    (c_out, c_in, kk) ``weight``."""
    c_out, c_in, kk = weight.shape
    if not 1 <= nb_keep <= c_in:
        raise ValueError(f"nb_keep must be in [1, {c_in}], got {nb_keep}")
    scale = ptp.norm().clamp_min(1e-30)
    a, b = (ptp / scale).float(), (pty / scale).float()
    w = weight.reshape(c_out, c_in * kk).float().clone()
    nb_zero = c_in - nb_keep
    lrn_rate, loss = lrn_rate_init, quadratic_loss(a, b, w)
    ramp_iters = max(1.0, ramp * nb_iters)
    for step in range(nb_iters):
        groups = (w - lrn_rate * 2.0 * (w @ a - b.T)).reshape(c_out, c_in, kk)
        norms = groups.pow(2).sum(dim=(0, 2)).sqrt()
        if nb_zero > 0:
            tau = min(1.0, (step + 1) / ramp_iters) * torch.kthvalue(norms, nb_zero).values
            groups = groups * (1.0 - tau / norms.clamp_min(1e-30)).clamp_min(0.0)[None, :, None]
        candidate = groups.reshape(c_out, -1)
        new_loss = quadratic_loss(a, b, candidate)
        lrn_rate *= incr if new_loss < loss else decr
        w, loss = candidate, new_loss
    norms = w.reshape(c_out, c_in, kk).pow(2).sum(dim=(0, 2))
    keep = norms.topk(nb_keep).indices.sort().values
    return keep, w.reshape(c_out, c_in, kk).to(weight.dtype)
