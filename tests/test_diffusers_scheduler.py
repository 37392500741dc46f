"""lf.to_diffusers_scheduler: our Plan behind diffusers' scheduler interface, in a real pipeline."""
import json
import subprocess
import sys

import pytest
import torch

import ldd_fast as lf

diffusers = pytest.importorskip("diffusers")

from test_solvers import CONFIGS, IDS  # noqa: E402
from tolerances import TOL  # noqa: E402

NFE = 5
torch.set_num_threads(1)


def _unet(seed: int, scale: float = 1.0):
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    with torch.no_grad():
        unet.conv_out.weight.mul_(scale)
        unet.conv_out.bias.mul_(scale)
    return unet.eval().requires_grad_(False)


def _pipeline(unet, scheduler):
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _schedule(noise, solver, learned=False):
    sched = lf.discretize(noise, NFE, "logsnr", solver=solver)
    if learned:  # network times off the solver grid and off the integer training grid, as LD3 makes them
        sched = lf.Schedule(t=sched.t, t_eval=sched.t_eval * torch.linspace(1.0, 0.97, NFE, dtype=torch.float64),
                            noise=noise, solver=solver)
    return sched


def rel_diff(out, ref) -> float:
    return float((out - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("solver,order,variant", CONFIGS, ids=IDS)
def test_ddpm_pipeline_produces_what_lf_sample_produces(solver, order, variant):
    """An x0-prediction UNet with small outputs keeps the sample inside DDPMPipeline's [-1, 1] clamp."""
    unet = _unet(0, scale=0.1)
    den = lf.from_diffusers(unet, diffusers.DDPMScheduler(num_train_timesteps=1000, prediction_type="sample"))
    sched = _schedule(den.noise, solver, learned=solver == "unipc")
    scheduler = lf.to_diffusers_scheduler(sched, solver=solver, order=order, variant=variant, model=den)
    images = _pipeline(unet, scheduler)(batch_size=3, generator=torch.Generator().manual_seed(1),
                                        num_inference_steps=NFE, output_type="np").images
    z = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))  # DDPMPipeline's randn_tensor
    with torch.no_grad():
        ref = lf.sample(den, z, sched, solver=solver, order=order, variant=variant)
    assert (ref.abs() < 0.99).float().mean() > 0.9, "the comparison must not be hidden by the clamp"
    ref = (ref / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert abs(images - ref).max() <= TOL["diffusers_scheduler_fp32"]


@pytest.mark.parametrize("solver,order,variant", CONFIGS, ids=IDS)
def test_eps_model_in_the_pipeline_loop(solver, order, variant):
    """DDPMPipeline's denoising loop, line for line, without its final clamp (eps samples of a random UNet
    are far outside [-1, 1])."""
    unet = _unet(1)
    den = lf.from_diffusers(unet, diffusers.DDPMScheduler(num_train_timesteps=1000))
    sched = _schedule(den.noise, solver)
    scheduler = lf.to_diffusers_scheduler(sched, solver=solver, order=order, variant=variant, model=den)
    z = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        image = z.clone()
        scheduler.set_timesteps(NFE)
        for t in scheduler.timesteps:
            model_output = unet(image, t).sample
            image = scheduler.step(model_output, t, image).prev_sample
        ref = lf.sample(den, z, sched, solver=solver, order=order, variant=variant)
    assert rel_diff(image, ref) <= TOL["diffusers_scheduler_fp32"]
    assert scheduler.timesteps.dtype == torch.float32
    assert torch.equal(scheduler.timesteps, (den.time_net(sched.t_eval)).float()), "continuous index 1000 t - 1"


@pytest.mark.parametrize("solver", ["heun", "unipc"])
def test_edm_model_uses_init_noise_sigma_and_scale_model_input(solver):
    """The k-diffusion-style loop (latents * init_noise_sigma, scale_model_input) with EDM preconditioning."""
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(4, 1, 3, padding=1))

    def raw(x, c_noise):
        return net(x) * (1 + c_noise[:, None, None, None])

    den = lf.Denoiser(raw, lf.EDM(), prediction="edm")
    sched = lf.discretize(den.noise, NFE, "edm", solver=solver)
    scheduler = lf.to_diffusers_scheduler(sched, solver=solver, model=den)
    assert scheduler.init_noise_sigma == 80.0 and scheduler.config.prediction_type == "edm"
    z = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        latents = z * scheduler.init_noise_sigma
        scheduler.set_timesteps(NFE)
        for t in scheduler.timesteps:
            out = raw(scheduler.scale_model_input(latents, t), t.expand(2))
            latents = scheduler.step(out, t, latents).prev_sample
        ref = lf.sample(den, z, sched, solver=solver)
    assert rel_diff(latents, ref) <= TOL["diffusers_scheduler_fp32"]


def test_survives_save_and_from_pretrained(tmp_path):
    unet = _unet(0, scale=0.1)
    den = lf.from_diffusers(unet, diffusers.DDPMScheduler(num_train_timesteps=1000, prediction_type="sample"))
    sched = _schedule(den.noise, "unipc", learned=True)
    scheduler = lf.to_diffusers_scheduler(sched, solver="unipc", order=3, model=den)
    pipe = _pipeline(unet, scheduler)
    pipe.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())
    assert config["_class_name"] == "LddFastScheduler" and config["solver"] == "unipc"
    assert config["solver_order"] == 3 and config["prediction_type"] == "sample"
    assert config["schedule"]["t_eval"] == [float(v) for v in sched.t_eval]
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["scheduler"] == ["ldd_fast.diffusers_scheduler", "LddFastScheduler"]

    loaded = diffusers.DDPMPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.scheduler) is type(scheduler) and loaded.scheduler.order == 1
    assert all(torch.equal(a.coef, b.coef) for a, b in zip(loaded.scheduler.plan.steps, scheduler.plan.steps))
    assert torch.equal(loaded.scheduler.timesteps, scheduler.timesteps)
    run = dict(batch_size=2, num_inference_steps=NFE, output_type="np")
    assert (loaded(generator=torch.Generator().manual_seed(2), **run).images
            == pipe(generator=torch.Generator().manual_seed(2), **run).images).all()
    alone = type(scheduler).from_pretrained(tmp_path, subfolder="scheduler")
    assert alone.config == scheduler.config


def test_errors_are_clear():
    unet = _unet(0)
    den = lf.from_diffusers(unet, diffusers.DDPMScheduler(num_train_timesteps=1000))
    sched = _schedule(den.noise, "unipc")
    scheduler = lf.to_diffusers_scheduler(sched, solver="unipc", order=3)
    with pytest.raises(ValueError, match=f"num_inference_steps={NFE}"):
        scheduler.set_timesteps(50)
    with pytest.raises(ValueError, match="lf.to_diffusers_scheduler"):
        scheduler.set_timesteps(timesteps=[999, 500, 1])
    with pytest.raises(ValueError, match="cannot begin at step 2"):
        scheduler.set_begin_index(2)
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(ValueError, match="pass scheduler.timesteps in order"):
        scheduler.step(torch.zeros_like(x), scheduler.timesteps[1], x)
    scheduler.set_timesteps(NFE)
    for t in scheduler.timesteps:
        x = scheduler.step(torch.zeros_like(x), t, x).prev_sample
    with pytest.raises(RuntimeError, match="call set_timesteps"):
        scheduler.step(torch.zeros_like(x), scheduler.timesteps[0], x)
    with pytest.raises(ValueError, match="unknown prediction_type"):
        lf.to_diffusers_scheduler(sched, solver="unipc", prediction_type="velocity")
    with pytest.raises(ValueError, match="heun layout"):
        lf.to_diffusers_scheduler(sched, solver="heun")
    with pytest.raises(TypeError, match="lf.Schedule"):
        lf.to_diffusers_scheduler(sched.to_dict(), solver="unipc")
    other = lf.from_diffusers(_unet(5), diffusers.DDPMScheduler(num_train_timesteps=1000))
    learned = lf.Schedule(t=sched.t, t_eval=sched.t_eval, noise=sched.noise, solver="unipc", order=3,
                          fingerprint=other.fingerprint())
    with pytest.raises(lf.IncompatibleSchedule, match="another model"):
        lf.to_diffusers_scheduler(learned, model=den)
    assert lf.to_diffusers_scheduler(learned, model=den, force=True).config.force


def test_import_ldd_fast_does_not_import_diffusers():
    code = "import sys, ldd_fast; assert 'diffusers' not in sys.modules, 'diffusers imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True)
