"""Built-in pretrained models ("the zoo"): small class-conditional U-Nets on scikit-learn's 8x8 digits.

Three networks ship, all :class:`~ldd_fast.zoo.unet.TinyUNet` (EMA weights):

* ``"digits"``: EDM preconditioning (Karras et al. 2022), sigma in [0.002, 80];
  raw network input ``F(c_in x, ln(sigma)/4, cond)``.
* ``"digits_vp"``: DDPM 1000-step linear-beta eps-prediction (Ho et al. 2020);
  network input ``F(x_k, k, cond)`` with the float index ``k = 1000 t - 1``.
* ``"digits_flow"``: rectified flow (SD3's objective): velocity ``v = F(x_t, 1000 t, cond)``
  at ``x_t = (1 - t) x0 + t eps``, t in [1e-3, 1].

``cond`` holds labels 0..9, or None / 10 for the null class (classifier-free
guidance). :func:`load_network` returns the raw network and its JSON
description (noise parameters, training record, reference denoising losses);
wrapping it into a sampler-side denoiser is the core package's job. Nothing
is downloaded: weights live in ``ldd_fast/zoo/weights``.

This module imports only zoo modules, so it stays importable while the core
package changes.
"""
from __future__ import annotations

import json
import os

import torch

from ..errors import InvalidArgument, InvalidArgumentType, MissingDependency, device_of, path_like
from .unet import TinyUNet

__all__ = ["TinyUNet", "load", "load_network", "available", "weights_dir", "weight_files"]

_NAMES = {"digits": "digits_edm", "digits_vp": "digits_vp", "digits_flow": "digits_flow"}
_VARIANTS = {"digits": "edm", "digits_vp": "vp", "digits_flow": "flow"}


def weights_dir() -> str:
    """The directory the shipped weights are read from."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")


def available() -> list[str]:
    """Names accepted by :func:`load_network` whose weights are present."""
    return [n for n, stem in _NAMES.items() if os.path.isfile(os.path.join(weights_dir(), stem + ".safetensors"))]


def weight_files(name: str, folder=None) -> tuple[str, str]:
    """(weights .safetensors, config .json) of a built-in network, in `folder` (default: weights_dir())."""
    if not isinstance(name, str) or name not in _NAMES:
        error = InvalidArgument if isinstance(name, str) else InvalidArgumentType
        raise error(f"unknown zoo model {name!r:.40}; available names: {sorted(_NAMES)}")
    folder = weights_dir() if folder is None else path_like(folder, "folder")
    stem = _NAMES[name]
    return os.path.join(folder, stem + ".safetensors"), os.path.join(folder, stem + ".json")


def load_network(name: str, device="cpu", *, folder=None) -> tuple[TinyUNet, dict]:
    """Load a built-in network with its EMA weights: returns ``(net in eval mode, config dict)``.

    ``name`` is ``"digits"`` (EDM), ``"digits_vp"`` (DDPM eps) or ``"digits_flow"`` (rectified flow). The config dict is the JSON
    written by ``python -m ldd_fast.zoo.train``; ``config["network"]`` rebuilds the net with
    ``TinyUNet(**config["network"])``. ``folder``: read the two files from there instead of the package (a copy,
    as a Triton repository keeps it).
    """
    wpath, jpath = weight_files(name, folder)
    device = device_of(device) or torch.device("cpu")
    if not (os.path.isfile(wpath) and os.path.isfile(jpath)):
        variant = _VARIANTS[name]
        raise FileNotFoundError(f"weights for zoo model {name!r} are missing ({wpath}); train them with "
                                f"`python -m ldd_fast.zoo.train digits --variant {variant}`")
    try:
        from safetensors.torch import load_file
    except ImportError as exc:
        raise MissingDependency("loading zoo weights needs safetensors: pip install safetensors") from exc
    with open(jpath) as f:
        config = json.load(f)
    net = TinyUNet(**config["network"])
    net.load_state_dict(load_file(wpath, device="cpu"), strict=True)
    return net.to(device).eval().requires_grad_(False), config


from .builtin import load  # noqa: E402 - needs load_network above
