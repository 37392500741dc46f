"""scikit-learn's 8x8 digits as a tiny, offline image data set for the built-in models.

Choice of split (documented here and stored with every model): the 1797
digits of ``sklearn.datasets.load_digits()`` (bundled with scikit-learn, so
nothing is downloaded) are split once, stratified by label, with
``train_test_split(test_size=300, stratify=y, random_state=0)`` into 1497
training and 300 held-out images (29 to 31 per class, in proportion to the
class frequencies). The held-out images are never seen in training; they
serve as the reference for denoising losses and for the Frechet distance of
generated samples.

Pixels are integers 0..16; they are mapped linearly to [-1, 1]
(x / 8 - 1), the data range DDPM (Ho et al. 2020) and EDM (Karras et al.
2022, sigma_data = 0.5) assume. Images are [N, 1, 8, 8] float32 at native
resolution (no upsampling).
"""
from __future__ import annotations

import torch

from ..errors import InvalidArgumentType, MissingDependency, Unavailable

__all__ = ["load_digits_split", "SPLIT_DESCRIPTION", "to_pixels"]

NUM_HELDOUT = 300
SPLIT_SEED = 0
SPLIT_DESCRIPTION = {
    "dataset": "sklearn.datasets.load_digits (1797 images, 8x8, 10 classes)",
    "scaling": "x / 8 - 1: pixel values 0..16 -> [-1, 1]",
    "shape": [1, 8, 8],
    "split": "sklearn.model_selection.train_test_split(test_size=300, stratify=labels, random_state=0)",
    "num_train": 1797 - NUM_HELDOUT,
    "num_heldout": NUM_HELDOUT,
    "seed": SPLIT_SEED,
}


def load_digits_split() -> dict[str, torch.Tensor]:
    """The fixed stratified train / held-out split of the digits, scaled to [-1, 1].

    Returns a dict with ``train_x`` [1497, 1, 8, 8] float32, ``train_y`` [1497] int64,
    ``heldout_x`` [300, 1, 8, 8] float32 and ``heldout_y`` [300] int64; fresh tensors on each call.
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:  # scikit-learn is an optional ("demo") dependency
        raise MissingDependency("the digits data needs scikit-learn: pip install 'ldd-fast[demo]'") from exc

    digits = load_digits()
    images, labels = digits.images, digits.target
    if images.shape != (1797, 8, 8):
        raise Unavailable(f"unexpected digits data shape {images.shape}; expected (1797, 8, 8)")
    tr_img, ho_img, tr_lab, ho_lab = train_test_split(
        images, labels, test_size=NUM_HELDOUT, stratify=labels, random_state=SPLIT_SEED)

    def _x(a):
        return (torch.as_tensor(a, dtype=torch.float32) / 8.0 - 1.0).reshape(-1, 1, 8, 8).contiguous()

    def _y(a):
        return torch.as_tensor(a, dtype=torch.int64).contiguous()

    return {"train_x": _x(tr_img), "train_y": _y(tr_lab), "heldout_x": _x(ho_img), "heldout_y": _y(ho_lab)}


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """Inverse of the data scaling: [-1, 1] -> pixel values in [0, 16], clamped."""
    if not isinstance(x, torch.Tensor):
        raise InvalidArgumentType(f"to_pixels: expected a tensor, got {type(x).__name__}")
    return ((x + 1.0) * 8.0).clamp(0.0, 16.0)
