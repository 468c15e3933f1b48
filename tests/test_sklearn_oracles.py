"""Proximal gradient through torch.optim reaches scikit-learn's Lasso, ElasticNet and Ridge.

On standardized diabetes data, ISTA agrees with scikit-learn to ~1e-15 (L1, elastic net) after
2,000 steps and ~1e-12 (ridge) after 5,000; the tests run 3,000 / 6,000 and assert 1e-8.

Objectives (data term ``1/(2n)||y - Xw||^2`` on our side, ``0.5 * mean((y - Xw)**2)``):

- ``Lasso(alpha)``: ``1/(2n)||y - Xw||^2 + alpha ||w||_1``  ->  ``L1(alpha)``
- ``ElasticNet(alpha, r)``: ``... + alpha r ||w||_1 + alpha (1-r)/2 ||w||^2``
  ->  ``ElasticNet(alpha r, alpha (1-r))``
- ``Ridge(alpha)``: ``||y - Xw||^2 + alpha ||w||^2`` (no 1/(2n)); divided by 2n: ``L2(alpha/n)``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_diabetes
from sklearn.linear_model import ElasticNet as SkElasticNet
from sklearn.linear_model import Lasso, Ridge
from torch import nn

from torchpenalty import L1, L2, ElasticNet, Regularizer


@pytest.fixture(scope="module")
def diabetes():
    X, y = load_diabetes(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    y = (y - y.mean()) / y.std()
    return X, y


def proximal_gradient(X, y, penalty, steps):
    """Full-batch ISTA: SGD at lr = 1/L on the data term, then the prox via the attached hook."""
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    lipschitz = torch.linalg.eigvalsh(Xt.T @ Xt / len(X)).max().item()
    model = nn.Linear(X.shape[1], 1, bias=False).double()
    nn.init.zeros_(model.weight)
    opt = torch.optim.SGD(model.parameters(), lr=1.0 / lipschitz)
    Regularizer(model, penalty).attach(opt, mode="proximal")
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * ((yt - model(Xt).squeeze(1)) ** 2).mean()).backward()
        opt.step()
    return model.weight.detach().squeeze(0).numpy()


def test_lasso(diabetes):
    X, y = diabetes
    alpha = 0.02
    ref = Lasso(alpha=alpha, fit_intercept=False, tol=1e-14, max_iter=100_000).fit(X, y).coef_
    ours = proximal_gradient(X, y, L1(alpha), steps=3_000)
    np.testing.assert_allclose(ours, ref, atol=1e-8)  # the issue asks 1e-4
    assert set(np.flatnonzero(ours == 0)) == set(np.flatnonzero(ref == 0)) != set()


def test_elastic_net(diabetes):
    X, y = diabetes
    alpha, ratio = 0.03, 0.6
    sk = SkElasticNet(alpha=alpha, l1_ratio=ratio, fit_intercept=False, tol=1e-14, max_iter=100_000)
    ref = sk.fit(X, y).coef_
    ours = proximal_gradient(X, y, ElasticNet(alpha * ratio, alpha * (1 - ratio)), steps=3_000)
    np.testing.assert_allclose(ours, ref, atol=1e-8)  # the issue asks 1e-4
    assert set(np.flatnonzero(ours == 0)) == set(np.flatnonzero(ref == 0))


def test_ridge(diabetes):
    X, y = diabetes
    alpha = 5.0
    ref = Ridge(alpha=alpha, fit_intercept=False, solver="cholesky").fit(X, y).coef_
    ours = proximal_gradient(X, y, L2(alpha / len(X)), steps=6_000)
    np.testing.assert_allclose(ours, ref, atol=1e-8)  # the issue asks 1e-4
