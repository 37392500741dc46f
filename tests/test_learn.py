"""LD3: parameterisation, gradients, the soft objective's pieces, resumability, and that it learns."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import ldd_fast as lf
from ldd_fast.analytic import GaussianData, GaussianMixture
from ldd_fast.io import load_state
from ldd_fast.learn import (CHECKPOINT, CHECKPOINT_KIND, TEACHER_FILE, LD3Config, LD3Trainer, TimeParams, learn,
                            project_ball)
from ldd_fast.solvers import default_t_eval
from ldd_fast.teacher import TeacherSpec, make_teacher

from tolerances import TOL

QUICK = LD3Config(rounds_xi=1, rounds_both=2)


def mixture_model(noise=None, seed=3):
    noise = noise or lf.EDM()
    g = torch.Generator().manual_seed(seed)
    net = GaussianMixture(noise, torch.randn(8, 2, 4, 4, generator=g), 0.1)
    return lf.Denoiser(net, noise, prediction="x0", time_input="sigma" if isinstance(noise, lf.EDM) else "t")


@pytest.mark.parametrize("noise", [lf.EDM(), lf.VPDiscrete.linear()], ids=repr)
@pytest.mark.parametrize("mode", ["lambda", "time"])
@pytest.mark.parametrize("solver,nfe", [("unipc", 5), ("heun", 5)])
def test_parameterisation(noise, mode, solver, nfe):
    p = TimeParams(noise, solver, nfe, mode)
    t, t_eval = p()
    assert t[0].item() == noise.t_max and t[-1].item() == noise.t_min, "both ends pinned"
    assert torch.equal(t_eval, default_t_eval(solver, t)), "xi_c = 0 leaves the network times alone"
    kind = "logsnr" if mode == "lambda" else "time_uniform"
    assert torch.allclose(t, lf.discretize(noise, nfe, kind, solver=solver).t, rtol=1e-10), "xi = 0 is the default"
    with torch.no_grad():
        p.xi.copy_(torch.randn_like(p.xi) * 3)
        p.xi_c.copy_(torch.randn_like(p.xi_c) * 100)  # far outside the window: clipped
    t, t_eval = p()
    assert (t[1:] < t[:-1]).all() and t[0].item() == noise.t_max and t[-1].item() == noise.t_min
    c, c_eval = p.coord(t), p.coord(t_eval)
    window = 0.5 * (c[1:] - c[:-1]).abs().min()
    shift = (c_eval - default_t_eval(solver, c)).abs()
    assert shift[0] == 0 and (shift <= window * (1 + 1e-9)).all(), "the first call stays; others within the window"
    lf.Schedule(t=t.detach(), t_eval=t_eval.detach(), noise=noise, solver=solver)  # a valid schedule


@pytest.mark.parametrize("mode", ["lambda", "time"])
def test_init_from_any_schedule_is_exact(mode):
    noise = lf.VPLinear()
    s = lf.discretize(noise, 6, "edm")
    t_eval = s.t_eval
    t_eval[1:] *= 1.01  # learned-like network times, inside the window
    s = s.replace(t_eval=t_eval)
    p = TimeParams(noise, "dpmpp", 6, mode, init=s)
    t, t_eval = p()
    assert torch.allclose(t, s.t, rtol=1e-12) and torch.allclose(t_eval, s.t_eval, rtol=1e-12)
    with pytest.raises(ValueError, match="does not fit"):
        TimeParams(noise, "dpmpp", 5, mode, init=s)


def test_loss_gradients_match_finite_differences():
    noise = lf.EDM()
    g = torch.Generator().manual_seed(0)
    net = GaussianData(noise, torch.randn(6, generator=g), 0.3 + 0.5 * torch.rand(6, generator=g))
    den = lf.Denoiser(net, noise, prediction="x0", time_input="t")
    z = torch.randn(3, 6, generator=g, dtype=torch.float64)
    y = net.solve(z * noise.prior_scale, noise.t_max, noise.t_min)
    p = TimeParams(noise, "unipc", 4, "lambda")
    with torch.no_grad():
        p.xi.copy_(torch.tensor([0.3, -0.2, 0.1, 0.4]))
        p.xi_c.copy_(torch.tensor([0.05, -0.03, 0.02]))

    def loss(xi, xi_c):
        t, t_eval = torch.func.functional_call(p, {"xi": xi, "xi_c": xi_c}, ())
        plan = lf.make_plan(noise, t, t_eval, solver="unipc", order=3, lower_order_final=True)
        return (lf.run_plan(plan, den, z) - y).pow(2).mean()

    xi, xi_c = p.xi.detach().clone().requires_grad_(), p.xi_c.detach().clone().requires_grad_()
    gx, gc = torch.autograd.grad(loss(xi, xi_c), (xi, xi_c))
    assert (gx.abs() > 1e-8).any() and (gc.abs() > 1e-8).all(), (gx, gc)
    assert torch.autograd.gradcheck(loss, (xi, xi_c), eps=1e-6, atol=TOL["gradcheck_atol"],
                                    rtol=TOL["gradcheck_rtol"])


def test_ball_projection():
    z0 = torch.zeros(3, 4)
    z = torch.tensor([[0.1, 0, 0, 0], [3.0, 4.0, 0, 0], [0, 0, 0, -2.0]])
    out = project_ball(z, z0, 1.0)
    assert torch.equal(out[0], z[0]), "inside the ball: unchanged"
    assert torch.allclose(out[1], torch.tensor([0.6, 0.8, 0, 0])) and torch.allclose(out[2], torch.tensor([0, 0, 0, -1.0]))


def _trainer(seed=0, **cfg):
    den = mixture_model()
    data = make_teacher(den, (2, 4, 4), 12, spec=TeacherSpec(nfe=10), seed=seed, show_progress=False)
    config = LD3Config(n_train=8, n_valid=4, **cfg)
    return LD3Trainer(den, solver="unipc", order=3, nfe=3, teacher=data, config=config, show_progress=False)


def test_accept_if_better_and_ball():
    tr = _trainer()
    idx = torch.arange(8)
    before = tr.z_train.clone()
    old = tr._soft_step(tr.z_train, tr.train.z, tr.y_train, None, idx, update_params=True)
    with torch.no_grad():
        new = tr.distances(tr.z_train, tr.y_train, None)
    moved = (tr.z_train != before).flatten(1).any(1)
    assert moved.any(), "some samples moved"
    assert (new[moved] < old[moved]).all(), "a sample keeps its new z' only if its loss went down"
    assert torch.equal(tr.z_train[~moved], before[~moved])
    dist = (tr.z_train.double() - tr.train.z.double()).flatten(1).norm(dim=1)
    # z' is stored in float32: |z| ~ 3 rounds at ~2e-7 per element, sqrt(32) elements: ~1e-6 absolute.
    assert (dist <= tr.radius + 2e-6).all(), f"z' left the ball of radius {tr.radius}: {dist}"


def test_non_finite_loss_stops_the_round_and_keeps_good_parameters():
    calls = {"n": 0}

    def flaky(x, y):
        calls["n"] += 1
        d = (x - y).flatten(1).pow(2).mean(1).sqrt()
        return d * float("nan") if calls["n"] == 9 else d

    tr = _trainer()
    tr.dist = flaky
    with pytest.warns(UserWarning, match="non-finite loss"):
        res = tr.fit()
    assert any("stopped" in h for h in res.history)
    assert torch.isfinite(res.schedule.t).all() and torch.isfinite(res.schedule.t_eval).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_learning_lowers_the_held_out_hard_loss(seed):
    den = mixture_model(seed=10 + seed)
    res = learn(den, solver="unipc", order=3, nfe=4, shape=(2, 4, 4), n_train=20, n_valid=20, seed=seed,
                teacher=TeacherSpec(nfe=20), config=QUICK, show_progress=False)
    m = res.schedule.metrics
    assert m["valid_hard"] <= 0.7 * m["valid_hard_init"], m
    assert res.schedule.solver == "unipc" and res.schedule.fingerprint == den.fingerprint()
    assert res.schedule.origin == "ld3" and res.schedule.info["mode"] == "lambda"
    assert res.stats["network_calls"] > 0


def test_learned_schedule_round_trips_and_guards_its_model(tmp_path):
    den = mixture_model()
    res = learn(den, solver="dpmpp", order=3, nfe=3, shape=(2, 4, 4), n_train=6, n_valid=4, config=QUICK,
                out=str(tmp_path), show_progress=False)
    back = lf.Schedule.load(tmp_path / "schedule.json")
    assert torch.equal(back.t, res.schedule.t) and back.fingerprint == den.fingerprint()
    z = torch.randn(2, 2, 4, 4)
    assert torch.allclose(lf.sample(den, z, back), lf.sample(den, z, res.schedule))
    with pytest.raises(lf.IncompatibleSchedule, match="another model"):
        lf.sample(mixture_model(seed=99), z, back)
    assert (tmp_path / "learning_curve.png").exists() and (tmp_path / "time_steps.png").exists()
    assert (tmp_path / TEACHER_FILE).exists()
    with pytest.raises(FileExistsError, match="resume"):
        learn(den, solver="dpmpp", order=3, nfe=3, shape=(2, 4, 4), n_train=6, n_valid=4, config=QUICK,
              out=str(tmp_path), show_progress=False)


def test_checkpointed_calls_give_the_same_gradients():
    tr = _trainer()
    z, y = tr.train.z[:2], tr.y_train[:2]
    grads = []
    for ckpt in (False, True):
        tr.checkpoint_calls = ckpt
        tr.params.zero_grad()
        tr.distances(z, y, None).mean().backward()
        grads.append(tr.params.xi.grad.clone())
    assert torch.allclose(grads[0], grads[1], rtol=1e-6, atol=1e-12)


RUN = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from test_learn import mixture_model
    from ldd_fast.learn import LD3Config, learn
    from ldd_fast.teacher import TeacherSpec
    res = learn(mixture_model(), solver="unipc", order=3, nfe=4, shape=(2, 4, 4), n_train=24, n_valid=8,
                teacher=TeacherSpec(nfe=10), config=LD3Config(rounds_xi=2, rounds_both=4, batch_size=1),
                out={out!r}, resume=True, show_progress=False)
""")


def _run_learning(out, kill_after_round=None):
    code = RUN.format(tests=os.path.dirname(os.path.abspath(__file__)), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
    if kill_after_round is None:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]
        return
    ckpt = os.path.join(out, CHECKPOINT)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(ckpt):
            try:
                if load_state(ckpt, CHECKPOINT_KIND)["round"] >= kill_after_round:
                    break
            except Exception:  # noqa: BLE001 - caught mid-replace; look again
                pass
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_kill_and_resume_gives_the_uninterrupted_result(tmp_path):
    torch.set_num_threads(1)
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    _run_learning(whole)
    _run_learning(broken, kill_after_round=2)
    state = load_state(broken / CHECKPOINT, CHECKPOINT_KIND)
    assert 2 <= state["round"] < 6, "killed mid-run, after round 2"
    _run_learning(broken)  # --resume
    a, b = lf.Schedule.load(whole / "schedule.json"), lf.Schedule.load(broken / "schedule.json")
    assert torch.equal(a.t, b.t) and torch.equal(a.t_eval, b.t_eval)
    assert a.metrics == b.metrics


def test_resume_refuses_another_run(tmp_path):
    den = mixture_model()
    learn(den, solver="unipc", order=3, nfe=3, shape=(2, 4, 4), n_train=6, n_valid=4, config=QUICK,
          out=str(tmp_path), show_progress=False)
    with pytest.raises(ValueError, match="another run"):
        learn(den, solver="unipc", order=3, nfe=3, shape=(2, 4, 4), n_train=6, n_valid=4, config=QUICK,
              out=str(tmp_path), resume=True, loss="l1", show_progress=False)


def test_learn_bad_arguments():
    den = mixture_model()
    with pytest.raises(ValueError, match="mode"):
        learn(den, solver="unipc", nfe=4, shape=(2, 4, 4), mode="sigma")
    with pytest.raises(ValueError, match="odd nfe"):
        learn(den, solver="heun", nfe=4, shape=(2, 4, 4))
    with pytest.raises(TypeError, match="unknown solver option"):
        learn(den, solver="unipc", nfe=4, shape=(2, 4, 4), corrector=False)
    with pytest.raises(ValueError, match="unknown loss"):
        learn(den, solver="unipc", nfe=4, shape=(2, 4, 4), n_train=2, n_valid=2, loss="ssim",
              teacher=TeacherSpec(nfe=4), show_progress=False)
    with pytest.raises(RuntimeError, match="lpips"):
        learn(den, solver="unipc", nfe=4, shape=(2, 4, 4), n_train=2, n_valid=2, loss="lpips",
              teacher=TeacherSpec(nfe=4), show_progress=False)


def test_teacher_is_seeded_and_shardable():
    den = mixture_model()
    a = make_teacher(den, (2, 4, 4), 6, spec=TeacherSpec(nfe=8), seed=5, show_progress=False)
    b = make_teacher(den, (2, 4, 4), 6, spec=TeacherSpec(nfe=8), seed=5, batch_size=4, show_progress=False)
    assert torch.equal(a.z, b.z) and torch.allclose(a.y, b.y, atol=1e-6)
    assert a.info["teacher"]["solver"] == "unipc" and a.info["fingerprint"] == den.fingerprint()


DIST = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    rank, world, init = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    sys.path.insert(0, {tests!r})
    from test_learn import mixture_model
    from ldd_fast.teacher import TeacherSpec, make_teacher
    data = make_teacher(mixture_model(), (2, 4, 4), 7, spec=TeacherSpec(nfe=8), seed=5, batch_size=2,
                        show_progress=False)
    if rank == 0:
        torch.save(data.y, {out!r})
    dist.destroy_process_group()
""")


def test_teacher_generation_data_parallel_over_two_processes(tmp_path):
    out = tmp_path / "y.pt"
    code = DIST.format(tests=os.path.dirname(os.path.abspath(__file__)), out=str(out))
    init = f"file://{tmp_path / 'rendezvous'}"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(r), "2", init], stderr=subprocess.PIPE)
             for r in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()[-2000:]
    single = make_teacher(mixture_model(), (2, 4, 4), 7, spec=TeacherSpec(nfe=8), seed=5, batch_size=2,
                          show_progress=False)
    assert torch.allclose(torch.load(out), single.y, atol=1e-6)


def test_init_best_starts_from_the_best_hand_made_schedule():
    den = mixture_model(lf.VPLinear())
    res = learn(den, solver="unipc", order=3, nfe=4, shape=(2, 4, 4), n_train=6, n_valid=4, init="best",
                teacher=TeacherSpec(nfe=10), config=QUICK, show_progress=False)
    choice = res.schedule.info["init"]
    assert choice["kind"] == min(choice["train_hard"], key=choice["train_hard"].get)
    assert res.schedule.metrics["valid_hard"] <= res.schedule.metrics["valid_hard_init"]
    with pytest.raises(ValueError, match="init must be"):
        learn(den, solver="unipc", nfe=4, shape=(2, 4, 4), n_train=2, n_valid=2, init="worst",
              teacher=TeacherSpec(nfe=4), show_progress=False)


def test_mode_auto_keeps_the_mode_with_the_lower_validation_loss(tmp_path):
    den = mixture_model(lf.VPLinear())
    res = learn(den, solver="unipc", order=3, nfe=3, shape=(2, 4, 4), n_train=4, n_valid=4, mode="auto",
                teacher=TeacherSpec(nfe=6), config=QUICK, out=str(tmp_path), show_progress=False)
    losses = res.schedule.info["mode_selection"]
    assert set(losses) == {"lambda", "time"}
    assert res.schedule.info["mode"] == min(losses, key=losses.get)
    assert res.schedule.metrics["valid_hard"] == min(losses.values())
    assert (tmp_path / "lambda" / "schedule.json").exists() and (tmp_path / "time" / "schedule.json").exists()
    assert lf.Schedule.load(tmp_path / "schedule.json").info["mode"] == res.schedule.info["mode"]
