"""Structured conditions (a tuple / dict of per-sample tensors, as SD3's prompt embeddings + pooled
projections): guidance, every executor, teacher pairs and LD3, and the exported graph's inputs."""
import pytest
import torch
from torch import nn

import ldd_fast as lf
from ldd_fast.cond import leaves, names, rebuild, structure
from ldd_fast.teacher import TeacherData, TeacherSpec, make_teacher

from tolerances import TOL

pytestmark = pytest.mark.usefixtures("one_thread")
SEQ, WIDTH, POOLED = 3, 4, 5


class TextNet(nn.Module):
    """A velocity network conditioned on (sequence embedding [B, L, D], pooled projection [B, P])."""

    def __init__(self, as_dict=False):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.seq = nn.Parameter(0.3 * torch.randn(WIDTH, 8, generator=g))
        self.pool = nn.Parameter(0.3 * torch.randn(POOLED, 8, generator=g))
        self.time = nn.Parameter(0.3 * torch.randn(8, generator=g))
        self.as_dict = as_dict

    def forward(self, x, t, cond):
        seq, pooled = (cond["seq"], cond["pooled"]) if self.as_dict else cond
        w_seq, w_pool, w_time = (p.to(x.dtype) for p in (self.seq, self.pool, self.time))
        h = seq.mean(1) @ w_seq + pooled @ w_pool + t[:, None] * w_time  # [B, 8]
        return 0.5 * x + torch.tanh(h)[:, :, None, None].mean(1, keepdim=True)


def text_den(guidance=3.0, as_dict=False):
    null = {"seq": torch.zeros(SEQ, WIDTH), "pooled": torch.zeros(POOLED)} if as_dict else \
        (torch.zeros(SEQ, WIDTH), torch.zeros(POOLED))
    return lf.Denoiser(TextNet(as_dict), lf.RectifiedFlow(), prediction="flow", time_input="t",
                       guidance_scale=guidance, null_cond=null)


def prompts(batch, as_dict=False, seed=1):
    g = torch.Generator().manual_seed(seed)
    seq, pooled = torch.randn(batch, SEQ, WIDTH, generator=g), torch.randn(batch, POOLED, generator=g)
    return {"seq": seq, "pooled": pooled} if as_dict else (seq, pooled)


def test_the_tree_helpers():
    c = {"b": torch.zeros(2, 1), "a": (torch.ones(2), torch.ones(2, 3))}
    assert names(c) == ["cond_a_0", "cond_a_1", "cond_b"]
    assert rebuild(structure(c), leaves(c)).keys() == c.keys()
    assert names(torch.zeros(1)) == ["cond"]


@pytest.mark.parametrize("as_dict", [False, True])
def test_guidance_with_a_structured_condition_is_classifier_free_guidance(as_dict):
    den, w = text_den(as_dict=as_dict), 3.0
    den.net.double()  # the network runs in its own dtype: a float64 check of the algebra needs a float64 network
    x, t, cond = torch.randn(2, 1, 2, 2, dtype=torch.float64), 0.6, prompts(2, as_dict)
    c = {k: v.double() for k, v in cond.items()} if as_dict else tuple(v.double() for v in cond)
    f64 = torch.float64
    null = {"seq": torch.zeros(2, SEQ, WIDTH, dtype=f64), "pooled": torch.zeros(2, POOLED, dtype=f64)} if as_dict \
        else (torch.zeros(2, SEQ, WIDTH, dtype=f64), torch.zeros(2, POOLED, dtype=f64))
    tt = torch.full((2,), 0.6, dtype=torch.float64)
    v_c, v_u = den.net(x, tt, c), den.net(x, tt, null)
    v = v_u + w * (v_c - v_u)
    assert torch.allclose(den(x, t, c), x - 0.6 * v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["eager", "compile"])
def test_every_backend_takes_a_structured_condition(backend):
    if backend == "compile":
        pytest.importorskip("torch._inductor")
    den = text_den()
    sched = lf.discretize(den.noise, 3, "flowmatch", shift=3.0, final="zero")
    z, cond = torch.randn(3, 1, 2, 2), prompts(3)
    ref = lf.sample(den, z, sched, solver="unipc", cond=cond)
    out = lf.Sampler(den, sched, solver="unipc", backend=backend)(z, cond)
    assert (out - ref).abs().max() <= TOL["lowp_sample_eps"] * 1.2e-7 * ref.abs().max()
    with pytest.raises(lf.ConditionError, match="one entry per sample"):
        lf.sample(den, z, sched, solver="unipc", cond=(cond[0], cond[1][:2]))
    with pytest.raises(lf.ConditionError, match="structure"):
        lf.sample(den, z, sched, solver="unipc", cond={"seq": cond[0], "pooled": cond[1]})


def test_teacher_pairs_and_ld3_with_a_structured_condition(tmp_path):
    den = text_den(guidance=1.5)
    cond = prompts(8)
    data = make_teacher(den, (1, 2, 2), 8, spec=TeacherSpec(nfe=6), cond=cond, show_progress=False)
    data.save(tmp_path / "t.safetensors")
    back = TeacherData.load(tmp_path / "t.safetensors")
    assert isinstance(back.cond, tuple) and all(torch.equal(a, b) for a, b in zip(back.cond, cond))
    assert torch.equal(back.subset(slice(2, 4)).cond[1], cond[1][2:4])
    res = lf.learn(den, solver="euler", nfe=3, shape=(1, 2, 2), n_train=4, n_valid=4, cond=cond, teacher=data,
                   config=lf.LD3Config(rounds_xi=1, rounds_both=1), show_progress=False)
    assert res.schedule.guidance_scale == 1.5 and torch.isfinite(res.schedule.t).all()


@pytest.mark.parametrize("as_dict", [False, True])
def test_the_exported_graph_has_one_input_per_condition_tensor(tmp_path, as_dict):
    pytest.importorskip("onnxruntime")
    from ldd_fast.export import OnnxSampler, to_onnx

    den = text_den(as_dict=as_dict)
    sched = lf.discretize(den.noise, 2, "flowmatch", shift=3.0, final="zero")
    z, cond = torch.randn(2, 1, 2, 2), prompts(2, as_dict)
    info = to_onnx(den, sched, tmp_path / "s.onnx", z, solver="euler", cond=cond)
    expected = ["z", "cond_pooled", "cond_seq"] if as_dict else ["z", "cond_0", "cond_1"]
    assert info.inputs == expected
    runner = OnnxSampler(info.path)
    for batch in (1, 3):
        zz, cc = torch.randn(batch, 1, 2, 2), prompts(batch, as_dict, seed=batch)
        ref = lf.sample(den, zz, sched, solver="euler", cond=cc)
        assert (runner(zz, cc) - ref).abs().max() <= TOL["onnx_fp32"] * ref.abs().max()
    with pytest.raises(lf.ConditionError, match="structure"):
        runner(z, prompts(2, not as_dict))
