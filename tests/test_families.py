"""The model-family registry (ldd_fast/pipelines/) and its two newest families on tiny random pipelines
(tests/tiny_pipelines.py): Stable Diffusion XL (a dict condition: encoder_hidden_states, text_embeds, time_ids)
and Wan 2.1 (video latents [B, C, F, H, W], UniPC on flow sigmas). For each: lf.from_pipeline, the pipeline's
own __call__ with our scheduler equal to lf.sample, the ONNX export under onnxruntime, and for Wan the
scheduler's own grid and a short LD3 run on 5-D latents."""
import math
import types

import pytest
import torch

import ldd_fast as lf
from ldd_fast.learn import LD3Config
from ldd_fast.pipelines import FAMILIES, PIPELINES, pipeline_kind
from ldd_fast.teacher import TeacherSpec

from tolerances import TOL

tp = pytest.importorskip("tiny_pipelines")
pytestmark = [pytest.mark.usefixtures("one_thread"),
              # diffusers 0.42 + numpy 2 warn inside set_timesteps (np.array on a tensor); not ours.
              pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")]
SIZE = 16
FRAMES = 5  # 2 latent frames (the tiny VAE is 4x in time, as Wan's)
SDXL_KEYS = ["encoder_hidden_states", "text_embeds", "time_ids"]


@pytest.fixture(scope="module")
def sdxl():
    return lf.from_pipeline(tp.build("sdxl"), height=SIZE, width=SIZE)


@pytest.fixture(scope="module")
def wan():
    return lf.from_pipeline(tp.build("wan"), height=SIZE, width=SIZE, num_frames=FRAMES, max_sequence_length=8)


def _rel(out, ref) -> float:
    return float((out - ref).abs().max() / ref.abs().max())


# ----- the registry ----------------------------------------------------------------------


def test_registry_names_every_family_and_recognises_components():
    assert PIPELINES == {"StableDiffusionPipeline": "sd", "StableDiffusion3Pipeline": "sd3", "FluxPipeline": "flux",
                         "StableDiffusionXLPipeline": "sdxl", "WanPipeline": "wan"}
    assert list(FAMILIES) == ["sd", "sd3", "flux", "sdxl", "wan"]
    assert [kind for kind, family in FAMILIES.items() if family.flow] == ["sd3", "flux", "wan"]
    # A pipeline of another class name is recognised by its network (duck typing), SD and SDXL apart.
    for kind in ("sd", "sdxl", "wan"):
        pipe = tp.build(kind)
        parts = types.SimpleNamespace(unet=pipe.unet) if kind != "wan" else \
            types.SimpleNamespace(transformer=pipe.transformer)
        assert pipeline_kind(parts) == kind
    with pytest.raises(lf.InvalidArgumentType, match="StableDiffusionXLPipeline or WanPipeline"):
        pipeline_kind(object())


def test_family_options_are_refused_where_they_cannot_take_effect():
    with pytest.raises(lf.InvalidArgument, match="num_frames belongs to the video pipelines"):
        lf.from_pipeline(tp.build("sdxl"), height=SIZE, width=SIZE, num_frames=5)
    with pytest.raises(lf.InvalidArgument, match="T5 prompt length of SD3 and Flux and Wan"):
        lf.from_pipeline(tp.build("sdxl"), height=SIZE, width=SIZE, max_sequence_length=8)
    with pytest.raises(lf.InvalidArgument, match="num_frames - 1 must be a multiple of the VAE's temporal factor 4"):
        lf.from_pipeline(tp.build("wan"), height=SIZE, width=SIZE, num_frames=6, max_sequence_length=8)
    for bad, error in (("5", lf.InvalidArgumentType), (0, lf.InvalidArgument)):
        with pytest.raises(error, match="num_frames"):
            lf.from_pipeline(tp.build("wan"), height=SIZE, width=SIZE, num_frames=bad, max_sequence_length=8)
    with pytest.raises(lf.InvalidArgument, match="multiples of 16"):
        lf.from_pipeline(tp.build("wan"), height=8, width=SIZE, num_frames=FRAMES, max_sequence_length=8)


# ----- Stable Diffusion XL -------------------------------------------------------------------


def test_sdxl_from_pipeline(sdxl):
    den = sdxl
    assert den.pipeline_kind == "sdxl" and den.sample_shape == (4, 8, 8) and den.guidance_scale == 5.0
    assert isinstance(den.noise, lf.VPDiscrete) and den.prediction == "eps" and den.pipeline_grid == {}
    cond = den.encode_prompt(tp.PROMPTS[:3])
    assert sorted(cond) == SDXL_KEYS
    assert [tuple(cond[k].shape) for k in SDXL_KEYS] == [(3, 8, 16), (3, 4), (3, 6)]  # CLIP widths 8 + 8; pooled 4
    # Micro-conditions as the pipeline's defaults: original size = target size = the image, crop (0, 0).
    assert cond["time_ids"].tolist() == [[SIZE, SIZE, 0, 0, SIZE, SIZE]] * 3
    assert sorted(den.null_cond) == SDXL_KEYS and den.null_cond["text_embeds"].shape == (4,)
    x = lf.sample(den, torch.randn(3, *den.sample_shape), tp.learned_like_schedule(den), solver="unipc", cond=cond)
    images = den.decode(x)
    assert images.shape == (3, 3, SIZE, SIZE) and torch.isfinite(images).all()
    sched = den.pipeline_schedule(4)
    assert (sched.solver, sched.order, sched.info["scheduler"]) == ("euler", 1, "EulerDiscreteScheduler")


def test_sdxl_decoding_with_latents_mean_and_std_is_the_pipelines():
    """A VAE with latents_mean / latents_std: StableDiffusionXLPipeline decodes latents * std / scaling + mean."""
    from ldd_fast.pipelines._common import vae_decode

    config = {"scaling_factor": 0.5, "latents_mean": [0.1, -0.2, 0.3, 0.0], "latents_std": [1.5, 0.8, 2.0, 1.0]}
    vae = types.SimpleNamespace(config=config, dtype=torch.float32, decode=lambda x, return_dict: (x,))
    decoding = FAMILIES["sdxl"].decoding(types.SimpleNamespace(vae=vae), None)
    x = torch.randn(2, 4, 8, 8)
    own = x * torch.tensor(config["latents_std"]).view(1, 4, 1, 1) / 0.5 + \
        torch.tensor(config["latents_mean"]).view(1, 4, 1, 1)
    assert torch.allclose(vae_decode(vae, x, decoding), own, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("nfe", [2, 4])
def test_sdxl_pipelines_own_call_with_our_scheduler_is_lf_sample(sdxl, nfe):
    rel = tp.drop_in_difference(tp.build("sdxl"), sdxl, tp.learned_like_schedule(sdxl, nfe=nfe), batch=2)
    assert rel <= TOL["fp32_vs_diffusers"], f"max relative difference {rel:.2e}"


def test_sdxl_unet_through_from_diffusers_takes_the_flattened_dict(sdxl):
    pipe = tp.build("sdxl")
    den = lf.from_diffusers(pipe.unet, pipe.scheduler)  # unguided
    cond = sdxl.encode_prompt(tp.PROMPTS[:2])
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        out = den(x, 0.5, cond)
        raw = pipe.unet(x, den.time_net(torch.tensor(0.5)).float().expand(2),
                        encoder_hidden_states=cond["encoder_hidden_states"],
                        added_cond_kwargs={"text_embeds": cond["text_embeds"], "time_ids": cond["time_ids"]},
                        return_dict=False)[0]
    aff = den.affine(torch.tensor(0.5))
    assert torch.allclose(out, aff.a.float() * x + aff.b[0].float() * raw, rtol=0, atol=1e-5)
    with pytest.raises(lf.ConditionError, match="addition embedding: its cond is a dict"):
        den(x, 0.5, cond["encoder_hidden_states"])  # a plain tensor is encoder_hidden_states only
    with pytest.raises(lf.ConditionError, match="keys \\['encoder_hidden_states', 'text_embeds', 'time_ids'\\]"):
        den(x, 0.5, {k: cond[k] for k in ("encoder_hidden_states", "text_embeds")})

    class UNet2DConditionModel(torch.nn.Module):  # only the config matters for the refusal
        config = {"in_channels": 4, "cross_attention_dim": 8, "addition_embed_type": "text_image"}
        class_embedding = None

    with pytest.raises(lf.InvalidArgument, match="addition_embed_type='text_image'.*'text_time'"):
        lf.from_diffusers(UNet2DConditionModel(), pipe.scheduler)


def test_sdxl_dict_condition_through_the_sampler_and_onnx(sdxl, tmp_path):
    pytest.importorskip("onnxruntime")
    from ldd_fast.export import OnnxSampler, to_onnx

    den = sdxl
    sched = tp.learned_like_schedule(den, nfe=2)
    cond = den.encode_prompt(tp.PROMPTS[:2])
    z = torch.randn(2, *den.sample_shape)
    with torch.no_grad():
        ref = lf.sample(den, z, sched, solver="unipc", cond=cond)
    out = lf.Sampler(den, sched, solver="unipc", backend="eager")(z, cond)
    assert _rel(out, ref) <= TOL["fp32_vs_fp64"]
    info = to_onnx(den, sched, tmp_path / "sdxl.onnx", z, solver="unipc", cond=cond)
    assert info.inputs == ["z", *(f"cond_{k}" for k in SDXL_KEYS)]
    for _, _, out, ref in tp.onnx_and_eager(OnnxSampler(info.path), den, sched):
        assert _rel(out, ref) <= TOL["onnx_fp32"]


def test_sdxl_default_null_condition_is_the_pipelines(sdxl):
    """StableDiffusionXLPipeline without a negative prompt guides with zero text embeddings (its
    force_zeros_for_empty_prompt) and the same time ids; with negative_prompt="" it encodes the empty prompt."""
    pipe = tp.build("sdxl")
    assert pipe.config.force_zeros_for_empty_prompt
    for negative, den in ((None, sdxl), ("", lf.from_pipeline(pipe, height=SIZE, width=SIZE, negative_prompt=""))):
        _, own, _, own_pooled = pipe.encode_prompt(prompt=["a cat"], device=torch.device("cpu"),
                                                   num_images_per_prompt=1, do_classifier_free_guidance=True,
                                                   negative_prompt=negative)
        assert torch.equal(den.null_cond["encoder_hidden_states"], own[0])
        assert torch.equal(den.null_cond["text_embeds"], own_pooled[0])
        assert den.null_cond["time_ids"].tolist() == [SIZE, SIZE, 0, 0, SIZE, SIZE]
    assert not sdxl.null_cond["encoder_hidden_states"].any()
    with pytest.raises(lf.InvalidArgumentType, match="negative_prompt must be a string or None"):
        lf.from_pipeline(pipe, height=SIZE, width=SIZE, negative_prompt=0)


NAMED = {"sd": ("encoder_hidden_states",), "sd3": ("encoder_hidden_states", "pooled_projections"),
         "flux": ("encoder_hidden_states", "pooled_projections"), "wan": ("encoder_hidden_states",)}


@pytest.mark.parametrize("kind", sorted(NAMED))
def test_every_cross_attention_family_takes_a_dict_named_as_its_forward(kind, sdxl, wan):
    """A dict keyed by the network's forward argument names means the same condition as the tensor / tuple form
    (SDXL's flattened dict is tested above): guided, through the Denoiser, bit for bit."""
    size = {"sd": {}, "sd3": {}, "flux": {"max_sequence_length": 8}}
    den = wan if kind == "wan" else lf.from_pipeline(tp.build(kind), height=SIZE, width=SIZE, **size[kind])
    keys = NAMED[kind]

    def named(c):
        return {keys[0]: c} if len(keys) == 1 else dict(zip(keys, c))

    cond = den.encode_prompt(tp.PROMPTS[:2])
    guided = den.guidance_scale != 1.0
    by_name = den.with_guidance(den.guidance_scale, named(den.null_cond) if guided else None)
    x = torch.randn(2, *den.sample_shape)
    with torch.no_grad():
        assert torch.equal(by_name(x, 0.5, named(cond)), den(x, 0.5, cond))
    with pytest.raises(lf.ConditionError, match="forward argument names"):
        den.net(x, den.time_net(torch.tensor(0.5)).expand(2), {"prompt_embeds": cond})


def test_bench_times_a_video_pipeline(wan):
    """lf.bench on 5-D latents with the pipeline's prompts as the condition: every row timed, finite."""
    res = lf.bench(wan, {"unipc-own": wan.pipeline_schedule(2)}, batches=(1, 2), repeats=1, warmup=0,
                   cond_fn=lambda b: wan.encode_prompt(tp.PROMPTS[:b]), show_progress=False)
    assert [row["batch"] for row in res.rows] == [1, 2] and not res.skipped
    assert all(math.isfinite(row["sampler_ms"]["median"]) and row["sampler_ms"]["median"] > 0 for row in res.rows)
    assert all(row["parity"] is None or row["parity"] <= TOL["fp32_vs_fp64"] for row in res.rows)


# ----- Wan 2.1 ----------------------------------------------------------------------------


def test_wan_from_pipeline_samples_and_decodes_video(wan):
    den, pipe = wan, tp.build("wan")
    assert den.pipeline_kind == "wan" and den.sample_shape == (4, 2, 4, 4) and den.num_frames == FRAMES
    assert isinstance(den.noise, lf.RectifiedFlow) and den.prediction == "flow" and den.time_input == "t1000"
    assert den.guidance_scale == 5.0 and den.pipeline_grid == {"kind": "flux", "mu": pytest.approx(math.log(3.0))}
    cond = den.encode_prompt(tp.PROMPTS[:2])
    assert cond.shape == (2, 8, 16)
    z = torch.randn(2, *den.sample_shape)
    x = lf.sample(den, z, den.pipeline_schedule(3), cond=cond)
    assert x.shape == z.shape and torch.isfinite(x).all()
    with torch.no_grad():
        video = den.decode(x)
        # WanPipeline's own decode: latents / (1 / std) + mean per channel, then the VAE.
        std = 1.0 / torch.tensor(pipe.vae.config.latents_std).view(1, 4, 1, 1, 1)
        own = pipe.vae.decode(x / std + torch.tensor(pipe.vae.config.latents_mean).view(1, 4, 1, 1, 1),
                              return_dict=False)[0]
    assert video.shape == (2, 3, FRAMES, SIZE, SIZE) and torch.equal(video, own)
    assert video.abs().max() <= 1.0


def test_wan_pipeline_schedule_is_the_unipc_flow_grid(wan):
    """UniPC on flow sigmas: linspace(1, 1/1000, N + 1)[:-1] shifted by flow_shift, the first nudged to 1 - 1e-6,
    then 0; solver UniPC-2 (bh2). No discretize kind is that grid (FlowMatchEuler's "flowmatch" is far from it,
    "flux" with mu = ln(shift), the pipeline_grid, near): hence the scheduler's own sigmas. With the network fed
    the same (continuous) times, diffusers' UniPC loop is lf.sample."""
    den, pipe = wan, tp.build("wan")
    nfe = 4
    sched = den.pipeline_schedule(nfe)
    assert (sched.solver, sched.order, sched.variant, sched.final) == ("unipc", 2, "bh2", "zero")
    twin = type(pipe.scheduler).from_config(pipe.scheduler.config)
    twin.set_timesteps(nfe)
    assert torch.equal(sched.t, twin.sigmas.double()) and torch.equal(sched.t_eval, sched.t[:-1])
    flowmatch = lf.discretize(den.noise, nfe, "flowmatch", shift=3.0, final="zero")
    assert (flowmatch.t[1:-1] - sched.t[1:-1]).abs().max() > 0.4
    nearest = lf.discretize(den.noise, nfe, final="zero", **den.pipeline_grid)
    assert 0 < (nearest.t[1:] - sched.t[1:]).abs().max() < 1e-3
    # diffusers feeds int64(1000 sigma); ours is the continuous 1000 t: the loop below feeds that to both sides.
    assert twin.timesteps.dtype == torch.int64 and twin.timesteps[0] == 999
    cond = den.encode_prompt(tp.PROMPTS[:2])
    null = den.null_cond.expand(2, *den.null_cond.shape)
    z = torch.randn(2, *den.sample_shape, generator=torch.Generator().manual_seed(5))
    x = z.clone()
    with torch.no_grad():
        for i, ts in enumerate(twin.timesteps):
            t_net = (twin.sigmas[i] * 1000).float().expand(4)
            out = pipe.transformer(hidden_states=torch.cat([x, x]), timestep=t_net,
                                   encoder_hidden_states=torch.cat([cond, null]), return_dict=False)[0]
            v = out[2:] + den.guidance_scale * (out[:2] - out[2:])
            x = twin.step(v, ts, x, return_dict=False)[0]
        ref = lf.sample(den, z, sched, cond=cond)
    assert _rel(x, ref) <= TOL["fp32_vs_diffusers"]


def test_wan_pipelines_own_call_with_our_scheduler_is_lf_sample(wan):
    pipe = tp.build("wan")
    rel = tp.drop_in_difference(pipe, wan, tp.learned_like_schedule(wan, nfe=3), batch=2)
    assert rel <= TOL["fp32_vs_diffusers"], f"max relative difference {rel:.2e}"
    scheduler = lf.to_diffusers_scheduler(wan.pipeline_schedule(3), model=wan)
    assert torch.equal(scheduler.sigmas[:-1].double(), wan.pipeline_schedule(3).t_eval.float().double())
    assert scheduler.sigmas[-1] == 0  # what WanPipeline hands its cache hooks


def test_wan_onnx_export_of_5d_latents(wan, tmp_path):
    pytest.importorskip("onnxruntime")
    from ldd_fast.export import OnnxSampler, to_onnx

    den = wan
    sched = tp.learned_like_schedule(den, nfe=2)
    cond = den.encode_prompt(tp.PROMPTS[:2])
    z = torch.randn(2, *den.sample_shape)
    info = to_onnx(den, sched, tmp_path / "wan.onnx", z, solver="unipc", cond=cond)
    assert info.inputs == ["z", "cond"]
    for zz, _, out, ref in tp.onnx_and_eager(OnnxSampler(info.path), den, sched):
        assert out.shape == (zz.shape[0], 4, 2, 4, 4) and _rel(out, ref) <= TOL["onnx_fp32"]


def test_ld3_on_video_latents(wan):
    den = wan
    cond = den.encode_prompt(tp.PROMPTS[:4])
    res = lf.learn(den, solver="unipc", nfe=2, shape=den.sample_shape, mode="time", n_train=2, n_valid=2, cond=cond,
                   teacher=TeacherSpec(nfe=4, final="zero"), config=LD3Config(rounds_xi=1, rounds_both=0),
                   show_progress=False)
    s = res.schedule
    assert s.fingerprint == den.fingerprint() and s.t[0] == 1.0 and torch.isfinite(s.t).all()
    assert s.metrics["valid_hard"] <= s.metrics["valid_hard_init"]  # it learned something on held-out prompts
    assert s.info["conditions"] == {"conditions": 4, "train": 2, "valid": 2, "disjoint": True}


def test_wan_refusals_by_name():
    diffusers = pytest.importorskip("diffusers")
    pipe = tp.build("wan")
    parts = dict(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae, scheduler=pipe.scheduler,
                 transformer=pipe.transformer)
    with pytest.raises(lf.InvalidArgument, match="expand_timesteps"):
        lf.from_pipeline(diffusers.WanPipeline(**parts, expand_timesteps=True), height=SIZE, width=SIZE)
    with pytest.raises(lf.InvalidArgument, match="transformer_2 / boundary_ratio"):
        lf.from_pipeline(diffusers.WanPipeline(**parts, transformer_2=pipe.transformer, boundary_ratio=0.9),
                         height=SIZE, width=SIZE)
    # The scheduler Wan ships is UniPC on flow sigmas; on its VP betas, or predicting eps, it is not this model's.
    config = dict(pipe.scheduler.config)
    with pytest.raises(lf.InvalidArgument, match="use_flow_sigmas=False"):
        lf.from_diffusers(pipe.transformer, diffusers.UniPCMultistepScheduler())
    with pytest.raises(lf.InvalidArgument, match="prediction_type='epsilon'"):
        lf.from_diffusers(pipe.transformer, {**config, "prediction_type": "epsilon"})
    with pytest.raises(lf.InvalidArgument, match="use_dynamic_shifting"):
        wan_dyn = lf.from_pipeline(
            diffusers.WanPipeline(**{**parts, "scheduler": diffusers.UniPCMultistepScheduler(
                **{**config, "use_dynamic_shifting": True})}), height=SIZE, width=SIZE, num_frames=FRAMES,
            max_sequence_length=8)
        wan_dyn.pipeline_schedule(3)
    den = lf.from_diffusers(pipe.transformer, config)  # a config dict is enough; the shape is not known
    assert den.sample_shape is None and den.time_input == "t1000"
    with pytest.raises(lf.ConditionError, match="encoder_hidden_states \\[B, L, D\\]"):
        den(torch.randn(1, 4, 2, 4, 4), 0.5, (torch.randn(1, 8, 16), torch.randn(1, 4)))
    with pytest.raises(lf.InvalidArgument, match="video latents"):
        den(torch.randn(1, 4, 4, 4), 0.5, torch.randn(1, 8, 16))


def test_cli_samples_a_wan_folder_as_a_gif_and_a_frame_strip(tmp_path, capsys):
    """`ldd-fast sample --pipeline <Wan folder>`: a .gif holds one frame per decoded frame (each the grid of all
    samples), a .png is the frame strip (a row a sample, a column a frame, captioned); .gif needs a video pipeline,
    and save_video refuses samples that are not [N, 3, F, H, W]."""
    pytest.importorskip("accelerate")  # diffusers loads a Wan folder's text encoder through it
    from PIL import Image

    from ldd_fast.cli import main
    from ldd_fast.plots import save_video

    folder = tmp_path / "wan"
    tp.build("wan").save_pretrained(folder)
    base = ["sample", "--pipeline", str(folder), "--height", str(SIZE), "--width", str(SIZE), "--frames", str(FRAMES),
            "--prompt", "a cat", "-n", "2", "--nfe", "2", "--max-sequence-length", "8", "--threads", "1"]
    assert main([*base, "--out", str(tmp_path / "clip.gif")]) == 0, capsys.readouterr().err
    assert f"2 samples of {FRAMES} frames" in capsys.readouterr().out
    with Image.open(tmp_path / "clip.gif") as gif:
        assert gif.format == "GIF" and gif.n_frames == FRAMES
        assert gif.size == (2 * (SIZE + 2) * 4, (SIZE + 2) * 4)  # both samples of the prompt in one row, scale 4
    assert main([*base, "--out", str(tmp_path / "strip.png")]) == 0, capsys.readouterr().err
    with Image.open(tmp_path / "strip.png") as strip:
        assert strip.format == "PNG" and strip.size[0] > FRAMES * (SIZE + 2) * 4  # captions beside the frames
    capsys.readouterr()
    sd = tmp_path / "sd"
    tp.build("sd").save_pretrained(sd)
    assert main(["sample", "--pipeline", str(sd), "--prompt", "a cat", "--out", str(tmp_path / "x.gif")]) == 2
    assert "a .gif needs a video pipeline" in capsys.readouterr().err
    assert main(["sample", "--model", "digits", "--out", str(tmp_path / "x.gif")]) == 2
    assert "a .gif needs a video pipeline" in capsys.readouterr().err
    assert not (tmp_path / "x.gif").exists()
    for bad in (torch.zeros(2, 3, 16, 16), torch.zeros(2, 4, FRAMES, 16, 16)):
        with pytest.raises(lf.InvalidArgument, match=r"\[N, 3, F, H, W\]"):
            save_video(bad, tmp_path / "bad.gif")
    frames = save_video(torch.rand(4, 3, 3, 8, 8) * 2 - 1, tmp_path / "v.gif", rows=["a", "b"])
    assert len(frames) == 3 and frames[0].size == (2 * 10 * 4, 2 * 10 * 4)  # one grid row per caption
