"""LASSO by ISTA in torch, and the search for the penalty that keeps exactly k channels.

The problem (one pruned layer): ``min_b 0.5 b'Gb - c'b + gamma |b|_1`` with ``G = A'A / s`` and
``c = A'y / s`` (``s = ||A'A||_F``), which is the LASSO ``0.5||Ab - y||^2 + gamma s |b|_1``
written on the Gram matrix: its size is channels x channels whatever the number of samples.
Scikit-learn's ``Lasso(alpha)`` on (A, y) with n rows is the same problem with
``gamma = alpha * n / s``. Many penalties are solved at once as a batch.
"""
from __future__ import annotations

import torch


def soft_threshold(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.clamp(x.abs() - threshold, min=0.0)


def ista(gram: torch.Tensor, corr: torch.Tensor, gammas: torch.Tensor, lrn_rate: float,
         nb_iters: int, beta0: torch.Tensor | None = None) -> torch.Tensor:
    """Solve the LASSO for every penalty in ``gammas`` (shape (P,)); returns (P, n) coefficients.

    ``beta <- soft(beta - lr (G beta - c), gamma lr)`` for ``nb_iters`` iterations. ``lrn_rate``
    must be below 2 / lambda_max(G) to converge; ``G`` normalised by its Frobenius norm has
    lambda_max <= 1, so PocketFlow's 1e-2 is safe (and slow), 1.0 is safe and fast.
    """
    gammas = gammas.reshape(-1, 1).to(gram)
    beta = (beta0 if beta0 is not None else torch.zeros(gram.shape[0], dtype=gram.dtype,
                                                        device=gram.device))
    beta = beta.reshape(1, -1).expand(len(gammas), -1).clone()
    threshold = gammas * lrn_rate
    for _ in range(nb_iters):
        beta = soft_threshold(beta - lrn_rate * (beta @ gram - corr), threshold)
    return beta


def normalised_problem(design: torch.Tensor | None = None, target: torch.Tensor | None = None,
                       gram: torch.Tensor | None = None, corr: torch.Tensor | None = None):
    """``(G, c, s)`` from the design matrix and target, or from a precomputed Gram/correlation."""
    if gram is None:
        gram, corr = design.T @ design, design.T @ target
    scale = torch.linalg.matrix_norm(gram).clamp_min(1e-30)
    return gram / scale, corr / scale, scale


def select_exact(gram: torch.Tensor, corr: torch.Tensor, nb_keep: int, lrn_rate: float = 1.0,
                 nb_iters: int = 100, gamma_init: float = 0.1, nb_probes: int = 8,
                 tol: float = 1e-8, seed: int = 0) -> tuple[torch.Tensor, dict]:
    """Indices of exactly ``nb_keep`` channels chosen by the LASSO path.

    As in PocketFlow: gamma starts at ``gamma_init`` and doubles until at most ``nb_keep``
    coefficients are non-zero, then the interval is narrowed until exactly ``nb_keep`` are
    (here ``nb_probes`` penalties per round, solved as one batch). If ties make the exact count
    unreachable, the ``nb_keep`` largest |beta| of the closest larger support are kept.
    ``gram``/``corr`` must be normalised (``normalised_problem``).
    """
    n = gram.shape[0]
    if not 0 < nb_keep <= n:
        raise ValueError(f"cannot keep {nb_keep} of {n} channels")
    if nb_keep == n:
        return torch.arange(n, device=gram.device), {"gamma": 0.0, "rounds": 0}
    gen = torch.Generator(device="cpu").manual_seed(seed)
    beta0 = torch.rand(n, generator=gen, dtype=torch.float64).to(gram)

    def solve(gammas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        beta = ista(gram, corr, gammas, lrn_rate, nb_iters, beta0)
        return beta, (beta != 0).sum(dim=1)

    gamma, rounds = gamma_init, 0
    low, best_beta = 0.0, None                   # best_beta: a solution with nnz >= nb_keep
    while True:                                  # 1) double gamma until nnz <= nb_keep
        beta, nnz = solve(torch.tensor([gamma]))
        rounds += 1
        if nnz[0] == nb_keep:
            return _support(beta[0]), {"gamma": gamma, "rounds": rounds}
        if nnz[0] < nb_keep:
            break
        low, best_beta = gamma, beta[0]
        gamma *= 2.0
        if gamma > 1e12:
            raise RuntimeError("ISTA search diverged: no penalty makes the solution sparse")
    high = gamma
    while high - low > tol:                      # 2) narrow [low, high] with batched probes
        probes = torch.linspace(low, high, nb_probes + 2, dtype=torch.float64)[1:-1]
        beta, nnz = solve(probes)
        rounds += 1
        exact = (nnz == nb_keep).nonzero()
        if len(exact):
            i = int(exact[0])
            return _support(beta[i]), {"gamma": float(probes[i]), "rounds": rounds}
        above = (nnz > nb_keep).nonzero()
        below = (nnz < nb_keep).nonzero()
        if len(above):
            i = int(above[-1])
            low, best_beta = float(probes[i]), beta[i]
        if len(below):
            high = float(probes[int(below[0])])
    if best_beta is None:                        # gamma_init already too large: tiny penalty
        best_beta, _ = solve(torch.tensor([low]))
        best_beta = best_beta[0]
    keep = best_beta.abs().topk(nb_keep).indices.sort().values
    return keep, {"gamma": low, "rounds": rounds, "tie_break": True}


def _support(beta: torch.Tensor) -> torch.Tensor:
    return (beta != 0).nonzero().flatten()
