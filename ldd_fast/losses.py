"""Per-sample distances between a student's samples and the teacher's (what LD3 minimises).

Every distance maps (x, y) of shape [B, ...] to [B]. Scales are per element, so a loss
value does not depend on the sample size:
- "l2": mean squared difference (the squared L2 distance / D; the LD3 authors' "L2"),
- "l1": mean absolute difference,
- "pseudo_huber": sqrt(||x - y||^2 / D + c^2) - c with c = 0.00054, the normalised form
  of Song & Dhariwal 2023's c = 0.00054 sqrt(D) (quadratic near zero, linear beyond),
- "lpips": LPIPS-VGG (Zhang et al. 2018) through the `lpips` package, on images in [-1, 1]
  with 1 or 3 channels; only where the package imports and its weights are already on
  disk (nothing is downloaded),
- a callable f(x, y) -> [B].
"""
from __future__ import annotations

import os
from typing import Callable

import torch

from .errors import InvalidArgument, Unavailable

PSEUDO_HUBER_C = 0.00054
NAMES = ("l2", "l1", "pseudo_huber", "lpips")


def l2(x, y):
    return (x - y).flatten(1).pow(2).mean(1)


def l1(x, y):
    return (x - y).flatten(1).abs().mean(1)


def pseudo_huber(x, y, c: float = PSEUDO_HUBER_C):
    return torch.sqrt((x - y).flatten(1).pow(2).mean(1) + c * c) - c


class LPIPSDistance:
    """LPIPS-VGG without downloads: the backbone weights must be in torch's hub cache already."""

    def __init__(self, device=None):
        try:
            import lpips
        except Exception as e:  # noqa: BLE001 - the package or torchvision beside it fails to import
            raise Unavailable(
                "loss='lpips' needs the `lpips` package, which needs torchvision; it does not import here "
                f"({type(e).__name__}: {e}). Use loss='l2', 'l1', 'pseudo_huber' or a callable.") from None
        hub = os.path.join(torch.hub.get_dir(), "checkpoints")
        if not any(f.startswith("vgg16") for f in (os.listdir(hub) if os.path.isdir(hub) else [])):
            raise Unavailable(f"loss='lpips' needs the VGG16 weights in {hub} (ldd-fast never downloads); "
                              "copy vgg16-*.pth there or use another loss")
        self.model = lpips.LPIPS(net="vgg", verbose=False).eval()
        if device is not None:
            self.model.to(device)
        for p in self.model.parameters():
            p.requires_grad_(False)

    def __call__(self, x, y):
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise InvalidArgument(f"loss='lpips' needs images [B, 1 or 3, H, W], got {tuple(x.shape)}")
        if x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        return self.model(x.float(), y.float()).flatten()


def get_loss(loss) -> Callable:
    if callable(loss):
        return loss
    if loss == "l2":
        return l2
    if loss == "l1":
        return l1
    if loss == "pseudo_huber":
        return pseudo_huber
    if loss == "lpips":
        return LPIPSDistance()
    raise InvalidArgument(f"unknown loss {loss!r}; expected one of {NAMES} or a callable f(x, y) -> [B]")
