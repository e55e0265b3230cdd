"""Ridge regression of co-states on states, per group, from normal-equation blocks
(parpas' local correction: the co-state at an interface predicted from the state)."""

from __future__ import annotations

import numpy as np
import torch


class Regression:
    """``P(X) = A_g X + B_g`` by ridge least squares on (state, co-state) pairs, X and P flat,
    one fit per group g (the sample's class, or one group for all samples).

    Data are kept as normal-equation blocks ``[G | R] = X1^T [X1 | P]`` per group with
    ``X1 = [X, 1]`` (one stack of blocks per observation; all merged into one when
    ``window`` is 0), so memory is O(d^2) per group and block whatever the number of
    pairs. The fit solves ``(G + ridge * n * I') W = R`` (``n`` pairs, ``I'`` without the
    bias entry) in float64 by Cholesky (bitwise repeatable; LAPACK least squares only if
    the matrix is singular); a group without pairs predicts zero.
    """

    def __init__(self, d: int, groups: int, ridge: float, window: int) -> None:
        self.d, self.groups, self.ridge, self.window = d, groups, ridge, window
        self.blocks: list[torch.Tensor] = []     # each (groups, d+1, 2d+1)
        self.W: torch.Tensor | None = None       # (groups, d+1, d): rows A^T, then B

    def add(self, X: torch.Tensor, P: torch.Tensor, g: torch.Tensor) -> None:
        X1 = torch.cat([X.double(), X.new_ones((len(X), 1), dtype=torch.float64)], 1).cpu()
        XP = torch.cat([X1, P.double().cpu()], 1)
        g = g.cpu()
        block = torch.zeros((self.groups, self.d + 1, 2 * self.d + 1), dtype=torch.float64)
        for k in range(self.groups):
            rows = g == k
            if bool(rows.any()):
                block[k] = X1[rows].T @ XP[rows]
        if self.window == 0 and self.blocks:
            self.blocks[0] += block
        else:
            self.blocks = (self.blocks + [block])[-self.window:] if self.window else [block]
        self.fit()

    def fit(self) -> None:
        if not self.blocks:
            self.W = None
            return
        S = self.blocks[0].clone()
        for b in self.blocks[1:]:
            S += b
        d = self.d
        G, R = S[:, :, :d + 1], S[:, :, d + 1:]
        n = G[:, d, d]                                  # pairs per group
        ridge = (self.ridge * n).unsqueeze(1).expand(-1, d + 1).clone()
        ridge[:, d] = 0.0
        ridge[n == 0] = 1.0                             # no pairs: W = 0
        M = G + torch.diag_embed(ridge)
        L, info = torch.linalg.cholesky_ex(M)
        if bool((info == 0).all()):     # LAPACK's lstsq is not bitwise repeatable: Cholesky
            self.W = torch.cholesky_solve(R, L)
        else:                           # singular (ridge 0, too few pairs): least norm
            self.W = torch.linalg.lstsq(M, R).solution

    def predict(self, X: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(X)
        if self.W is None:
            return out
        W = self.W.to(X)
        if self.groups == 1:
            return torch.addmm(W[0, self.d], X, W[0, :self.d])
        g = g.to(X.device)
        for k in range(self.groups):
            rows = (g == k).nonzero().flatten()
            if len(rows):
                out.index_copy_(0, rows, torch.addmm(W[k, self.d], X[rows], W[k, :self.d]))
        return out

    def state(self) -> torch.Tensor:
        """The blocks as one (n_blocks, groups, d+1, 2d+1) tensor (checkpoint)."""
        if not self.blocks:
            return torch.zeros((0, self.groups, self.d + 1, 2 * self.d + 1),
                               dtype=torch.float64)
        return torch.stack(self.blocks)

    def load(self, blocks: np.ndarray) -> None:
        self.blocks = [torch.from_numpy(np.array(b)) for b in blocks]
        if self.window:
            self.blocks = self.blocks[-self.window:]
        self.fit()
