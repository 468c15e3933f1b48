"""The compiled elementwise cases beyond one per operation join the `compile_matrix` marker:
each compiles its own kernels (about 10 s cold on 2 cores), so the default run keeps float32
with both strengths (``l1`` and ``l2``) per operation, and ``pytest -m compile_matrix`` runs
every dtype and strength."""

from __future__ import annotations

import pytest
import torch


@pytest.hookimpl(tryfirst=True)  # before the -m selection reads the markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("backend") != "compile" or "test_elementwise" not in item.nodeid:
            continue
        dtype, l1, l2 = params.get("dtype"), params.get("l1"), params.get("l2")
        other_case = dtype not in (None, torch.float32) or (l1, l2) not in (
            (None, None),
            (0.2, 0.5),
        )
        other_penalty = "penalty" in params  # the compiled temporaries: the eager case runs
        if other_case or other_penalty:
            item.add_marker(pytest.mark.compile_matrix)
