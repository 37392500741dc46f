"""Sample-quality metrics: teacher matching (RMSE, PSNR), the digits Frechet distance, bootstrap intervals.

The Frechet distance here is NOT FID: FID uses Inception-v3 features of 299x299 natural
images, meaningless for 8x8 digits. It is the same statistic (Heusel et al. 2017) in the
64-d penultimate features of the project's own digits classifier (ldd_fast.zoo.classifier,
trained on the train split only), which is what FID is for ImageNet-like data: a distance
between the feature distributions of generated and real samples. It is computed at equal
sample counts against the same held-out digits (300), because the statistic is biased by
the sample count.
"""
from __future__ import annotations

import math

import torch

from .errors import InvalidArgument

DATA_RANGE = 2.0  # samples live in [-1, 1]
FD_SAMPLES = 300  # the size of the held-out split: every FD uses this many generated samples


def rmse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample root-mean-square difference [B]."""
    return (x.double() - y.double()).flatten(1).pow(2).mean(1).sqrt()


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = DATA_RANGE) -> torch.Tensor:
    """Per-sample PSNR in dB for data in a range of width `data_range` [B]."""
    return 20 * torch.log10(data_range / rmse(x, y).clamp_min(1e-12))


def bootstrap_mean(values: torch.Tensor, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean and percentile bootstrap interval of the mean."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if v.numel() < 2:
        raise InvalidArgument("bootstrap needs at least 2 values")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, v.numel(), (n_boot, v.numel()), generator=g)
    means = v[idx].mean(1)
    lo, hi = torch.quantile(means, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return {"mean": v.mean().item(), "lo": lo.item(), "hi": hi.item()}


def paired_bootstrap(a: torch.Tensor, b: torch.Tensor, *, n_boot: int = 2000, seed: int = 0,
                     level: float = 0.95) -> dict:
    """Paired comparison of per-seed values a and b (same seeds): mean(a) - mean(b) and mean(a) / mean(b),
    each with a percentile bootstrap interval over seeds (resampling pairs)."""
    a, b = torch.as_tensor(a, dtype=torch.float64).flatten(), torch.as_tensor(b, dtype=torch.float64).flatten()
    if a.shape != b.shape or a.numel() < 2:
        raise InvalidArgument(f"paired bootstrap needs two equal-length vectors of >= 2 values, got {a.shape}, "
                              f"{b.shape}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, a.numel(), (n_boot, a.numel()), generator=g)
    ma, mb = a[idx].mean(1), b[idx].mean(1)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    d_lo, d_hi = torch.quantile(ma - mb, q)
    r_lo, r_hi = torch.quantile(ma / mb, q)
    return {"diff": (a.mean() - b.mean()).item(), "diff_lo": d_lo.item(), "diff_hi": d_hi.item(),
            "ratio": (a.mean() / b.mean()).item(), "ratio_lo": r_lo.item(), "ratio_hi": r_hi.item(),
            "excludes_zero": bool(d_hi < 0 or d_lo > 0)}


class DigitsMetrics:
    """Frechet distance and classifier statistics of 8x8 digits against the held-out split."""

    def __init__(self, device="cpu"):
        from .zoo.classifier import feature_stats, frechet_distance, load_classifier
        from .zoo.data import load_digits_split

        self._fd, self._stats = frechet_distance, feature_stats
        self.classifier, self.meta = load_classifier(device=device)
        self.device = device
        split = load_digits_split()
        self.heldout = split["heldout_x"]
        self.train = split["train_x"]
        self.heldout_features = self.features(self.heldout)

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.classifier.features(c.to(self.device, torch.float32)).double().cpu()
                          for c in x.split(512)])

    def _fd_of(self, fx: torch.Tensor) -> float:
        return self._fd(*self._stats(fx), *self._stats(self.heldout_features))

    def _check(self, x):
        if x.shape[0] != FD_SAMPLES:
            raise InvalidArgument(f"every FD uses {FD_SAMPLES} samples (equal to the held-out set), got {x.shape[0]}")

    def fd(self, x: torch.Tensor, *, n_boot: int = 0, seed: int = 0, level: float = 0.95) -> dict:
        """FD of x (exactly FD_SAMPLES samples) against the held-out digits, with a percentile
        bootstrap interval over the generated samples (n_boot > 0). Resampling with replacement
        repeats samples, which biases the resampled FDs upwards: the interval says how much the
        estimate moves with the seeds, and is comparable between cells, not centred on the value."""
        self._check(x)
        fx = self.features(x)
        out = {"fd": self._fd_of(fx)}
        if n_boot:
            g = torch.Generator().manual_seed(seed)
            v = torch.tensor([self._fd_of(fx[torch.randint(0, len(fx), (len(fx),), generator=g)])
                              for _ in range(n_boot)], dtype=torch.float64)
            lo, hi = torch.quantile(v, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
            out.update(lo=lo.item(), hi=hi.item())
        return out

    def fd_paired(self, xa: torch.Tensor, xb: torch.Tensor, *, n_boot: int = 200, seed: int = 0,
                  level: float = 0.95) -> dict:
        """FD(xa) - FD(xb) for two sample sets from the same seeds, with a paired bootstrap interval
        (the same resampled seeds for both, so the resampling bias cancels in the difference)."""
        self._check(xa)
        self._check(xb)
        fa, fb = self.features(xa), self.features(xb)
        g = torch.Generator().manual_seed(seed)
        diffs = []
        for _ in range(n_boot):
            i = torch.randint(0, len(fa), (len(fa),), generator=g)
            diffs.append(self._fd_of(fa[i]) - self._fd_of(fb[i]))
        v = torch.tensor(diffs, dtype=torch.float64)
        lo, hi = torch.quantile(v, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
        return {"diff": self._fd_of(fa) - self._fd_of(fb), "lo": lo.item(), "hi": hi.item()}

    @torch.no_grad()
    def classes(self, x: torch.Tensor, *, confident: float = 0.9) -> dict:
        """Confident-class rate (max softmax >= confident) and class balance of x."""
        logits = torch.cat([self.classifier(c.to(self.device, torch.float32)).cpu() for c in x.split(512)])
        p = torch.softmax(logits.double(), 1)
        counts = torch.bincount(p.argmax(1), minlength=10).double()
        freq = counts / counts.sum()
        entropy = -(freq * torch.log(freq.clamp_min(1e-12))).sum().item()
        return {"confident_rate": (p.max(1).values >= confident).double().mean().item(),
                "class_freq": freq.tolist(), "balance_entropy_ratio": entropy / math.log(10)}
