"""`ldd-fast demo`: the main job on the built-in digits model, in a few minutes on a CPU.

1. a converged reference teacher on held-out seeds;
2. the four hand-made schedules at NFE 4 and 6 for UniPC-3 and DPM-Solver++ 3M;
3. LD3 and the learned solver for UniPC-3 at NFE 4 (one lf.learn run with coefficients: LD3's rounds,
   then the solver's weights), on the same held-out seeds, drawn beside the teacher and the best
   hand-made schedule;
4. the flow-matching model beside it (rectified flow, as SD3 / Flux): its hand-made schedules at
   NFE 4, including the pipelines' own shifted grid (SD3's shift 3);
5. the sampler backends that run on this machine, timed against the network-call floor (lf.bench);
6. the planner (lf.plan_sampler) at two latency budgets: the best solver, NFE, schedule and backend
   that fit, against the hand choice (DPM-Solver++ 2M, EDM schedule, largest NFE that fits);
then a table, titled sample grids and the learned schedules under --out.
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


def run(out: str = "ldd_fast_out", quick: bool = False, device=None, threads: int | None = None) -> int:
    from .plots import save_grid
    from .learn import LD3Config, learn
    from .zoo.builtin import load

    os.makedirs(out, exist_ok=True)
    device = torch.device("cpu") if device is None else torch.device(device)
    t_start = time.perf_counter()
    den = load("digits").to(device)
    n = 64 if quick else FD_SAMPLES
    z = noise_for(n, den.sample_shape, HELDOUT_SEED).to(device)
    print(f"ldd-fast demo: built-in model 'digits' ({sum(p.numel() for p in den.parameters()) / 1e6:.2f} M "
          f"parameters, EDM, 8x8 digits); {n} held-out seeds, {torch.get_num_threads()} thread(s), {device}",
          flush=True)
    _stage(t_start, "the reference teacher (UniPC-3, 100 steps) on the held-out seeds")
    with torch.no_grad():
        teacher = sample(den, z, discretize(den.noise, 20 if quick else 100, "edm"), solver="unipc")
    metrics = None if quick else DigitsMetrics()
    _stage(t_start, "hand-made schedules at NFE 4 and 6 (UniPC-3, DPM-Solver++ 3M)")

    def grid(name, x, title):
        path = os.path.join(out, name)
        save_grid(x[:64], path, title=title)
        return path

    teacher_name = f"teacher (unipc3, {20 if quick else 100} steps)"
    files = [grid("teacher.png", teacher, f"{_label(den)}: {teacher_name}")]
    rows = []
    unipc4 = {}  # UniPC-3 NFE 4 samples by schedule, for the side-by-side figure

    def evaluate(name, solver, order, sched, model=den, noise=z, ref=teacher, file=None):
        with torch.no_grad():
            x = sample(model, noise, sched, solver=solver, order=order)
        err = rmse(x, ref).mean().item()
        fd = metrics.fd(x.cpu())["fd"] if metrics else float("nan")
        rows.append((model.name, f"{solver}{order}", sched.nfe, name, err, fd))
        if file:
            files.append(grid(file, x, f"{_label(model)}: {solver}{order} NFE {sched.nfe}, {name}\n"
                                       f"RMSE to the teacher {err:.4f} ({len(noise)} seeds)"))
        return x

    for solver, order in (("unipc", 3), ("dpmpp", 3)):
        for nfe in (4, 6):
            for kind in KINDS:
                drawn = solver == "unipc" and nfe == 4
                x = evaluate(kind, solver, order, discretize(den.noise, nfe, kind),
                             file=f"unipc3_nfe4_{kind}.png" if drawn else None)
                if drawn:
                    unipc4[kind] = x
    _stage(t_start, f"learning LD3 and the learned solver for UniPC-3 at NFE 4 (teacher pairs, {2 if quick else 7} "
                    f"LD3 rounds, then {1 if quick else 6} with the solver's weights)")
    cfg = LD3Config(rounds_xi=1, rounds_both=1, rounds_coef=1) if quick else None
    res = learn(den, solver="unipc", order=3, nfe=4, shape=den.sample_shape, out=os.path.join(out, "learn_unipc3_nfe4"),
                resume=True, n_train=4 if quick else 50, n_valid=4 if quick else 50, coefficients=True,
                teacher=TeacherSpec(nfe=8) if quick else None, config=cfg)
    _stage(t_start, f"learned in {res.stats['seconds']:.0f} s; sampling with LD3 and the learned solver")
    unipc4["ld3"] = evaluate("ld3", "unipc", 3, res.ld3_schedule, file="unipc3_nfe4_ld3.png")
    unipc4["learned solver"] = evaluate("learned solver", "unipc", 3, res.schedule, file="unipc3_nfe4_learned.png")
    sched_path = os.path.join(out, "unipc3_nfe4_ld3.json")
    res.ld3_schedule.save(sched_path)
    res.schedule.save(os.path.join(out, "unipc3_nfe4_learned.json"))
    files.append(compare(os.path.join(out, "unipc3_nfe4_compare.png"), den, teacher, teacher_name, unipc4, rows))

    flow = load("digits_flow").to(device)
    _stage(t_start, "the flow-matching model 'digits_flow' (rectified flow from pure noise at t = 1, as SD3 / Flux)")
    with torch.no_grad():  # a flow's path converges on a time grid (quality.REFERENCE), not on EDM's
        flow_teacher = sample(flow, z, discretize(flow.noise, 20 if quick else 100, "time_uniform"), solver="unipc",
                              lower_order_final=True)
    files.append(grid("flow_teacher.png", flow_teacher,
                      f"{_label(flow)}: teacher (unipc3, {20 if quick else 100} time-uniform steps)"))
    for name, kw in (("time_uniform", {}), ("flowmatch (shift 3, SD3's)", {"shift": 3.0}), ("logsnr", {}),
                     ("edm", {})):
        sched = discretize(flow.noise, 4, name.split()[0], **kw)
        evaluate(name, "unipc", 3, sched, model=flow, ref=flow_teacher, file=f"flow_unipc3_nfe4_{name.split()[0]}.png")

    lines = ["| model | solver | nfe | schedule | RMSE to teacher | digits FD |", "|---|---|---|---|---|---|"]
    lines += [f"| {m} | {s} | {k} | {name} | {e:.4f} | {fd:.2f} |" for m, s, k, name, e, fd in rows]
    best = _best_hand_made(rows)
    ld3 = next(r for r in rows if r[3] == "ld3")
    learned = next(r for r in rows if r[3] == "learned solver")
    summary = (f"UniPC-3 at NFE 4: LD3 RMSE {ld3[4]:.4f} vs best hand-made ({best[3]}) {best[4]:.4f}: "
               f"{best[4] / ld3[4]:.2f}x lower error; learned solver (same run) RMSE {learned[4]:.4f}, "
               f"{learned[4] / ld3[4]:.2f}x LD3's")
    lines += ["", summary]
    lines += ["", "Backends (lf.bench: median of interleaved rounds, relative to nfe x one eager network forward; "
                  "onnxruntime also runs the network itself, so it can go below 1):"]
    lines += backend_lines(den, res.ld3_schedule, quick, device, t_start)
    lines += ["", "Planner (lf.plan_sampler, hand-made schedules; budgets from this machine's network call):"]
    lines += planner_lines(den, quick, device, os.path.join(out, "plan"), t_start)
    table = os.path.join(out, "results.md")
    atomic_write_text(table, "# ldd-fast demo\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {table}, {sched_path}, {len(files)} sample grids and the learning plots under {out}/ "
          f"({time.perf_counter() - t_start:.0f} s)")
    return 0


def _stage(t_start: float, what: str) -> None:
    print(f"[{time.perf_counter() - t_start:5.0f} s] {what} ...", flush=True)


def _label(den) -> str:
    return f"{den.name} ({type(den.noise).__name__})"


def _best_hand_made(rows):
    return min((r for r in rows if r[0] == "digits" and r[1] == "unipc3" and r[2] == 4 and r[3] in KINDS),
               key=lambda r: r[4])


def compare(path, den, teacher, teacher_name, unipc4, rows, n=16) -> str:
    """Teacher, best hand-made schedule, LD3 and the learned solver, one row each on the same n seeds."""
    from .plots import save_grid

    err = {r[3]: r[4] for r in rows if r[0] == den.name and r[1] == "unipc3" and r[2] == 4}
    best = _best_hand_made(rows)[3]
    panels = [(teacher_name, teacher)] + [(f"{what}: RMSE {err[name]:.4f}", unipc4[name]) for what, name in
                                          ((f"best hand-made ({best})", best), ("LD3", "ld3"),
                                           ("learned solver", "learned solver"))]
    save_grid(torch.cat([x[:n].cpu() for _, x in panels]), path, rows=[caption for caption, _ in panels],
              title=f"{_label(den)}: unipc3, NFE 4; the same {n} seeds in every row (RMSE to the teacher over all "
                    f"{len(teacher)} seeds)")
    return path


def backend_lines(den, sched, quick, device, t_start) -> list[str]:
    """Time the sampler backends that run on this machine against nfe x one network forward (lf.bench)."""
    from .bench import bench

    backends = ("eager", "triton", "cuda_graph", "onnxruntime")
    _stage(t_start, f"timing the backends {', '.join(backends)}")
    res = bench(den, {"ld3": sched}, backends=backends, batches=(8 if quick else 64,), device=device,
                threads=torch.get_num_threads(), repeats=3 if quick else 10, warmup=1, show_progress=False)
    out = [f"- network floor ({sched.nfe} x one forward, batch {res.rows[0]['batch']}): "
           f"{res.rows[0]['eager_floor_ms']:.1f} ms"] if res.rows else []
    for r in res.rows:
        name = ("onnxruntime (one exported graph)" if r["backend"] == "onnxruntime"
                else f"lf.Sampler backend={r['backend']}")
        out.append(f"- {name}: {r['ratio_eager_floor']['median']:.3f} x floor (parity {r['parity']:.1e})")
    out += [f"- {k['backend']}: not on this machine ({k['reason']})" for k in res.skipped]
    out.append("- lf.Sampler backend=compile: not timed here (its first call compiles for about two minutes on a "
               "CPU): `ldd-fast bench --backends eager,compile`")
    return out


def planner_lines(den, quick, device, out, t_start) -> list[str]:
    """lf.plan_sampler at two budgets: about 3 and 8 network calls of this machine at batch 8."""
    from .bench import bench
    from .planner import plan_sampler

    batch = 8
    probe = bench(den, discretize(den.noise, 1, "edm"), backends=("eager",), batches=(batch,), device=device,
                  threads=torch.get_num_threads(), repeats=5, warmup=1, show_progress=False)
    call_ms = probe.rows[0]["sampler_ms"]["median"]
    lines = []
    for calls in (3, 8):
        budget = round(calls * call_ms, 1)
        _stage(t_start, f"planner: budget {budget:g} ms at batch {batch} (about {calls} eager network calls here)")
        small = dict(max_nfe=4, candidates=(("euler", 1), ("dpmpp", 2), ("unipc", 3)), n_select=16, n_eval=16,
                     teacher_steps=12, repeats=2) if quick else dict(max_nfe=10, n_select=64, n_eval=128,
                                                                     teacher_steps=50, repeats=10)
        res = plan_sampler(den, budget_ms=budget, batch=batch, backends=("eager", "onnxruntime"), **small,
                           device=device, threads=torch.get_num_threads(),
                           out=os.path.join(out, f"budget_{calls}calls"), show_progress=False)
        b = res.best
        lines.append(f"- budget {budget:g} ms: {b['solver']} NFE {b['nfe']}, {b['schedule']} schedule, {b['backend']}: "
                     f"held-out RMSE {b['rmse']:.4f}, predicted {b['predicted_ms']:.1f} ms, measured "
                     f"{b['measured_ms']:.1f} ms")
        for h in res.hand_choice:
            lines.append(f"  - by hand (DPM-Solver++ 2M, EDM, NFE {h['nfe']}, {h['backend']}): RMSE {h['rmse']:.4f}, "
                         f"{h['measured_ms']:.1f} ms")
    return lines
