"""The built-in models and the digits metrics."""
import pytest
import torch

from ldd_fast.metrics import FD_SAMPLES, DigitsMetrics, bootstrap_mean, paired_bootstrap, psnr, rmse
from ldd_fast.zoo import available
from ldd_fast.zoo.builtin import load


@pytest.fixture(scope="module")
def metrics():
    return DigitsMetrics()


@pytest.mark.parametrize("name", ["digits", "digits_vp", "digits_flow"])
def test_builtin_model_loads_offline_and_denoises_as_recorded(name):
    """Our sampling-side Denoiser (adapter, time conversion) reproduces the training-time denoising losses."""
    if name not in available():
        pytest.skip(f"{name} weights not trained yet")
    from ldd_fast.zoo.data import load_digits_split

    den = load(name)
    assert den.sample_shape == (1, 8, 8) and den.fingerprint() == load(name).fingerprint()
    x0 = load_digits_split()["heldout_x"]
    ref = den.info["reference_loss"]
    levels = ref.get("sigma") or ref.get("k") or ref.get("t")
    losses = []
    with torch.no_grad():
        for level in levels:
            per_repeat = []
            for r in range(ref["repeats"]):
                n = torch.randn(x0.shape, generator=torch.Generator().manual_seed(ref["seed"] + r))
                if den.info["variant"] in ("edm", "flow"):  # sigma for EDM, t for a flow
                    t = torch.tensor(float(level), dtype=torch.float64)
                else:
                    t = torch.tensor((level + 1) / 1000, dtype=torch.float64)  # integer k is t = (k + 1) / 1000
                x = den.noise.alpha(t).float() * x0 + den.noise.sigma(t).float() * n
                per_repeat.append((den(x, t) - x0).pow(2).mean().item())
            losses.append(sum(per_repeat) / len(per_repeat))
    assert torch.allclose(torch.tensor(losses), torch.tensor(ref["x0_mse"]).float(), rtol=1e-3), (losses, ref)


def test_builtin_denoiser_matches_the_training_preconditioning():
    from ldd_fast.zoo.precond import edm_denoise

    den = load("digits")
    x = torch.randn(4, 1, 8, 8)
    for sigma in (0.1, 1.0, 10.0):
        with torch.no_grad():
            ours = den(x * (1 + sigma), sigma)
            theirs = edm_denoise(den.net, x * (1 + sigma), torch.tensor(sigma))
        assert torch.allclose(ours, theirs, atol=1e-5)


def test_frechet_distance_real_vs_real_small_noise_vs_real_large(metrics):
    g = torch.Generator().manual_seed(0)
    real = metrics.train[torch.randperm(len(metrics.train), generator=g)[:FD_SAMPLES]]
    noise = torch.randn(FD_SAMPLES, 1, 8, 8, generator=g).clamp(-1, 1)
    fd_real, fd_noise = metrics.fd(real)["fd"], metrics.fd(noise)["fd"]
    assert fd_real < 2.0 and fd_noise > 20 * fd_real, (fd_real, fd_noise)
    with pytest.raises(ValueError, match="300 samples"):
        metrics.fd(real[:10])
    cls = metrics.classes(real)
    assert cls["confident_rate"] > 0.85 and cls["balance_entropy_ratio"] > 0.95


def test_teacher_matching_metrics_and_bootstraps():
    x, y = torch.zeros(4, 1, 2, 2), torch.full((4, 1, 2, 2), 0.5)
    assert torch.allclose(rmse(x, y), torch.full((4,), 0.5, dtype=torch.float64))
    assert torch.allclose(psnr(x, y), torch.full((4,), 20 * torch.log10(torch.tensor(4.0)).item(), dtype=torch.float64))
    v = torch.arange(100, dtype=torch.float64)
    ci = bootstrap_mean(v)
    assert ci["lo"] < 49.5 < ci["hi"]
    a = torch.rand(200, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    b = a + 0.1
    pb = paired_bootstrap(a, b)
    assert pb["excludes_zero"] and pb["diff_hi"] < 0 and abs(pb["diff"] + 0.1) < 1e-12
    noisy = paired_bootstrap(a, a + 0.01 * torch.randn(200, generator=torch.Generator().manual_seed(2)))
    assert noisy["diff_lo"] < noisy["diff"] < noisy["diff_hi"]
