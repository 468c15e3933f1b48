"""Mixed precision facts the regularizer needs: the factor GradScaler'd gradients carry, and the
resolution of low-precision formats (below it a decay rounds away)."""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_step

#: the relative shrink per step below which a low-precision weight does not change (the
#: regularizer warns once when a decay is that small)
RESOLUTION = {torch.bfloat16: 2.0**-9, torch.float16: 2.0**-12}


def gradient_scale(scale: object) -> Tensor | None:
    """The factor the gradients currently carry, as a 0-dim tensor (None: unscaled)."""
    if scale is None:
        return None
    if isinstance(scale, torch.amp.GradScaler):
        if not scale.is_enabled():
            return None
        # the scale tensor itself (get_scale() would sync the device); None before scale()
        return scale._get_scale_async()
    if isinstance(scale, Tensor):
        return scale
    return torch.tensor(check_step(scale, "scale"))
