"""Text-to-image pipelines end to end on tiny random Stable Diffusion, SD3 and Flux pipelines (tests/tiny_pipelines.py):
lf.from_pipeline, the pipelines' own __call__ with our scheduler equal to lf.sample, LD3 over a prompt set,
the Sampler backends and the ONNX export with the pipelines' condition structure, save / load."""
import json
import os

import numpy as np
import pytest
import torch

import ldd_fast as lf
from ldd_fast.learn import LD3Config
from ldd_fast.teacher import TeacherSpec

from tolerances import TOL

tp = pytest.importorskip("tiny_pipelines")
pytestmark = pytest.mark.usefixtures("one_thread")
KINDS = ["sd", "sd3", "flux"]
SIZE = 16


@pytest.fixture(scope="module")
def dens():
    return {k: lf.from_pipeline(tp.build(k), height=SIZE, width=SIZE, max_sequence_length=None if k == "sd" else 8)
            for k in KINDS}


def test_from_pipeline_refuses_what_cannot_take_effect():
    pipe = tp.build("sd")
    with pytest.raises(lf.LddFastError, match="max_sequence_length.*SD3 and Flux"):
        lf.from_pipeline(pipe, height=SIZE, width=SIZE, max_sequence_length=8)
    for bad in (0, -16):  # 0 was once taken for "the pipeline's size"
        with pytest.raises(lf.LddFastError, match="height"):
            lf.from_pipeline(pipe, height=bad, width=SIZE)
    with pytest.raises(TypeError, match="width"):
        lf.from_pipeline(pipe, height=SIZE, width="16")


@pytest.mark.parametrize("kind", KINDS)
def test_from_pipeline(dens, kind):
    den = dens[kind]
    cond = den.encode_prompt(tp.PROMPTS[:3])
    expected = {"sd": (4, 8, 8), "sd3": (4, 16, 16), "flux": (64, 16)}[kind]
    assert den.sample_shape == expected and den.pipeline_kind == kind
    if kind == "sd":
        assert isinstance(cond, torch.Tensor) and cond.shape[0] == 3 and den.guidance_scale == 7.5
        assert isinstance(den.noise, lf.VPDiscrete) and den.prediction == "eps"
    else:
        assert isinstance(cond, tuple) and [c.shape[0] for c in cond] == [3, 3]
        assert isinstance(den.noise, lf.RectifiedFlow) and den.prediction == "flow"
        assert den.time_input == ("t1000" if kind == "sd3" else "t")
    if kind == "flux":
        assert den.guidance_scale == 1.0 and float(den.net.embedded_guidance) == 3.5, "Flux-dev embeds guidance"
        assert den.pipeline_grid == {"kind": "flux", "mu": pytest.approx(lf.flux_mu(64))}
        other = lf.from_pipeline(tp.build("flux"), height=SIZE, width=SIZE, max_sequence_length=8,
                                 guidance_scale=5.0)
        assert other.fingerprint() != den.fingerprint(), "the embedded guidance is part of the model"
    z = torch.randn(3, *den.sample_shape)
    x = lf.sample(den, z, tp.learned_like_schedule(den), solver="unipc", cond=cond)
    images = den.decode(x)
    assert images.shape == (3, 3, SIZE, SIZE) and torch.isfinite(images).all()


@pytest.mark.parametrize("kind", KINDS)
def test_the_pipelines_own_call_with_our_scheduler_is_lf_sample(dens, kind, tmp_path):
    pipe, den = tp.build(kind), dens[kind]
    sched = tp.learned_like_schedule(den)
    rel = tp.drop_in_difference(pipe, den, sched, batch=2)
    assert rel <= TOL["fp32_vs_diffusers"], f"{kind}: max relative difference {rel:.2e}"
    original = pipe.scheduler
    try:
        pipe.scheduler = lf.to_diffusers_scheduler(sched, solver="unipc", order=3, model=den)
        pipe.save_pretrained(tmp_path / kind)
        index = json.loads((tmp_path / kind / "model_index.json").read_text())
        assert index["scheduler"] == ["ldd_fast.diffusers_scheduler", "LddFastScheduler"]
        back = type(pipe).from_pretrained(tmp_path / kind, local_files_only=True, use_safetensors=True)
        assert torch.equal(back.scheduler.timesteps, pipe.scheduler.timesteps)
    finally:
        pipe.scheduler = original


def test_flow_match_scheduler_loop_on_an_sd3_transformer_is_lf_sample(dens):
    """diffusers' FlowMatchEulerDiscreteScheduler loop (shift 1, 3 and dynamic) vs lf.sample with Euler."""
    diffusers = pytest.importorskip("diffusers")
    den = dens["sd3"]
    transformer = tp.build("sd3").transformer
    cond = den.encode_prompt(tp.PROMPTS[:2])
    z = torch.randn(2, *den.sample_shape, generator=torch.Generator().manual_seed(6))
    plain = lf.from_diffusers(transformer, diffusers.FlowMatchEulerDiscreteScheduler())  # no guidance
    worst = 0.0
    for config, grid in [({"shift": 1.0}, {"shift": 1.0}), ({"shift": 3.0}, {"shift": 3.0}),
                         ({"use_dynamic_shifting": True}, {"mu": 0.9})]:
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler(**config)
        scheduler.set_timesteps(4, **({"mu": 0.9} if "mu" in grid else {}))
        x = z.clone()
        with torch.no_grad():
            for ts in scheduler.timesteps:
                v = transformer(hidden_states=x, timestep=ts.expand(2), encoder_hidden_states=cond[0],
                                pooled_projections=cond[1], return_dict=False)[0]
                x = scheduler.step(v, ts, x, return_dict=False)[0]
            ours = lf.sample(plain, z, lf.discretize(plain.noise, 4, "flowmatch", final="zero", **grid),
                             solver="euler", cond=cond)
        worst = max(worst, float((ours - x).abs().max() / x.abs().max()))
    assert worst <= TOL["fp32_vs_diffusers"], worst


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_ld3_over_a_prompt_set(dens, kind):
    den = dens[kind]
    cond = den.encode_prompt(tp.PROMPTS)  # 8 prompts for 4 + 4 pairs: 4 training prompts, 4 validation prompts
    res = lf.learn(den, solver="unipc", order=3, nfe=3, shape=den.sample_shape, mode="time", n_train=4, n_valid=4,
                   cond=cond, teacher=TeacherSpec(nfe=6, final="zero"), config=LD3Config(rounds_xi=1, rounds_both=1,
                                                                                          batch_size=2),
                   show_progress=False)
    s = res.schedule
    assert s.info["conditions"] == {"conditions": 8, "train": 4, "valid": 4, "disjoint": True}
    assert s.fingerprint == den.fingerprint() and s.t[0] == 1.0 and torch.isfinite(s.t).all()
    assert s.guidance_scale == den.guidance_scale


def test_ld3_with_a_decoded_pixel_loss(dens):
    den = dens["sd3"]
    cond = den.encode_prompt(tp.PROMPTS[:3])
    res = lf.learn(den, solver="euler", nfe=2, shape=den.sample_shape, mode="time", n_train=2, n_valid=2, cond=cond,
                   decoder=den.decode, teacher=TeacherSpec(nfe=4, final="zero"),
                   config=LD3Config(rounds_xi=1, rounds_both=0), show_progress=False)
    assert res.schedule.info["conditions"]["train"] == 2 and torch.isfinite(res.schedule.t).all()


@pytest.mark.parametrize("backend", ["eager", "triton", "compile"])
def test_sampler_backends_on_sd3(dens, backend):
    from ldd_fast.sampler import available_backends

    why = available_backends("cpu")[backend]
    if why:
        pytest.skip(why)
    den = dens["sd3"]
    sched = tp.learned_like_schedule(den, nfe=2)
    cond = den.encode_prompt(tp.PROMPTS[:2])
    z = torch.randn(2, *den.sample_shape)
    with torch.no_grad():
        ref = lf.sample(den, z, sched, cond=cond, solver="unipc")
    out = lf.Sampler(den, sched, solver="unipc", backend=backend)(z, cond)
    assert (out - ref).abs().max() <= TOL["lowp_sample_eps"] * 1.2e-7 * ref.abs().max()


def test_export_of_a_pipeline_sampler(dens, tmp_path):
    pytest.importorskip("onnxruntime")
    from ldd_fast.export import OnnxSampler, to_onnx

    den = dens["sd3"]
    sched = tp.learned_like_schedule(den, nfe=2)
    cond = den.encode_prompt(tp.PROMPTS[:2])
    z = torch.randn(2, *den.sample_shape)
    info = to_onnx(den, sched, tmp_path / "sd3.onnx", z, solver="unipc", cond=cond)
    assert info.inputs == ["z", "cond_0", "cond_1"] and info.metadata["cond"]["shapes"] == [[16, 16], [8]]
    runner = OnnxSampler(info.path)
    for zz, cc, out, ref in tp.onnx_and_eager(runner, den, sched):
        assert (out - ref).abs().max() <= TOL["onnx_fp32"] * ref.abs().max()
        assert (runner(zz.numpy(), tuple(c.numpy() for c in cc)) - ref.numpy()).__abs__().max() <= \
            TOL["onnx_fp32"] * float(ref.abs().max())
    # The guidance scale lives in the linear maps: with schedule_as_input it changes without re-exporting.
    info = to_onnx(den, sched, tmp_path / "swap.onnx", z, solver="unipc", cond=cond, schedule_as_input=True)
    runner = OnnxSampler(info.path)
    other = den.with_guidance(2.0)
    runner.set_schedule(other, sched)
    with torch.no_grad():
        ref = lf.sample(other, z, sched, solver="unipc", cond=cond)
    assert (runner(z, cond) - ref).abs().max() <= TOL["onnx_fp32"] * ref.abs().max()


def test_cli_learns_from_a_pipeline_folder(tmp_path, capsys):
    from ldd_fast.cli import main

    pipe = tp.build("sd3")
    pipe.save_pretrained(tmp_path / "sd3")
    (tmp_path / "prompts.txt").write_text("\n".join(tp.PROMPTS[:4]) + "\n\n")
    out = tmp_path / "s.json"
    code = main(["learn", "--pipeline", str(tmp_path / "sd3"), "--prompts", str(tmp_path / "prompts.txt"),
                 "--height", "16", "--width", "16", "--max-sequence-length", "8", "--nfe", "2", "--solver", "euler",
                 "--n-train", "2", "--n-valid", "2", "--teacher-nfe", "4", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "fewer than 4 a split" in captured.err  # 2 + 2 prompts: warned
    s = lf.Schedule.load(out)
    assert s.info["conditions"] == {"conditions": 4, "train": 2, "valid": 2, "disjoint": True}
    assert s.info["mode"] == "time"  # a pipeline's default mode
    # The learned sampler against the pipeline's own, on the validation pairs, printed and kept in the file.
    m = s.metrics
    assert m["pipeline_scheduler"] == "FlowMatchEulerDiscreteScheduler" and m["pipeline_pairs"] == 2
    assert m["pipeline_rmse_own_2x"] < m["pipeline_rmse_own"]
    assert f"learned {m['pipeline_rmse_learned']:.4f}" in captured.out and "at NFE 4" in captured.out
    assert isinstance(s.noise, lf.RectifiedFlow) and s.final == "t_min"
    (tmp_path / "bad.txt").write_text("\n\n")
    code = main(["learn", "--pipeline", str(tmp_path / "sd3"), "--prompts", str(tmp_path / "bad.txt"), "--nfe", "2",
                 "--out", str(tmp_path / "t.json")])
    assert code == 2 and "no prompts" in capsys.readouterr().err
    os.remove(tmp_path / "sd3" / "model_index.json")
    code = main(["learn", "--pipeline", str(tmp_path / "sd3"), "--prompts", str(tmp_path / "prompts.txt"),
                 "--nfe", "2", "--out", str(tmp_path / "t.json")])
    assert code == 2 and "model_index.json" in capsys.readouterr().err
    assert not np.any([f.endswith(".tmp") for f in os.listdir(tmp_path)])


def test_cli_benches_a_pipeline_folder(tmp_path, capsys):
    """`ldd-fast bench --pipeline`: a guided Stable Diffusion pipeline (the doubled [x, x] batch), one prompt."""
    import json

    from ldd_fast.cli import main

    pipe = tp.build("sd")
    pipe.save_pretrained(tmp_path / "sd")
    js = tmp_path / "b.json"
    code = main(["bench", "--pipeline", str(tmp_path / "sd"), "--height", "16", "--width", "16", "--schedule", "edm",
                 "--nfe", "2", "--backends", "eager,cuda_graph", "--batch", "2", "--repeats", "2", "--warmup", "0",
                 "--threads", "1", "--json", str(js)])
    out = capsys.readouterr()
    assert code == 0, out.err
    d = json.loads(js.read_text())
    (row,) = d["rows"]
    assert row["backend"] == "eager" and row["parity"] == 0.0 and row["eager_floor_ms"] > 0
    assert d["skipped"][0]["backend"] == "cuda_graph"
    # Stable Diffusion's CLIP prompt length is fixed: the T5 option is refused, not ignored.
    code = main(["bench", "--pipeline", str(tmp_path / "sd"), "--height", "16", "--width", "16",
                 "--max-sequence-length", "8", "--schedule", "edm", "--nfe", "2", "--backends", "eager", "--batch", "2", "--threads", "1"])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after diffusers' loading bars
    assert code == 2 and last.startswith("ldd-fast: error:") and "--max-sequence-length" in last


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The tiny pipelines saved as folders, as a user's pipeline folder would be."""
    root = tmp_path_factory.mktemp("pipelines")
    for kind in KINDS:
        tp.build(kind).save_pretrained(root / kind)
    return root


def test_cli_samples_a_pipeline_folder(folders, tmp_path, capsys):
    """`ldd-fast sample --pipeline`: -n samples per prompt; .pt keeps the latents, equal to lf.sample on the same
    noise and prompts; a .png grid holds the decoded images, one captioned row per prompt."""
    from ldd_fast.cli import main
    from ldd_fast.teacher import noise_for

    base = ["sample", "--pipeline", str(folders / "sd3"), "--height", "16", "--width", "16", "--max-sequence-length",
            "8", "--prompt", tp.PROMPTS[0], "--prompt", tp.PROMPTS[1], "-n", "2", "--nfe", "2", "--schedule",
            "pipeline", "--threads", "1"]
    assert main([*base, "--out", str(tmp_path / "x.pt")]) == 0, capsys.readouterr().err
    den = lf.from_pipeline(tp.build("sd3"), height=16, width=16, max_sequence_length=8)
    sched = den.pipeline_schedule(2)
    assert (sched.solver, sched.order, sched.final) == ("euler", 1, "zero")  # FlowMatchEuler is Euler, ends on 0
    cond = den.encode_prompt([tp.PROMPTS[0]] * 2 + [tp.PROMPTS[1]] * 2)
    with torch.no_grad():
        ref = lf.sample(den, noise_for(4, den.sample_shape, 0), sched, cond=cond)
    assert torch.allclose(torch.load(tmp_path / "x.pt"), ref, atol=1e-6, rtol=0)
    assert main([*base, "--out", str(tmp_path / "grid.png")]) == 0
    from PIL import Image

    assert Image.open(tmp_path / "grid.png").size[0] > 2 * 16 * 4  # two images a row, with captions beside
    capsys.readouterr()


@pytest.mark.parametrize("argv, words", [
    (["--schedule", "flowmatch"], ["flow-matching grid", "StableDiffusionPipeline (a VP model)"]),
    (["--schedule", "logsnr", "--shift", "3"], ["--shift / --mu", "flowmatch"]),
    (["--prompt", "a", "--prompts", "p.txt"], ["--prompt and --prompts cannot be given together"]),
    (["--label", "3"], ["--label and --pipeline cannot be given together"]),
    (["--model", "digits"], ["--model and --pipeline cannot be given together"]),
])
def test_cli_pipeline_sample_arguments_are_checked_before_loading(folders, capsys, monkeypatch, argv, words):
    import ldd_fast.cli.load as load
    from ldd_fast.cli import main

    monkeypatch.setattr(load, "load_pipeline", lambda args: pytest.fail("loaded the pipeline before checking"))
    extra = [] if "--prompt" in argv else ["--prompt", "a cat"]
    code = main(["sample", "--pipeline", str(folders / "sd"), *extra, *argv, "--out", "x.png"])
    err = capsys.readouterr().err
    assert code == 2, err
    for w in words:
        assert w in err


def test_cli_schedule_kinds_need_what_they_name(tmp_path, capsys):
    from ldd_fast.cli import main

    for argv, words in [(["--schedule", "pipeline"], "needs --pipeline"), (["--schedule", "flux"], "needs --mu"),
                        (["--schedule", "flowmatch"], "digits is not a flow")]:
        assert main(["sample", "--model", "digits", *argv, "--out", "x.png"]) == 2
        assert words in capsys.readouterr().err
    assert main(["sample", "--model", "digits_flow", "--schedule", "flowmatch", "--shift", "3", "--nfe", "2", "-n",
                 "1", "--threads", "1", "--out", str(tmp_path / "x.pt")]) == 0
    den = lf.zoo.load("digits_flow")
    assert "flowmatch" in capsys.readouterr().out and torch.isfinite(torch.load(tmp_path / "x.pt")).all()
    assert lf.discretize(den.noise, 2, "flowmatch", shift=3.0).info["shift"] == 3.0


def test_cli_exports_a_pipeline_and_its_manifest_decodes_the_output(folders, tmp_path, capsys):
    """`ldd-fast export --pipeline`: the graph takes the prompt embeddings; with the manifest and the VAE alone
    (Flux's 2 x 2 packing included; test_export_of_a_pipeline_sampler exports SD3 in Python) onnxruntime's
    latents decode to den.decode(lf.sample(...))."""
    kind = "flux"
    ort = pytest.importorskip("onnxruntime")
    from diffusers import AutoencoderKL

    from ldd_fast.cli import main
    from ldd_fast.export import read_manifest
    from ldd_fast.pipelines import unpack_latents

    den = lf.from_pipeline(tp.build(kind), height=SIZE, width=SIZE, max_sequence_length=8)
    sched = den.pipeline_schedule(2)
    sched.save(tmp_path / "s.json")
    onnx_path = tmp_path / "sampler.onnx"
    code = main(["export", "--pipeline", str(folders / kind), "--height", "16", "--width", "16",
                 "--max-sequence-length", "8", "--schedule", str(tmp_path / "s.json"), "--onnx", str(onnx_path),
                 "--threads", "1"])
    assert code == 0, capsys.readouterr().err
    m = read_manifest(tmp_path / "sampler.manifest.json")
    assert [i["name"] for i in m["inputs"]] == ["z", "cond_0", "cond_1"] and m["inputs"][0]["shape"][0] == "batch"
    assert m["baked_in"]["nfe"] == 2 and m["pipeline"]["folder"] == str(folders / kind)
    assert {"vae", "transformer", "scheduler"} <= set(m["pipeline"]["components"])
    # A server's view: noise and prompt embeddings in, latents out, decoded with the manifest and the VAE.
    cond = den.encode_prompt(tp.PROMPTS[:2])
    z = torch.randn(2, *den.sample_shape, generator=torch.Generator().manual_seed(3))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feeds = {"z": z.numpy(), "cond_0": cond[0].numpy(), "cond_1": cond[1].numpy()}
    latents = torch.from_numpy(session.run(None, feeds)[0])
    dec = m["decode"]
    vae = AutoencoderKL.from_pretrained(os.path.join(m["pipeline"]["folder"], dec["vae"]))
    with torch.no_grad():
        images = vae.decode(unpack_latents(latents, dec) / dec["scaling_factor"] + dec["shift_factor"]).sample
        ref = den.decode(lf.sample(den, z, sched, cond=cond))
    assert images.shape == ref.shape == (2, 3, SIZE, SIZE)
    assert (images - ref).abs().max() <= 1e-3 * ref.abs().max()


def test_cli_plans_a_pipeline_on_disjoint_prompts(folders, tmp_path, capsys):
    """`ldd-fast plan --pipeline --prompts`: the choice on the first half of the prompts, the table on the other;
    the saved schedule runs as chosen through `ldd-fast sample --pipeline`."""
    from ldd_fast.cli import main

    (tmp_path / "prompts.txt").write_text("\n".join(tp.PROMPTS) + "\n")
    size = ["--height", "16", "--width", "16", "--max-sequence-length", "8"]
    code = main(["plan", "--pipeline", str(folders / "sd3"), "--prompts", str(tmp_path / "prompts.txt"), *size,
                 "--budget-ms", "10000", "--batch", "2", "--max-nfe", "2", "--solvers", "euler1", "dpmpp2",
                 "--backends", "eager", "--n-select", "4", "--n-eval", "4", "--teacher-steps", "4", "--repeats", "1",
                 "--threads", "1", "--out", str(tmp_path / "plan")])
    out = capsys.readouterr()
    assert code == 0, out.err
    best = json.loads((tmp_path / "plan" / "plan.json").read_text())["best"]
    sched = lf.Schedule.load(tmp_path / "plan" / "schedule.json")
    assert sched.solver == best["solver_name"] and sched.order == best["order"]
    assert "--pipeline" in out.out
    code = main(["sample", "--pipeline", str(folders / "sd3"), *size, "--prompt", "a red dog", "-n", "1",
                 "--schedule", str(tmp_path / "plan" / "schedule.json"), "--threads", "1",
                 "--out", str(tmp_path / "x.pt")])
    assert code == 0, capsys.readouterr().err
    assert main(["plan", "--pipeline", str(folders / "sd3"), "--prompts", str(tmp_path / "prompts.txt"),
                 "--budget-ms", "10", "--fd"]) == 2
    assert "--fd and --pipeline cannot be given together" in capsys.readouterr().err


def test_cli_frames_belong_to_video_pipelines(folders, capsys):
    """--frames needs --pipeline, and an image pipeline refuses it by name (from_pipeline's num_frames)."""
    from ldd_fast.cli import main

    assert main(["sample", "--model", "digits", "--frames", "5", "--out", "x.pt"]) == 2
    assert "--frames needs --pipeline" in capsys.readouterr().err
    code = main(["sample", "--pipeline", str(folders / "sd"), "--height", "16", "--width", "16", "--frames", "5",
                 "--prompt", "a cat", "-n", "1", "--nfe", "2", "--threads", "1", "--out", "x.pt"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "num_frames" in last, last
