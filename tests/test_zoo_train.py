"""Fast tests of the zoo: U-Net shapes, EDM / DDPM preconditioning, training, checkpoint-resume, classifier FD."""
import json
import math
import os

import pytest
import torch

from ldd_fast import zoo
from ldd_fast.zoo import precond
from ldd_fast.zoo.classifier import DigitClassifier, feature_stats, frechet_distance
from ldd_fast.zoo.data import load_digits_split
from ldd_fast.zoo.train import Trainer, build_parser, main, reference_losses
from ldd_fast.zoo.unet import TinyUNet

TINY = dict(model_channels=8, channel_mult=[1, 2], num_res_blocks=1, attn_resolutions=[4], dropout=0.1,
            head_channels=8)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def split():
    return load_digits_split()


def _nonzero_net(**kw):
    # The output conv is zero-initialised; perturb everything so outputs depend on the inputs.
    torch.manual_seed(0)
    net = TinyUNet(**{**TINY, **kw}).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net


# -- network -------------------------------------------------------------------------------------

def test_unet_shapes_and_conditioning():
    net = _nonzero_net()
    x = torch.randn(5, 1, 8, 8)
    t = torch.linspace(-1, 1, 5)
    labels = torch.tensor([0, 3, 9, 10, 2])
    assert net(x, t).shape == (5, 1, 8, 8)
    assert net(x, t, labels).shape == (5, 1, 8, 8)
    # 0-dim t broadcasts over the batch, python floats are accepted.
    torch.testing.assert_close(net(x, torch.tensor(0.3)), net(x, torch.full((5,), 0.3)))
    torch.testing.assert_close(net(x, 0.3), net(x, torch.full((5,), 0.3)))
    # None means the null class 10; labels change the output.
    torch.testing.assert_close(net(x, t, None), net(x, t, torch.full((5,), 10)))
    assert not torch.allclose(net(x, t, torch.zeros(5, dtype=torch.long)), net(x, t, None))
    assert net(x, t, labels.int()).shape == (5, 1, 8, 8)  # any integer dtype


def test_unet_rejects_bad_inputs():
    net = TinyUNet(**TINY)
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match="shape"):
        net(torch.randn(2, 1, 16, 16), torch.zeros(2))
    with pytest.raises(ValueError, match="t must be"):
        net(x, torch.zeros(3))
    with pytest.raises(ValueError, match="integer"):
        net(x, torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="cond"):
        net(x, torch.zeros(2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError):
        TinyUNet(img_resolution=6, channel_mult=[1, 2, 2])
    with pytest.raises(ValueError):
        TinyUNet(embedding_type="learned")


def test_unet_config_rebuilds_and_size():
    net = _nonzero_net(embedding_type="fourier")
    clone = TinyUNet(**net.config).eval()
    clone.load_state_dict(net.state_dict())
    x, t = torch.randn(3, 1, 8, 8), torch.randn(3)
    torch.testing.assert_close(clone(x, t, torch.tensor([1, 2, 3])), net(x, t, torch.tensor([1, 2, 3])))
    shipped = TinyUNet(**zoo.train.default_network_config("edm"))
    n = sum(p.numel() for p in shipped.parameters())
    assert n <= 1_500_000, n  # <= 6 MB of float32 weights


# -- preconditioning -----------------------------------------------------------------------------

def test_edm_coefficients_match_table_1():
    sd = 0.5
    for s in (0.002, 0.5, 1.0, 80.0):
        c_skip, c_out, c_in, c_noise = precond.edm_coefficients(torch.tensor(s, dtype=torch.float64), sd)
        assert math.isclose(c_skip, sd**2 / (s**2 + sd**2), rel_tol=1e-12)
        assert math.isclose(c_out, s * sd / math.sqrt(s**2 + sd**2), rel_tol=1e-12)
        assert math.isclose(c_in, 1 / math.sqrt(s**2 + sd**2), rel_tol=1e-12)
        assert math.isclose(c_noise, math.log(s) / 4, rel_tol=1e-12)
        # lambda(sigma) = 1 / c_out^2: the effective target of F has unit weight.
        assert math.isclose(precond.edm_loss_weight(torch.tensor(s, dtype=torch.float64), sd) * c_out**2, 1.0,
                            rel_tol=1e-12)
        # c_skip^2 sigma_data^2 ... : D's skip keeps unit variance of the effective training target.
        assert math.isclose(c_skip**2 * (s**2 + sd**2) - 2 * c_skip * sd**2 + sd**2, c_out**2, rel_tol=1e-9)


def test_edm_denoiser_is_identity_at_small_sigma():
    net = _nonzero_net()
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    d = precond.edm_denoise(net.double(), x, 1e-6, None)
    torch.testing.assert_close(d, x, atol=1e-5, rtol=0)
    # At large sigma D tends to c_out F, not to x.
    assert (precond.edm_denoise(net, x, 80.0) - x).abs().max() > 0.1
    with pytest.raises(ValueError):
        precond.edm_denoise(net, x, -1.0)


def test_vp_denoise_inverts_forward_process_with_oracle_eps():
    ac = precond.ddpm_alphas_cumprod()
    assert ac.dtype == torch.float64 and ac.shape == (1000,)
    assert math.isclose(float(ac[0]), 1 - 1e-4) and math.isclose(float(ac[-1]), 4.0358e-05, rel_tol=1e-3)
    x0 = torch.rand(3, 1, 8, 8, dtype=torch.float64) * 2 - 1
    eps = torch.randn_like(x0)
    k = torch.tensor([0, 500, 999])
    a = ac[k][:, None, None, None]
    xk = a.sqrt() * x0 + (1 - a).sqrt() * eps

    def oracle(x, t, cond):
        assert t.dtype == x.dtype and torch.equal(t, k.to(x.dtype))  # the float index k is the noise input
        return eps

    torch.testing.assert_close(precond.vp_denoise(oracle, xk, k, ac), x0)
    assert torch.allclose(precond.vp_sigma(k, ac), ((1 - ac[k]) / ac[k]).sqrt())


# -- data ----------------------------------------------------------------------------------------

def test_digits_split(split):
    assert split["train_x"].shape == (1497, 1, 8, 8) and split["heldout_x"].shape == (300, 1, 8, 8)
    assert split["train_x"].dtype == torch.float32 and split["train_y"].dtype == torch.int64
    for key in ("train_x", "heldout_x"):
        assert split[key].min() == -1 and split[key].max() == 1
    # Stratified: each class keeps its share of the 1797 digits (178..183 per class -> 29..31 held out).
    assert all(29 <= c <= 31 for c in torch.bincount(split["heldout_y"], minlength=10).tolist())
    again = load_digits_split()
    assert all(torch.equal(split[k], again[k]) for k in split)


# -- training ------------------------------------------------------------------------------------

def _trainer(variant, split, **kw):
    kw = {"net_config": {**TINY, "embedding_type": "positional"}, "batch_size": 32, "lr": 2e-3,
          "warmup_steps": 2, "seed": 3, **kw}
    return Trainer(variant, split["train_x"][:256], split["train_y"][:256], **kw)


@pytest.mark.parametrize("variant", ["edm", "vp", "flow"])
def test_training_lowers_loss(variant, split):
    tr = _trainer(variant, split)
    probe = split["train_x"][:64]
    levels = {"edm": [0.5, 2.0], "vp": [100, 300], "flow": [0.3, 0.7]}[variant]
    before = reference_losses(tr.net, variant, probe, levels, repeats=1)
    losses = [tr.train_step() for _ in range(30)]
    after = reference_losses(tr.net, variant, probe, levels, repeats=1)
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-10:]) < sum(losses[:10])
    assert sum(after) < sum(before), (before, after)
    # The EMA moved away from the initial weights.
    assert any(not torch.equal(a, b) for a, b in zip(tr.ema.parameters(), TinyUNet(**tr.net_config).parameters()))


@pytest.mark.parametrize("variant", ["edm", "vp", "flow"])
def test_checkpoint_resume_is_bit_identical(variant, split, tmp_path):
    straight = _trainer(variant, split)
    for _ in range(8):  # 256 / 32 = 8 steps per epoch: the resumed half crosses an epoch boundary
        straight.train_step()
    for _ in range(2):
        straight.train_step()

    first = _trainer(variant, split)
    for _ in range(6):
        first.train_step()
    ckpt = str(tmp_path / "run.ckpt")
    first.save_checkpoint(ckpt)
    torch.manual_seed(12345)  # disturb the global RNG: the checkpoint must restore it
    resumed = _trainer(variant, split)
    resumed.load_checkpoint(ckpt)
    assert resumed.step == 6
    for _ in range(4):
        resumed.train_step()

    for a, b in ((straight.net, resumed.net), (straight.ema, resumed.ema)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    oa, ob = straight.opt.state_dict()["state"], resumed.opt.state_dict()["state"]
    assert all(torch.equal(oa[i]["exp_avg_sq"], ob[i]["exp_avg_sq"]) for i in oa)

    with pytest.raises(ValueError, match="does not match"):
        _trainer(variant, split, lr=1e-3).load_checkpoint(ckpt)
    with pytest.raises(FileNotFoundError):
        resumed.load_checkpoint(str(tmp_path / "missing.ckpt"))


def test_cli_end_to_end_and_load_network(tmp_path, monkeypatch):
    assert "--resume" in build_parser().format_help()
    out = tmp_path / "weights"
    args = ["digits", "--variant", "vp", "--steps", "3", "--width", "8", "--batch", "16", "--out-dir", str(out),
            "--ckpt", str(tmp_path / "vp.ckpt"), "--ckpt-every", "2"]
    assert main(args) == 0
    meta = json.loads((out / "digits_vp.json").read_text())
    assert meta["variant"] == "vp" and meta["training"]["steps"] == 3
    assert meta["noise"]["num_train_timesteps"] == 1000 and len(meta["reference_loss"]["x0_mse"]) == 5
    assert main(args[:4] + ["4"] + args[5:] + ["--resume"]) == 0
    assert json.loads((out / "digits_vp.json").read_text())["training"]["steps"] == 4

    monkeypatch.setattr(zoo, "weights_dir", lambda: str(out))
    net, config = zoo.load_network("digits_vp")
    assert config["network"]["model_channels"] == 8 and not net.training
    assert net(torch.zeros(2, 1, 8, 8), torch.tensor(10.0)).shape == (2, 1, 8, 8)
    with pytest.raises(FileNotFoundError, match="--variant edm"):
        zoo.load_network("digits")
    with pytest.raises(ValueError, match="unknown zoo model"):
        zoo.load_network("cifar10")


@pytest.mark.parametrize("name", ["digits", "digits_vp", "digits_flow"])
def test_shipped_weights_reproduce_reference_loss(name, split):
    path = os.path.join(zoo.weights_dir(), ("digits_edm" if name == "digits" else name) + ".safetensors")
    if not os.path.isfile(path):
        pytest.skip(f"{name} weights not trained yet")
    assert os.path.getsize(path) <= 6.5e6
    net, config = zoo.load_network(name)
    ref = config["reference_loss"]
    levels = {"edm": ref.get("sigma"), "vp": ref.get("k"), "flow": ref.get("t")}[config["variant"]]
    # Each level is computed independently, so the lowest and highest suffice (and keep this fast).
    pick = [0, len(levels) - 1]
    got = reference_losses(net, config["variant"], split["heldout_x"], [levels[i] for i in pick], ref["seed"],
                           ref["repeats"])
    for g, i in zip(got, pick):
        assert math.isclose(g, ref["x0_mse"][i], rel_tol=1e-4), (got, ref["x0_mse"])


# -- classifier / Frechet distance -----------------------------------------------------------------

def test_frechet_distance():
    d = 6
    mu, cov = torch.zeros(d), torch.eye(d)
    assert abs(frechet_distance(mu, cov, mu, cov)) < 1e-9
    m = torch.arange(d, dtype=torch.float64)
    # FD(N(0, I), N(m, 4I)) = |m|^2 + d (1 + 4 - 2 * 2).
    assert math.isclose(frechet_distance(mu, cov, m, 4 * cov), float(m.square().sum()) + d, rel_tol=1e-9)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, d, generator=g), torch.randn(200, d, generator=g) @ torch.randn(d, d, generator=g)
    ma, ca = feature_stats(a)
    mb, cb = feature_stats(b)
    torch.testing.assert_close(ca, torch.cov(a.double().T))
    fd = frechet_distance(ma, ca, mb, cb)
    assert math.isclose(fd, frechet_distance(mb, cb, ma, ca), rel_tol=1e-7) and fd > 0
    scipy_linalg = pytest.importorskip("scipy.linalg")
    covmean = scipy_linalg.sqrtm(ca.numpy() @ cb.numpy()).real
    ref = float((ma - mb).square().sum() + ca.trace() + cb.trace() - 2 * covmean.trace())
    assert math.isclose(fd, ref, rel_tol=1e-6)
    with pytest.raises(ValueError):
        frechet_distance(mu, cov, torch.zeros(d + 1), torch.eye(d + 1))


def test_classifier_features_shape():
    model = DigitClassifier().eval()
    x = torch.rand(7, 1, 8, 8) * 2 - 1
    assert model(x).shape == (7, 10) and model.features(x).shape == (7, 64)
    with pytest.raises(ValueError):
        model.features(torch.zeros(2, 8, 8))
