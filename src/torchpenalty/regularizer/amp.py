"""Mixed precision facts the regularizer needs: the factor GradScaler'd gradients carry, and the
resolution of low-precision formats (below it a decay rounds away)."""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_step

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
        # the scale tensor itself (private GradScaler._get_scale_async: the public get_scale()
        # syncs the device, so it is the fallback where torch lacks it); None before scale()
        scale_async = getattr(scale, "_get_scale_async", None)
        if scale_async is None:
            return torch.tensor(scale.get_scale())
        return scale_async()
    if isinstance(scale, Tensor):
        return scale
    return torch.tensor(check_step(scale, "scale"))
