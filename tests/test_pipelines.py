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
    return {k: lf.from_pipeline(tp.build(k), height=SIZE, width=SIZE, max_sequence_length=8) for k in KINDS}


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
    for batch in (1, 3):
        zz = torch.randn(batch, *den.sample_shape)
        cc = den.encode_prompt(tp.PROMPTS[:batch])
        with torch.no_grad():
            ref = lf.sample(den, zz, sched, solver="unipc", cond=cc)
        assert (runner(zz, cc) - ref).abs().max() <= TOL["onnx_fp32"] * ref.abs().max()
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
                 "--mode", "time", "--n-train", "2", "--n-valid", "2", "--teacher-nfe", "4", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    s = lf.Schedule.load(out)
    assert s.info["conditions"] == {"conditions": 4, "train": 2, "valid": 2, "disjoint": True}
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
