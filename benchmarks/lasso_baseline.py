"""The scikit-learn baseline of ``channel_selection.py``: the exact-count penalty search of
``compression.selection.ista.select_exact`` with each probe a ``sklearn.linear_model.Lasso`` fit.

The two solve the same problem: ``select_exact`` minimises ``0.5 b'Gb - c'b + gamma |b|_1``
with ``G = A'A / s``, ``c = A'y / s`` (``s = ||A'A||_F``); multiplied by ``s`` that is
``0.5 ||Ab - y||^2 + gamma s |b|_1`` up to a constant, and scikit-learn's
``(1 / 2n) ||y - Ab||^2 + alpha |b|_1`` times ``n`` is the same with ``alpha n = gamma s``.
So a fair baseline starts at ``alpha_for_gamma(gamma_init, s, n)`` and stops at the mapped
tolerance.
"""
from __future__ import annotations

import torch


def alpha_for_gamma(gamma: float, scale: float, nb_rows: int) -> float:
    """scikit-learn's ``alpha`` of the penalty ``gamma`` of ``compression.selection.ista``."""
    return gamma * scale / nb_rows


def sklearn_select(design: torch.Tensor, target: torch.Tensor, nb_keep: int, alpha: float,
                   tol: float, gram: bool = False) -> tuple[torch.Tensor, int]:
    """From ``alpha``, double until at most ``nb_keep`` coefficients are non-zero, then bisect
    (one fit per probe: scikit-learn solves one penalty at a time) until exactly ``nb_keep``
    are or the interval is narrower than ``tol``; returns (kept indices, number of fits).
    ``gram``: compute ``A'A`` once and hand it to every fit (scikit-learn's ``precompute``),
    its fastest mode when the rows far outnumber the columns."""
    from sklearn.linear_model import Lasso

    x, y = design.numpy(), target.numpy()
    precompute = x.T @ x if gram else False

    def support(alpha: float):
        coef = Lasso(alpha=alpha, fit_intercept=False, max_iter=1000, tol=1e-4,
                     precompute=precompute).fit(x, y).coef_
        return coef, int((coef != 0).sum())

    low, fits, best = 0.0, 0, None
    while True:
        coef, nnz = support(alpha)
        fits += 1
        if nnz <= nb_keep:
            break
        low, best, alpha = alpha, coef, alpha * 2
    high = alpha
    while nnz != nb_keep and high - low > tol:
        mid = 0.5 * (low + high)
        coef, nnz = support(mid)
        fits += 1
        if nnz > nb_keep:
            low, best = mid, coef
        elif nnz < nb_keep:
            high = mid
    if nnz != nb_keep and best is not None:
        coef = best
    keep = torch.from_numpy(abs(coef)).topk(nb_keep).indices.sort().values
    return keep, fits
