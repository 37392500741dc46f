"""Train the built-in digits models: ``python -m ldd_fast.zoo.train digits --variant {edm,vp}``.

Two variants of the same :class:`~ldd_fast.zoo.unet.TinyUNet`:

* ``edm``: EDM preconditioning and loss (Karras et al. 2022, Table 1):
  D(x; s) = c_skip x + c_out F(c_in x; ln(s)/4), sigma_data = 0.5,
  ln(sigma) ~ N(P_mean=-1.2, P_std=1.2), weight (s^2 + sd^2) / (s sd)^2.
  Sampling range sigma in [0.002, 80].
* ``vp``: DDPM (Ho et al. 2020): 1000 discrete steps, linear betas 1e-4..0.02,
  eps prediction, k ~ U{0..999}; the network's noise input is the float index k
  (a sampler at continuous time t feeds 1000 t - 1).
* ``flow``: rectified flow (Liu et al. 2023; Esser et al. 2024, SD3): x_t = (1 - t) x0 + t eps,
  the network predicts the velocity v = eps - x0 from (x_t, 1000 t) with a plain MSE, and t is
  drawn logit-normal (sigmoid of N(0, 1): SD3's choice, section 3.1), which spends the training
  on the middle of the path where the velocity is hardest to predict.

Both are class-conditional with label dropout (p = 0.1, label -> null class 10)
for classifier-free guidance, trained with AdamW, linear lr warm-up and an EMA
of the weights; the EMA weights ship. No horizontal flips: a mirrored digit is
a different (or no) digit.

Budget (measured on one thread of this repository's 2-core Xeon CI box, batch
128, dropout on): width 64 (4.3 M params) took 0.62 s/step, width 48 (2.4 M)
0.43 s/step, width 32 (1.08 M params, 4.3 MB in float32) 0.23 s/step. Width 32
is the only one under the 1.5 M-parameter size limit and gives 5000 steps
(~430 epochs of the 1497 training digits) in about 20 minutes, inside the
25-minute-per-model budget with room for checkpoints, the reference losses and
a busy second core. (The shipped EDM model took 1228 s: 0.246 s/step including
checkpoints, with the other core busy.)

Determinism: the data order comes from a dedicated ``torch.Generator`` (one
permutation per epoch, replayed on resume), the noise / sigma / label-dropout
draws from a second generator whose state is checkpointed, and dropout from the
global torch RNG, also checkpointed; on the same thread count a resumed run is
bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time

import torch

from . import precond
from ..errors import InvalidArgument, StateFileError
from ..exit_status import run_command
from ..io import Fields, load_state
from ._io import save_checkpoint, save_json, save_safetensors, sha256_file
from .data import SPLIT_DESCRIPTION, load_digits_split
from .unet import TinyUNet

__all__ = [
    "VARIANTS", "WEIGHT_NAMES", "default_network_config", "Trainer", "reference_losses", "main",
    "REFERENCE_LEVELS", "REFERENCE_SEED", "REFERENCE_REPEATS",
]

PROG = "python -m ldd_fast.zoo.train"
VARIANTS = ("edm", "vp", "flow")
#: load_network() name -> file stem in ldd_fast/zoo/weights
WEIGHT_NAMES = {"edm": "digits_edm", "vp": "digits_vp", "flow": "digits_flow"}
MODEL_NAMES = {"edm": "digits", "vp": "digits_vp", "flow": "digits_flow"}
NULL_CLASS = 10
CHECKPOINT_FORMAT = "ldd_fast.zoo.train checkpoint v1"
CHECKPOINT_KIND = "zoo training checkpoint"

EDM_NOISE = {"sigma_min": 0.002, "sigma_max": 80.0, "sigma_data": precond.SIGMA_DATA,
             "P_mean": precond.P_MEAN, "P_std": precond.P_STD}
VP_NOISE = {"beta_start": 1e-4, "beta_end": 0.02, "num_train_timesteps": 1000, "beta_schedule": "linear",
            "prediction_type": "epsilon"}
FLOW_NOISE = {"t_min": 1e-3, "t_max": 1.0, "time_sampling": "logit-normal (mean 0, std 1)",
              "timestep_scale": precond.FLOW_TIMESTEPS, "prediction_type": "flow (v = eps - x0)"}

# Fixed protocol for the reference denoising losses shipped with the weights.
REFERENCE_LEVELS = {"edm": [0.05, 0.2, 0.5, 1.0, 2.0, 5.0], "vp": [10, 100, 300, 600, 900],
                    "flow": [0.05, 0.2, 0.5, 0.8, 0.95]}
REFERENCE_SEED = 1234
REFERENCE_REPEATS = 4

DEFAULT_STEPS = 5000
DEFAULT_BATCH = 128
DEFAULT_LR = 1e-3


def default_network_config(variant: str, model_channels: int = 32) -> dict:
    """The shipped architecture: 32/64 channels at 8x8/4x4, 2 res blocks per level, attention at 4x4.

    Both variants use DDPM's sinusoidal positional embedding. For EDM this is the DDPM++
    configuration with EDM preconditioning (EDM's best CIFAR-10 setting): on c_noise = ln(sigma)/4
    in about [-1.6, 1.1] the sinusoids are smooth in sigma, which matters because samplers query
    the network at arbitrary sigma. (Random Fourier features with scale 16 oscillate many times
    over that range.)
    """
    _check_variant(variant)
    return dict(img_resolution=8, in_channels=1, model_channels=int(model_channels), channel_mult=[1, 2],
                num_res_blocks=2, attn_resolutions=[4], num_classes=NULL_CLASS + 1, dropout=0.1,
                embedding_type="positional")


def _check_variant(variant):
    if variant not in VARIANTS:
        raise InvalidArgument(f"unknown variant {variant!r}; expected one of {VARIANTS}")


class Trainer:
    """Training state and one optimisation step for either variant.

    Holds the network, its EMA copy, the AdamW optimiser, the step counter and the
    random generators; ``state_dict`` / ``load_state_dict`` capture all of it.
    Seeds the global torch RNG (network init and dropout), so construct one Trainer at a time.
    """

    def __init__(self, variant: str, train_x: torch.Tensor, train_y: torch.Tensor, *,
                 net_config: dict | None = None, batch_size: int = DEFAULT_BATCH, lr: float = DEFAULT_LR,
                 warmup_steps: int = 200, weight_decay: float = 0.01, grad_clip: float = 1.0,
                 ema_halflife: float = 500.0, ema_rampup: float = 0.1, label_dropout: float = 0.1,
                 seed: int = 0):
        _check_variant(variant)
        if not (isinstance(train_x, torch.Tensor) and train_x.dim() == 4 and train_x.is_floating_point()):
            raise InvalidArgument("Trainer: train_x must be a floating [N, C, H, W] tensor")
        if not (isinstance(train_y, torch.Tensor) and train_y.shape == (train_x.shape[0],)
                and not train_y.is_floating_point()):
            raise InvalidArgument("Trainer: train_y must be an integer tensor of shape [N]")
        if batch_size <= 0 or lr <= 0 or warmup_steps < 0 or weight_decay < 0 or grad_clip < 0:
            raise InvalidArgument("Trainer: batch_size and lr must be positive; warmup_steps, weight_decay and "
                                  "grad_clip non-negative")
        if ema_halflife <= 0 or ema_rampup < 0 or not 0 <= label_dropout < 1:
            raise InvalidArgument("Trainer: need ema_halflife > 0, ema_rampup >= 0 and label_dropout in [0, 1)")
        self.variant = variant
        self.net_config = dict(net_config or default_network_config(variant))
        self.hparams = dict(batch_size=int(batch_size), lr=float(lr), warmup_steps=int(warmup_steps),
                            weight_decay=float(weight_decay), grad_clip=float(grad_clip),
                            ema_halflife=float(ema_halflife), ema_rampup=float(ema_rampup),
                            label_dropout=float(label_dropout), seed=int(seed))
        self.train_x, self.train_y = train_x.float(), train_y.long()
        self.null_class = self.net_config.get("num_classes", NULL_CLASS + 1) - 1
        if int(self.train_y.max()) >= self.null_class or int(self.train_y.min()) < 0:
            raise InvalidArgument(f"Trainer: labels must lie in [0, {self.null_class - 1}] (the last class is null)")

        torch.manual_seed(seed + 2**33)  # network init and dropout use the global RNG
        self.net = TinyUNet(**self.net_config)
        self.ema = copy.deepcopy(self.net).eval().requires_grad_(False)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8,
                                     weight_decay=weight_decay)
        self.step = 0
        self.elapsed = 0.0  # training seconds, summed over resumed sessions
        self._data_gen = torch.Generator().manual_seed(seed)
        self._perms: list[torch.Tensor] = []
        self.noise_gen = torch.Generator().manual_seed(seed + 2**32)
        if variant == "vp":
            self.alphas_cumprod = precond.ddpm_alphas_cumprod(
                VP_NOISE["beta_start"], VP_NOISE["beta_end"], VP_NOISE["num_train_timesteps"])

    # -- data order ---------------------------------------------------------------------------
    def _perm(self, epoch: int) -> torch.Tensor:
        # Permutations are drawn in order from one seeded generator and replayed after a resume,
        # so the order depends on the seed and step only.
        while len(self._perms) <= epoch:
            self._perms.append(torch.randperm(self.train_x.shape[0], generator=self._data_gen))
        return self._perms[epoch]

    def batch_indices(self, step: int) -> torch.Tensor:
        n, b = self.train_x.shape[0], self.hparams["batch_size"]
        pos, parts = step * b, []
        while sum(p.numel() for p in parts) < b:
            epoch, off = divmod(pos, n)
            take = min(b - sum(p.numel() for p in parts), n - off)
            parts.append(self._perm(epoch)[off:off + take])
            pos += take
        return torch.cat(parts)

    # -- objective ----------------------------------------------------------------------------
    def loss(self, x0: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training objective on one batch (mean over elements; the scale only matters to Adam's eps)."""
        g, b = self.noise_gen, x0.shape[0]
        drop = torch.rand(b, generator=g) < self.hparams["label_dropout"]
        labels = torch.where(drop, torch.full_like(labels, self.null_class), labels)
        if self.variant == "edm":
            sigma = (torch.randn(b, generator=g) * EDM_NOISE["P_std"] + EDM_NOISE["P_mean"]).exp()
            noise = torch.randn(x0.shape, generator=g) * sigma[:, None, None, None]
            denoised = precond.edm_denoise(self.net, x0 + noise, sigma, labels, EDM_NOISE["sigma_data"])
            weight = precond.edm_loss_weight(sigma, EDM_NOISE["sigma_data"])[:, None, None, None]
            return (weight * (denoised - x0).square()).mean()
        if self.variant == "flow":
            t = torch.sigmoid(torch.randn(b, generator=g))[:, None, None, None]
            eps = torch.randn(x0.shape, generator=g)
            x_t = (1.0 - t) * x0 + t * eps
            return (self.net(x_t, precond.FLOW_TIMESTEPS * t.flatten(), labels) - (eps - x0)).square().mean()
        k = torch.randint(0, VP_NOISE["num_train_timesteps"], (b,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        abar = self.alphas_cumprod[k].float()[:, None, None, None]
        x_k = abar.sqrt() * x0 + (1.0 - abar).sqrt() * eps
        return (self.net(x_k, k.float(), labels) - eps).square().mean()

    def lr_at(self, step: int) -> float:
        """Linear warm-up to the base lr (EDM's lr_rampup), then constant."""
        w = self.hparams["warmup_steps"]
        return self.hparams["lr"] * (min(1.0, (step + 1) / w) if w > 0 else 1.0)

    def train_step(self) -> float:
        """One AdamW step on the next batch, then the EMA update; returns the batch loss."""
        idx = self.batch_indices(self.step)
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.net.train()
        loss = self.loss(self.train_x[idx], self.train_y[idx])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss at step {self.step}")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.hparams["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.hparams["grad_clip"])
        self.opt.step()
        self.step += 1
        self._update_ema()
        return loss.item()

    @torch.no_grad()
    def _update_ema(self):
        # EDM's EMA: a half-life (here in steps) ramped up as a fraction of the steps done,
        # so early, poor weights are forgotten quickly.
        h = self.hparams["ema_halflife"]
        if self.hparams["ema_rampup"] > 0:
            h = min(h, self.step * self.hparams["ema_rampup"])
        beta = 0.5 ** (1.0 / max(h, 1e-8))
        for p_ema, p in zip(self.ema.parameters(), self.net.parameters()):
            p_ema.lerp_(p.detach(), 1.0 - beta)
        for b_ema, b in zip(self.ema.buffers(), self.net.buffers()):
            b_ema.copy_(b)

    # -- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT, "variant": self.variant,
            "net_config": self.net_config, "hparams": self.hparams, "step": self.step, "elapsed": self.elapsed,
            "net": self.net.state_dict(), "ema": self.ema.state_dict(), "opt": self.opt.state_dict(),
            "noise_gen": self.noise_gen.get_state(), "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict, where: str = "checkpoint") -> None:
        f = Fields(state, where)
        if f.get("format", str) != CHECKPOINT_FORMAT:
            raise StateFileError(f"{where}: not an ldd_fast.zoo.train checkpoint")
        for key, mine in (("variant", self.variant), ("net_config", self.net_config), ("hparams", self.hparams)):
            if state.get(key) != mine:
                raise StateFileError(f"{where}: checkpoint {key} {state.get(key)!r} does not match this run's "
                                     f"{mine!r}; resume with the same settings (only --steps may change)")
        step, elapsed = f.int("step"), f.number("elapsed")
        noise_state = f.tensor("noise_gen", floating=False)
        torch_state = f.tensor("torch_rng", floating=False)
        try:
            self.net.load_state_dict(f.get("net", dict))
            self.ema.load_state_dict(f.get("ema", dict))
            self.opt.load_state_dict(f.get("opt", dict))
            self.noise_gen.set_state(noise_state)
            torch.set_rng_state(torch_state)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
            raise StateFileError(f"{where}: does not fit this network ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''})") from None
        self.step, self.elapsed = step, elapsed

    def save_checkpoint(self, path: str) -> None:
        save_checkpoint(self.state_dict(), path, CHECKPOINT_KIND)

    def load_checkpoint(self, path: str) -> None:
        self.load_state_dict(load_state(path, CHECKPOINT_KIND), where=f"{CHECKPOINT_KIND} file {path}")


@torch.no_grad()
def reference_losses(net: torch.nn.Module, variant: str, x0: torch.Tensor, levels=None,
                     seed: int = REFERENCE_SEED, repeats: int = REFERENCE_REPEATS) -> list[float]:
    """Per-element MSE of the x0 estimate, ||D(x_noisy) - x0||^2 / numel, at fixed noise levels.

    Unconditional (null class), eval mode. The noise of repeat r is
    ``torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + r))``, shared by all
    levels; edm: x_noisy = x0 + sigma n; vp: x_noisy = sqrt(abar_k) x0 + sqrt(1 - abar_k) n.
    Returns one float per level (mean over the repeats).
    """
    _check_variant(variant)
    if not isinstance(x0, torch.Tensor) or x0.dim() != 4:
        raise InvalidArgument("reference_losses: x0 must be a [N, C, H, W] tensor")
    if repeats < 1:
        raise InvalidArgument(f"reference_losses: repeats must be >= 1, got {repeats}")
    levels = list(REFERENCE_LEVELS[variant] if levels is None else levels)
    was_training = net.training
    net.eval()
    x0 = x0.float()
    noises = [torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + r)) for r in range(repeats)]
    ac = precond.ddpm_alphas_cumprod(VP_NOISE["beta_start"], VP_NOISE["beta_end"],
                                     VP_NOISE["num_train_timesteps"]) if variant == "vp" else None
    out = []
    for level in levels:
        total = 0.0
        for n in noises:
            n = n.to(x0.device)
            if variant == "edm":
                d = precond.edm_denoise(net, x0 + float(level) * n, float(level), None, EDM_NOISE["sigma_data"])
            elif variant == "flow":
                t = float(level)
                d = precond.flow_denoise(net, (1.0 - t) * x0 + t * n, t, None)
            else:
                if int(level) != level:
                    raise InvalidArgument(f"reference_losses: vp levels are integer indices, got {level}")
                abar = float(ac[int(level)])
                x_k = math.sqrt(abar) * x0 + math.sqrt(1.0 - abar) * n
                d = precond.vp_denoise(net, x_k, int(level), ac, None)
            total += float((d.double() - x0.double()).square().mean())
        out.append(total / repeats)
    net.train(was_training)
    return out


def _package_weights_dir() -> str:
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")


def _noise_description(variant: str) -> dict:
    if variant == "edm":
        return dict(EDM_NOISE, type="EDM", preconditioning="EDM (Karras et al. 2022, Table 1)",
                    network_input="F(c_in x, c_noise = ln(sigma)/4, cond); D = c_skip x + c_out F")
    if variant == "flow":
        return dict(FLOW_NOISE, type="RectifiedFlow",
                    network_input="v = F(x_t, 1000 t, cond), x_t = (1 - t) x0 + t eps; D = x_t - t v")
    ac = precond.ddpm_alphas_cumprod(VP_NOISE["beta_start"], VP_NOISE["beta_end"], VP_NOISE["num_train_timesteps"])
    return dict(VP_NOISE, type="VPDiscrete",
                network_input="eps = F(x_k, k, cond), k the float index; continuous t = (k + 1) / 1000 "
                              "-> k = 1000 t - 1",
                alphas_cumprod_first_last=[float(ac[0]), float(ac[-1])])


def export(trainer: Trainer, out_dir: str, split: dict, extra: dict | None = None) -> tuple[str, str]:
    """Write the EMA weights (safetensors) and their JSON description, both atomically."""
    variant, stem = trainer.variant, WEIGHT_NAMES[trainer.variant]
    wpath, jpath = os.path.join(out_dir, stem + ".safetensors"), os.path.join(out_dir, stem + ".json")
    levels = REFERENCE_LEVELS[variant]
    ref = reference_losses(trainer.ema, variant, split["heldout_x"], levels)
    state = {k: v for k, v in trainer.ema.state_dict().items()}
    save_safetensors(state, wpath, metadata={"variant": variant, "config": json.dumps(trainer.ema.config)})
    reference = {
        "metric": "mean over held-out digits and pixels of (D(x_noisy) - x0)^2; EMA weights, null class, eval mode",
        "heldout_images": int(split["heldout_x"].shape[0]),
        "seed": REFERENCE_SEED, "repeats": REFERENCE_REPEATS,
        "noise": "repeat r uses torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + r)), "
                 "shared by all levels; see ldd_fast.zoo.train.reference_losses",
        "x0_mse": ref,
    }
    if variant == "edm":
        reference["sigma"] = levels
    elif variant == "flow":
        reference["t"] = levels
    else:
        ac = precond.ddpm_alphas_cumprod(VP_NOISE["beta_start"], VP_NOISE["beta_end"],
                                         VP_NOISE["num_train_timesteps"])
        reference["k"] = levels
        reference["t"] = [(k + 1) / VP_NOISE["num_train_timesteps"] for k in levels]
        reference["sigma_equivalent"] = [float(precond.vp_sigma(k, ac)) for k in levels]
    meta = {
        "name": MODEL_NAMES[variant],
        "variant": variant,
        "weights": os.path.basename(wpath),
        "weights_sha256": sha256_file(wpath),
        "num_parameters": sum(p.numel() for p in trainer.ema.parameters()),
        "network_class": "ldd_fast.zoo.unet.TinyUNet",
        "network": trainer.ema.config,
        "noise": _noise_description(variant),
        "conditioning": {"num_classes": 10, "null_class": trainer.null_class,
                         "label_dropout": trainer.hparams["label_dropout"]},
        "data": SPLIT_DESCRIPTION,
        "training": dict(trainer.hparams, steps=trainer.step, seconds=round(trainer.elapsed, 1),
                         seconds_per_step=round(trainer.elapsed / max(trainer.step, 1), 4),
                         optimizer="AdamW", ema="EDM-style half-life in steps, ramped up as ema_rampup * step",
                         torch=torch.__version__, threads=torch.get_num_threads(), machine=platform.processor()
                         or platform.machine(), **(extra or {})),
        "reference_loss": reference,
    }
    save_json(meta, jpath)
    return wpath, jpath


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Train a built-in digits diffusion model (EMA weights -> ldd_fast/zoo/weights).",
        epilog="Example: python -m ldd_fast.zoo.train digits --variant edm --steps 5000 --threads 1",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("dataset", choices=["digits"], help="training data (scikit-learn's 8x8 digits)")
    p.add_argument("--variant", choices=VARIANTS, required=True, default=argparse.SUPPRESS,
                   help="edm: EDM preconditioning/loss (Karras et al. 2022); vp: DDPM 1000-step eps-prediction; "
                        "flow: rectified flow, velocity prediction, logit-normal t (SD3)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="total optimisation steps")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="batch size")
    p.add_argument("--lr", type=float, default=DEFAULT_LR, help="AdamW learning rate after warm-up")
    p.add_argument("--warmup", type=int, default=200, help="linear lr warm-up steps")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW decoupled weight decay")
    p.add_argument("--ema-halflife", type=float, default=500.0, help="EMA half-life in steps (after ramp-up)")
    p.add_argument("--width", type=int, default=32, help="U-Net base width (model_channels)")
    p.add_argument("--seed", type=int, default=0, help="seed of init, data order, noise and dropout")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out-dir", default=_package_weights_dir(), help="where the EMA weights and JSON go")
    p.add_argument("--ckpt", default=os.path.join("runs", "zoo", "digits_{variant}.ckpt"),
                   help="checkpoint path; {variant} is replaced by the variant")
    p.add_argument("--ckpt-every", type=int, default=200, help="checkpoint interval in steps")
    p.add_argument("--resume", action="store_true", help="continue from --ckpt (error if it does not exist)")
    p.add_argument("--log-every", type=int, default=250, help="print the mean loss every this many steps")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: _train(args))


def _train(args) -> int:
    if args.steps <= 0 or args.batch <= 0 or args.threads <= 0 or args.ckpt_every <= 0 or args.log_every <= 0:
        raise InvalidArgument("--steps, --batch, --threads, --ckpt-every and --log-every must be positive")
    torch.set_num_threads(args.threads)
    from tqdm import tqdm

    split = load_digits_split()
    trainer = Trainer(args.variant, split["train_x"], split["train_y"],
                      net_config=default_network_config(args.variant, args.width), batch_size=args.batch,
                      lr=args.lr, warmup_steps=args.warmup, weight_decay=args.weight_decay,
                      ema_halflife=args.ema_halflife, seed=args.seed)
    ckpt = args.ckpt.replace("{variant}", args.variant)
    if args.resume:
        trainer.load_checkpoint(ckpt)
        print(f"resumed from {ckpt} at step {trainer.step}", flush=True)
    nparams = sum(p.numel() for p in trainer.net.parameters())
    print(f"variant={args.variant} params={nparams} steps={args.steps} batch={args.batch} lr={args.lr} "
          f"seed={args.seed} threads={args.threads}", flush=True)

    interactive = sys.stderr.isatty()
    bar = tqdm(total=args.steps, initial=trainer.step, desc=f"digits-{args.variant}", dynamic_ncols=True,
               mininterval=0.5 if interactive else 30.0)
    window, t_mark = [], time.perf_counter()
    while trainer.step < args.steps:
        window.append(trainer.train_step())
        bar.update(1)
        bar.set_postfix(loss=f"{sum(window[-50:]) / len(window[-50:]):.4f}", refresh=False)
        now = time.perf_counter()
        if trainer.step % args.log_every == 0:
            tqdm.write(f"step {trainer.step} loss {sum(window) / len(window):.4f} "
                       f"({(trainer.elapsed + now - t_mark) / trainer.step:.3f} s/step avg)")
            sys.stdout.flush()
            window = []
        if trainer.step % args.ckpt_every == 0 or trainer.step == args.steps:
            trainer.elapsed += now - t_mark
            t_mark = now
            trainer.save_checkpoint(ckpt)
    bar.close()
    trainer.elapsed += time.perf_counter() - t_mark
    wpath, jpath = export(trainer, args.out_dir, split)
    with open(jpath) as f:
        ref = json.load(f)["reference_loss"]
    print(f"wrote {wpath} and {jpath}; {trainer.step} steps in {trainer.elapsed:.0f} s", flush=True)
    levels = ref.get("sigma") or ref.get("k") or ref.get("t")
    print("reference x0 MSE:", json.dumps(dict(zip(map(str, levels), ref["x0_mse"]))),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
