"""`ldd-fast demo`: the main job on the built-in digits model, in a few minutes on a CPU.

1. a converged reference teacher on held-out seeds;
2. the four hand-made schedules at NFE 4 and 6 for UniPC-3 and DPM-Solver++ 3M;
3. an LD3 schedule learned for UniPC-3 at NFE 4, on the same held-out seeds;
4. the flow-matching model beside it (rectified flow, as SD3 / Flux): its hand-made schedules at
   NFE 4, including the pipelines' own shifted grid (SD3's shift 3);
5. the sampler backends that run on this machine, timed against the network-call floor;
then a table, sample grids and the learned schedule under --out.
"""
from __future__ import annotations

import os
import time

import torch

from .metrics import FD_SAMPLES, DigitsMetrics, rmse
from .sample import sample
from .io import atomic_write_text
from .schedule import KINDS, discretize
from .teacher import TeacherSpec, noise_for

HELDOUT_SEED = 4242


def run(out: str = "ldd_fast_out", quick: bool = False) -> int:
    from .plots import save_grid
    from .learn import LD3Config, learn
    from .zoo.builtin import load

    os.makedirs(out, exist_ok=True)
    t_start = time.perf_counter()
    den = load("digits")
    n = 64 if quick else FD_SAMPLES
    z = noise_for(n, den.sample_shape, HELDOUT_SEED)
    print(f"ldd-fast demo: built-in model 'digits' ({sum(p.numel() for p in den.parameters()) / 1e6:.2f} M "
          f"parameters, EDM, 8x8 digits); {n} held-out seeds", flush=True)
    with torch.no_grad():
        teacher = sample(den, z, discretize(den.noise, 20 if quick else 100, "edm"), solver="unipc")
    metrics = None if quick else DigitsMetrics()

    def grid(name, x):
        path = os.path.join(out, name)
        save_grid(x[:64], path)
        return path

    files = [grid("teacher.png", teacher)]
    rows = []

    def evaluate(name, solver, order, sched, model=den, noise=z, ref=teacher):
        with torch.no_grad():
            x = sample(model, noise, sched, solver=solver, order=order)
        err = rmse(x, ref).mean().item()
        fd = metrics.fd(x)["fd"] if metrics else float("nan")
        rows.append((model.name, f"{solver}{order}", sched.nfe, name, err, fd))
        return x

    for solver, order in (("unipc", 3), ("dpmpp", 3)):
        for nfe in (4, 6):
            for kind in KINDS:
                x = evaluate(kind, solver, order, discretize(den.noise, nfe, kind))
                if solver == "unipc" and nfe == 4:
                    files.append(grid(f"unipc3_nfe4_{kind}.png", x))
    print("learning an LD3 schedule for UniPC-3 at NFE 4 ...", flush=True)
    cfg = LD3Config(rounds_xi=1, rounds_both=1) if quick else None
    res = learn(den, solver="unipc", order=3, nfe=4, shape=den.sample_shape, out=os.path.join(out, "ld3_unipc3_nfe4"),
                resume=True, n_train=4 if quick else 50, n_valid=4 if quick else 50,
                teacher=TeacherSpec(nfe=8) if quick else None, config=cfg)
    x = evaluate("ld3", "unipc", 3, res.schedule)
    files.append(grid("unipc3_nfe4_ld3.png", x))
    sched_path = os.path.join(out, "unipc3_nfe4_ld3.json")
    res.schedule.save(sched_path)

    flow = load("digits_flow")
    print("the flow-matching model 'digits_flow' (rectified flow from pure noise at t = 1, as SD3 / Flux) ...",
          flush=True)
    with torch.no_grad():  # a flow's path converges on a time grid (quality.REFERENCE), not on EDM's
        flow_teacher = sample(flow, z, discretize(flow.noise, 20 if quick else 100, "time_uniform"), solver="unipc",
                              lower_order_final=True)
    files.append(grid("flow_teacher.png", flow_teacher))
    for name, kw in (("time_uniform", {}), ("flowmatch (shift 3, SD3's)", {"shift": 3.0}), ("logsnr", {}),
                     ("edm", {})):
        sched = discretize(flow.noise, 4, name.split()[0], **kw)
        x = evaluate(name, "unipc", 3, sched, model=flow, ref=flow_teacher)
        files.append(grid(f"flow_unipc3_nfe4_{name.split()[0]}.png", x))

    lines = ["| model | solver | nfe | schedule | RMSE to teacher | digits FD |", "|---|---|---|---|---|---|"]
    lines += [f"| {m} | {s} | {k} | {name} | {e:.4f} | {fd:.2f} |" for m, s, k, name, e, fd in rows]
    best = min((r for r in rows if r[0] == "digits" and r[1] == "unipc3" and r[2] == 4 and r[3] != "ld3"),
               key=lambda r: r[4])
    ld3 = next(r for r in rows if r[3] == "ld3")
    summary = (f"UniPC-3 at NFE 4: LD3 RMSE {ld3[4]:.4f} vs best hand-made ({best[3]}) {best[4]:.4f}: "
               f"{best[4] / ld3[4]:.2f}x lower error")
    lines += ["", summary]
    lines += ["", "Backends (median of repeated calls, relative to nfe x one PyTorch network forward; "
                  "onnxruntime also runs the network itself, so it can go below 1):"]
    lines += backend_lines(den, res.schedule, quick)
    table = os.path.join(out, "results.md")
    atomic_write_text(table, "# ldd-fast demo\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {table}, {sched_path}, {len(files)} sample grids and LD3 plots under {out}/ "
          f"({time.perf_counter() - t_start:.0f} s)")
    return 0


def backend_lines(den, sched, quick) -> list[str]:
    """Time the sampler backends that run on this machine against nfe x one network forward."""
    import statistics

    z = torch.randn(8 if quick else 64, *den.sample_shape)
    reps = 3 if quick else 10
    t_net = den.time_net(torch.tensor(1.0))

    def timed(fn):
        fn()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    with torch.no_grad():
        floor = sched.nfe * timed(lambda: den.net_call(z, t_net))
        out = [f"- network floor ({sched.nfe} x one forward, batch {z.shape[0]}): {1e3 * floor:.1f} ms",
               f"- lf.sample (eager, plans on every call): {timed(lambda: sample(den, z, sched)) / floor:.3f} x floor"]
        from .sampler import Sampler, available_backends

        for backend, why_not in available_backends().items():
            if why_not is not None:
                out.append(f"- lf.Sampler backend={backend}: not on this machine ({why_not})")
            elif backend == "compile" and quick:
                out.append("- lf.Sampler backend=compile: skipped in --quick (compiling takes a minute)")
            else:
                fast = Sampler(den, sched, backend=backend)
                out.append(f"- lf.Sampler backend={backend}: {timed(lambda: fast(z)) / floor:.3f} x floor")
        try:
            from .export.bench import onnx_backend

            runner, _ = onnx_backend(den, sched, z)
            out.append(f"- onnxruntime (one exported graph): {timed(lambda: runner(z)) / floor:.3f} x floor")
        except ImportError as e:
            out.append(f"- onnxruntime: needs the [export] extra ({e})")
    return out
