"""A small CNN digit classifier whose penultimate features define a Frechet distance on 8x8 digits.

This is the digits analogue of FID (Heusel et al. 2017, "GANs Trained by a
Two Time-Scale Update Rule Converge to a Local Nash Equilibrium"): generated
and real images are embedded by a fixed classifier, each set is summarised by
the mean and covariance of its features, and the two Gaussians are compared
with the Frechet (2-Wasserstein) distance

    FD = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1^{1/2} S_2 S_1^{1/2})^{1/2}).

Inception-v3 is meaningless on 8x8 digits, so the embedding is a CNN trained
here on the training split (see :mod:`ldd_fast.zoo.data`). Run
``python -m ldd_fast.zoo.classifier`` to train it; it saves the weights, a
JSON description with the held-out accuracy, and the feature statistics of
the real held-out and training digits.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidArgument
from ..exit_status import run_command
from ._io import save_json, save_safetensors, sha256_file
from .data import SPLIT_DESCRIPTION, load_digits_split

__all__ = ["DigitClassifier", "feature_stats", "frechet_distance", "load_classifier", "load_feature_stats",
           "train_classifier", "main"]

STEM = "digits_classifier"


class DigitClassifier(nn.Module):
    """Two conv stages (8x8 -> 4x4 -> 2x2) and an MLP head; ``features`` is the penultimate layer.

    Args:
        channels: width of the first conv stage (the second has twice as many).
        feature_dim: dimension of the penultimate features used for the Frechet distance.
        num_classes: number of digit classes.
        dropout: dropout on the features during training.
    """

    def __init__(self, channels: int = 32, feature_dim: int = 64, num_classes: int = 10, dropout: float = 0.3):
        super().__init__()
        if channels <= 0 or feature_dim <= 0 or num_classes < 2 or not 0 <= dropout < 1:
            raise InvalidArgument("DigitClassifier: need channels > 0, feature_dim > 0, num_classes >= 2, "
                                  "dropout in [0, 1)")
        self.config = dict(channels=int(channels), feature_dim=int(feature_dim), num_classes=int(num_classes),
                           dropout=float(dropout))
        c = channels
        self.body = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(),
            nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.fc = nn.Linear(2 * c * 2 * 2, feature_dim)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    def _check(self, x):
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != (1, 8, 8):
            raise InvalidArgument(f"DigitClassifier: expected images of shape [B, 1, 8, 8] scaled to [-1, 1], got "
                                  f"{list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features [B, feature_dim] (after the ReLU) of images in [-1, 1]."""
        self._check(x)
        return F.relu(self.fc(self.body(x.float()).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits [B, num_classes]."""
        return self.head(self.dropout(self.features(x)))


def feature_stats(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased covariance (float64) of [N, D] features, as FID's reference code computes them."""
    if not isinstance(features, torch.Tensor) or features.dim() != 2 or features.shape[0] < 2:
        raise InvalidArgument("feature_stats: need a [N, D] tensor with N >= 2")
    f = features.detach().double()
    mu = f.mean(0)
    d = f - mu
    return mu, d.T @ d / (f.shape[0] - 1)


def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh((a + a.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(mu1: torch.Tensor, cov1: torch.Tensor, mu2: torch.Tensor, cov2: torch.Tensor) -> float:
    """Frechet distance between N(mu1, cov1) and N(mu2, cov2), in float64.

    Uses tr((S1 S2)^{1/2}) = tr((S1^{1/2} S2 S1^{1/2})^{1/2}); the inner matrix is symmetric PSD, so
    symmetric eigendecompositions suffice and no complex round-off appears (unlike scipy's sqrtm).
    """
    mu1, mu2, cov1, cov2 = (torch.as_tensor(t, dtype=torch.float64) for t in (mu1, mu2, cov1, cov2))
    d = mu1.shape[-1] if mu1.dim() == 1 else -1
    if mu1.shape != (d,) or mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise InvalidArgument(f"frechet_distance: need means [D] and covariances [D, D] of one D; got "
                              f"{list(mu1.shape)}, {list(cov1.shape)}, {list(mu2.shape)}, {list(cov2.shape)}")
    s1 = _sqrtm_psd(cov1)
    inner = s1 @ cov2 @ s1
    tr_cross = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp_min(0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + cov1.trace() + cov2.trace() - 2 * tr_cross)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    # Shifts of up to one pixel and mild pixel noise: generated digits are slightly off-centre and
    # noisy, and the features should not over-react to either. No flips or rotations (6 vs 9).
    b = x.shape[0]
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)  # pad with the background value
    dx = torch.randint(0, 3, (b,), generator=gen)
    dy = torch.randint(0, 3, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(8)[None, :])[:, None, :, None].expand(b, 1, 8, 10)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(8)[None, :])[:, None, None, :].expand(b, 1, 8, 8)
    out = out.gather(3, cols)
    noise_std = 0.1 * torch.rand(b, 1, 1, 1, generator=gen)
    return out + noise_std * torch.randn(out.shape, generator=gen)


@torch.no_grad()
def _accuracy(model, x, y) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).double().mean())


def train_classifier(split: dict, *, epochs: int = 60, batch_size: int = 64, lr: float = 2e-3,
                     seed: int = 0, config: dict | None = None, log=print) -> DigitClassifier:
    """Train on ``split['train_x'/'train_y']`` with AdamW and a cosine lr decay; seeded and deterministic."""
    if epochs <= 0 or batch_size <= 0 or lr <= 0:
        raise InvalidArgument("train_classifier: epochs, batch_size and lr must be positive")
    torch.manual_seed(seed)  # init and dropout
    model = DigitClassifier(**(config or {}))
    x, y = split["train_x"], split["train_y"]
    gen = torch.Generator().manual_seed(seed + 1)  # data order and augmentation
    steps_per_epoch = -(-x.shape[0] // batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                pct_start=0.1, anneal_strategy="cos")
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(x.shape[0], generator=gen)
        total = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            loss = F.cross_entropy(model(_augment(x[idx], gen)), y[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * idx.numel()
        if log and ((epoch + 1) % 10 == 0 or epoch == epochs - 1):
            log(f"epoch {epoch + 1}/{epochs} loss {total / x.shape[0]:.4f} "
                f"held-out acc {_accuracy(model, split['heldout_x'], split['heldout_y']):.4f}")
    return model.eval()


def _weights_dir(out_dir=None) -> str:
    return out_dir or os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")


def load_classifier(out_dir: str | None = None, device="cpu") -> tuple[DigitClassifier, dict]:
    """The trained classifier (eval mode) and its JSON description, from the package's weights directory."""
    import json

    from safetensors.torch import load_file

    d = _weights_dir(out_dir)
    wpath, jpath = os.path.join(d, STEM + ".safetensors"), os.path.join(d, STEM + ".json")
    if not (os.path.isfile(wpath) and os.path.isfile(jpath)):
        raise FileNotFoundError(f"no digits classifier in {d}; train it with `python -m ldd_fast.zoo.classifier`")
    with open(jpath) as f:
        meta = json.load(f)
    model = DigitClassifier(**meta["config"])
    model.load_state_dict(load_file(wpath, device="cpu"))
    return model.to(device).eval().requires_grad_(False), meta


def load_feature_stats(out_dir: str | None = None) -> dict[str, torch.Tensor]:
    """Feature mean / covariance (float64) of the real digits: keys heldout_mean, heldout_cov, train_mean, train_cov."""
    from safetensors.torch import load_file

    path = os.path.join(_weights_dir(out_dir), STEM + "_stats.safetensors")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no classifier feature statistics at {path}; run `python -m ldd_fast.zoo.classifier`")
    return load_file(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ldd_fast.zoo.classifier",
        description="Train the 8x8 digits classifier whose features define the Frechet distance (the digits FID).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--epochs", type=int, default=60, help="training epochs over the 1497 training digits")
    p.add_argument("--batch", type=int, default=64, help="batch size")
    p.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (one-cycle schedule)")
    p.add_argument("--seed", type=int, default=0, help="seed of init, data order, augmentation and dropout")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out-dir", default=_weights_dir(), help="where the weights, JSON and feature stats go")
    args = p.parse_args(argv)
    return run_command(p.prog, lambda: _train(args))


def _train(args) -> int:
    if args.threads <= 0:
        raise InvalidArgument("--threads must be positive")
    torch.set_num_threads(args.threads)

    split = load_digits_split()
    t0 = time.perf_counter()
    model = train_classifier(split, epochs=args.epochs, batch_size=args.batch, lr=args.lr, seed=args.seed,
                             log=lambda s: print(s, flush=True))
    seconds = time.perf_counter() - t0
    acc = _accuracy(model, split["heldout_x"], split["heldout_y"])
    train_acc = _accuracy(model, split["train_x"], split["train_y"])
    with torch.no_grad():
        ho_mu, ho_cov = feature_stats(model.features(split["heldout_x"]))
        tr_mu, tr_cov = feature_stats(model.features(split["train_x"]))
    fd_ref = frechet_distance(tr_mu, tr_cov, ho_mu, ho_cov)

    wpath = os.path.join(args.out_dir, STEM + ".safetensors")
    spath = os.path.join(args.out_dir, STEM + "_stats.safetensors")
    save_safetensors(model.state_dict(), wpath)
    save_safetensors({"heldout_mean": ho_mu, "heldout_cov": ho_cov, "train_mean": tr_mu, "train_cov": tr_cov},
                     spath)
    meta = {
        "name": "digits_classifier",
        "network_class": "ldd_fast.zoo.classifier.DigitClassifier",
        "config": model.config,
        "weights": os.path.basename(wpath), "weights_sha256": sha256_file(wpath),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "input": "[B, 1, 8, 8] in [-1, 1] (ldd_fast.zoo.data scaling)",
        "features": f"DigitClassifier.features: penultimate layer, {model.config['feature_dim']}-dim, after ReLU",
        "heldout_accuracy": acc, "train_accuracy": train_acc,
        "stats": os.path.basename(spath),
        "stats_description": "float64 mean [D] and unbiased covariance [D, D] of the features of all 300 held-out "
                             "(heldout_*) and all 1497 training (train_*) real digits",
        "fd_train_vs_heldout": fd_ref,
        "data": SPLIT_DESCRIPTION,
        "training": {"epochs": args.epochs, "batch_size": args.batch, "lr": args.lr, "seed": args.seed,
                     "optimizer": "AdamW (weight_decay 1e-4), one-cycle cosine lr, label smoothing 0.05",
                     "augmentation": "random shifts of up to 1 pixel (background padding), Gaussian pixel noise "
                                     "with std ~ U(0, 0.1)",
                     "seconds": round(seconds, 1), "threads": args.threads, "torch": torch.__version__},
    }
    save_json(meta, os.path.join(args.out_dir, STEM + ".json"))
    print(f"held-out accuracy {acc:.4f} (train {train_acc:.4f}); FD(train, held-out) = {fd_ref:.3f}; "
          f"{seconds:.0f} s; wrote {wpath}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
