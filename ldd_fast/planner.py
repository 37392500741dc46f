"""The planner: the best sampler (solver, order, NFE, schedule, backend) that fits a latency budget.

    best = lf.plan_sampler(den, budget_ms=50, batch=8).best

1. Latency model, measured once on this device: every available backend runs UniPC-3 at two NFEs
   (lf.bench: interleaved rounds, medians); a backend's latency is then overhead + nfe x per-call time
   (the solvers differ only in a few fused updates, small beside a network call).
2. Candidates: every (solver, order) of CANDIDATES at NFE 1..max_nfe (Heun: odd NFE) whose predicted
   latency on its fastest backend fits the budget.
3. Quality: teacher RMSE against a converged teacher (TeacherSpec with `teacher_steps`) on two disjoint
   sets of seeds: every hand-made schedule of every candidate is scored on the *selection* seeds, and
   the choices (the schedule kind per candidate, then the candidate) are made there; the table reports
   RMSE on the *held-out* seeds, which no choice looked at (and FD where `metrics` is given).
4. Learned schedules (learn="ld3" or "coefficients") for the `learn_top` best candidates only, under a
   wall-time cap `learn_seconds`, each cached by the model's fingerprint under `cache` (Schedule JSON,
   LD3's teacher pairs and checkpoints as safetensors: resumable, never pickled).
5. The winner is run for real (lf.bench on its backend) and its measured latency is compared with the
   prediction. `out` receives the chosen schedule, the table (Markdown and JSON) and a quality-vs-latency
   plot with the Pareto front. Every row's schedule names the solver, order and options it was scored with
   (a hand-made schedule fits any solver of its layout, so without them `ldd-fast sample --schedule` would
   run its default solver on the winner's times): the saved schedule.json runs what the plan measured, and a
   contradicting solver is refused (IncompatibleSchedule).
Conditions: `select_cond` / `eval_cond` give the selection and held-out rows their own conditions (e.g.
disjoint prompt sets), else `cond_fn(n)` draws them; the latency timing always uses `cond_fn` (or, without
one, the rows of select_cond / eval_cond in turn).
Beside the winner the result names the hand choice a user would make without the planner:
DPM-Solver++ 2M on the EDM schedule at the largest NFE that fits (`hand_choice`: eager, as lf.Sampler
runs by default, and on the chosen backend, so that the backend's share of the gain shows).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

import torch

from . import solvers
from .bench import bench, default_threads, unavailable
from .cond import batch_size as cond_rows, digest, is_cond, map_cond
from .denoiser import Denoiser
from .errors import (ConditionError, InvalidArgument, InvalidArgumentType, NonFiniteSample, Unavailable, boolean,
                     callable_or_none, device_of, dtype_of, integer, path_like, positive_number, shape_of, string)
from .io import atomic_write_text
from .metrics import rmse
from .progress import progress
from .sample import check_finite, plan_for, sample
from .sampler import DTYPES
from .schedule import Schedule, discretize, hand_made
from .teacher import TeacherSpec, make_teacher

CANDIDATES = (("euler", 1), ("heun", 2), ("dpmpp", 2), ("dpmpp", 3), ("unipc", 3), ("ipndm", 4))
LEARN = ("none", "ld3", "coefficients", "generalized")
# Backends the planner times by default: compile's first call costs minutes on a CPU (ask for it by name).
DEFAULT_BACKENDS = ("eager", "triton", "cuda_graph", "onnxruntime", "tensorrt")
PROBE_NFES = (2, 8)
SELECT_SEED, REPORT_SEED = 7_000_001, 7_000_002  # the planner's own seeds, disjoint from LD3's (seed 0, 1, ...)


@dataclass
class PlanResult:
    best: dict
    rows: list[dict]
    latency_model: dict
    hand_choice: list[dict]
    skipped: list[dict] = field(default_factory=list)
    env: dict = field(default_factory=dict)
    schedule: Schedule | None = None

    def pareto(self) -> list[dict]:
        """Rows no other row beats in both predicted latency and held-out RMSE."""
        front, best = [], float("inf")
        for r in sorted(self.rows, key=lambda r: (r["predicted_ms"], r["rmse"])):
            if r["rmse"] < best:
                front.append(r)
                best = r["rmse"]
        return front

    def markdown(self) -> str:
        b = self.best
        lines = [f"# Planner: budget {b['budget_ms']:g} ms at batch {b['batch']}", "",
                 f"Chosen: **{b['solver']} NFE {b['nfe']}, {b['schedule']} schedule, {b['backend']}**: held-out "
                 f"RMSE {b['rmse']:.4f}, predicted {b['predicted_ms']:.2f} ms, measured {b['measured_ms']:.2f} ms "
                 f"(prediction error {100 * b['prediction_error']:+.1f} %)."]
        for h in self.hand_choice:
            lines.append(f"Hand choice (DPM-Solver++ 2M, EDM schedule, largest NFE that fits) on {h['backend']}: "
                         f"NFE {h['nfe']}, held-out RMSE {h['rmse']:.4f}, measured {h['measured_ms']:.2f} ms: the "
                         f"plan's RMSE is {b['rmse'] / h['rmse']:.2f} x this.")
        lines += ["", "Latency model (per backend: overhead + nfe x per call, measured at NFE "
                  f"{', '.join(map(str, PROBE_NFES))}):", ""]
        lines += [f"- {k}: {v['overhead_ms']:.2f} ms + nfe x {v['per_call_ms']:.2f} ms" for k, v in
                  self.latency_model.items()]
        lines += ["", "| solver | NFE | schedule | backend | predicted ms | RMSE (selection) | RMSE (held-out) | FD | "
                  "Pareto |", "|---|---|---|---|---|---|---|---|---|"]
        front = {id(r) for r in self.pareto()}
        for r in sorted(self.rows, key=lambda r: r["rmse"]):
            fd = "-" if r.get("fd") is None else f"{r['fd']:.2f}"
            lines.append(f"| {r['solver']} | {r['nfe']} | {r['schedule']} | {r['backend']} | {r['predicted_ms']:.2f} | "
                         f"{r['rmse_select']:.4f} | {r['rmse']:.4f} | {fd} | {'yes' if id(r) in front else ''} |")
        if self.skipped:
            lines += ["", "Not used:"] + [f"- {s['what']}: {s['reason']}" for s in self.skipped]
        return "\n".join(lines) + "\n"


def latency_model(den, *, backends, batch, device, threads, dtype, cond_fn, sample_shape, repeats,
                  show_progress) -> tuple[dict, list[dict]]:
    """backend -> {"overhead_ms", "per_call_ms"} from UniPC-3 at PROBE_NFES (EDM schedule)."""
    scheds = {f"nfe{n}": discretize(den.noise, n, "edm", solver="unipc") for n in PROBE_NFES}
    res = bench(den, scheds, backends=backends, batches=(batch,), dtype=dtype, threads=threads, device=device,
                solver="unipc", order=3, repeats=repeats, warmup=2, cond_fn=cond_fn, sample_shape=sample_shape,
                show_progress=show_progress)
    model = {}
    for b in {r["backend"] for r in res.rows}:
        ms = {r["nfe"]: r["sampler_ms"]["median"] for r in res.rows if r["backend"] == b}
        if len(ms) < 2:
            continue
        lo, hi = PROBE_NFES
        per_call = (ms[hi] - ms[lo]) / (hi - lo)
        model[b] = {"overhead_ms": max(ms[lo] - lo * per_call, 0.0), "per_call_ms": per_call,
                    "probe_ms": {str(k): v for k, v in ms.items()}}
    skipped = [{"what": s["backend"], "reason": s["reason"]} for s in res.skipped]
    return model, skipped


def _predict(model: dict, nfe: int) -> tuple[str, float]:
    """(fastest backend, its predicted ms) at nfe."""
    return min(((b, m["overhead_ms"] + nfe * m["per_call_ms"]) for b, m in model.items()), key=lambda p: p[1])


def _nfes(solver: str, max_nfe: int) -> list[int]:
    return [n for n in range(1, max_nfe + 1) if solver != "heun" or n % 2 == 1]


def _samples(den, z, sched, solver, order, cond=None):
    with torch.no_grad():
        return sample(den, z, sched, solver=solver, order=order, cond=cond)


def _runnable(den, sched: Schedule, solver: str, order: int) -> Schedule:
    """sched naming the solver, order, variant and lower_order_final it runs with here (what the plan scores).

    Each option is written as resolved, not left to the defaults: lower_order_final's default depends on the
    step count, and a later default must not change what a saved plan runs. A schedule that already names
    them (learned ones) is checked by plan_for and returned as it is.
    """
    plan = plan_for(den, sched, solver=solver, order=order)
    made = {"solver": plan.solver, "order": plan.order, "variant": plan.options.get("variant"),
            "lower_order_final": plan.options.get("lower_order_final")}
    missing = {k: v for k, v in made.items() if v is not None and getattr(sched, k) is None}
    return sched.replace(**missing) if missing else sched


def _solver_fields(sched: Schedule) -> dict:
    return {"variant": sched.variant, "lower_order_final": sched.lower_order_final,
            "coefficients": sched.coefficients is not None}


def _learned(den, solver, order, nfe, *, kind, cache, shape, show_progress, cond=None) -> list[Schedule]:
    """LD3's schedule, or with kind "coefficients" / "generalized" the learned solver (lf.learn's default form /
    the generalized form where the solver has one, else the exact form: Euler and Heun stay as they are) and
    LD3's own round of the same run.

    cond: the selection rows' conditions; lf.learn splits them between its training and validation pairs
    (teacher.pair_conditions: any number of rows). They are part of the cache folder's name: a run over
    other prompts is a new run, not a checkpoint of another run refused on resume.
    """
    from .learn import learn

    name = f"{solver}{order}_nfe{nfe}_{kind}" + ("" if cond is None else f"_cond{digest(cond)[:12]}")
    folder = os.path.join(cache, den.fingerprint()[:16], name)
    res = learn(den, solver=solver, order=order, nfe=nfe, shape=shape, out=folder, resume=True, init="best",
                coefficients=_coefficients_for(kind, solver), cond=cond, show_progress=show_progress)
    return [res.schedule] + ([res.ld3_schedule] if res.ld3_schedule is not None else [])


def _coefficients_for(kind: str, solver: str):
    if kind == "generalized":
        return "generalized" if solver in solvers.GENERALIZED_SOLVERS else "exact"
    return kind == "coefficients"


def _conditions(den, cond, n: int, name: str, count: str):
    """cond checked as every executor checks it, with `n` rows; the error names the planner's argument.
    Not a condition at all is a wrong type (InvalidArgumentType); a condition that does not fit (rows,
    labels, values) is a ConditionError."""
    if cond is None:
        return None
    if not is_cond(cond):
        raise InvalidArgumentType(f"{name} must be a condition per {count} row (a tensor, or a tuple / dict of "
                                  f"tensors, {count}={n} rows each), got {type(cond).__name__}")
    try:
        den.check_cond(cond, n)
    except ConditionError as e:
        raise ConditionError(f"{name} must hold one condition per {count} row ({count}={n}): {e}") from None
    return cond


def _cycled(cond):
    """cond_fn(batch) cycling over the rows of cond (the latency timing's conditions when no cond_fn is given)."""
    rows = cond_rows(cond)
    return lambda batch: map_cond(lambda c: c[torch.arange(batch, device=c.device) % rows], cond)


def plan_sampler(den: Denoiser, *, budget_ms: float, batch: int = 1, max_nfe: int = 10, candidates=CANDIDATES,
                 backends=DEFAULT_BACKENDS, learn: str = "none", learn_top: int = 2, learn_seconds: float = 600.0,
                 n_select: int = 64, n_eval: int = 128, teacher_steps: int = 50, metrics=None, cache: str | None = None,
                 out: str | None = None, device=None, threads: int | None = None, dtype=None, cond_fn=None,
                 sample_shape=None, repeats: int = 10, latency: dict | None = None,
                 show_progress: bool = True, select_cond=None, eval_cond=None) -> PlanResult:
    """The best sampler of `den` under `budget_ms` per call of `batch` samples on this device (module docstring).

    learn: "none" (hand-made schedules only), "ld3", "coefficients" or "generalized" (also LD3 / the learned
    solver, in lf.learn's default form / the generalized one where the solver has it, for the
    learn_top best candidates, under learn_seconds in all; needs `cache`, where they are kept by the model's
    fingerprint). metrics: an object with .fd(x) -> {"fd": float} (e.g. ldd_fast.metrics.DigitsMetrics for the
    built-in models), or None. out: folder for plan.json, plan.md, plan.png and the chosen schedule.json.
    latency: a latency model from an earlier plan on this device and batch (result.latency_model), to plan
    other budgets without timing again.
    cond_fn(n) -> n conditions (a tensor or a tuple / dict of tensors) for a conditional model: the latency
    timing's, and the selection's and held-out rows' unless select_cond / eval_cond are given.
    select_cond, eval_cond: the conditions of the n_select selection rows and of the n_eval held-out rows,
    one row each (e.g. den.encode_prompt(prompts) of two disjoint prompt sets, so that no choice is made on
    a held-out prompt). The selection conditions also serve learning (learn != "none": lf.learn splits
    them between its training and validation pairs). Without cond_fn the timing cycles over select_cond's
    rows (else eval_cond's).
    The result's `schedule` (and out/schedule.json) names the chosen solver, order and options: run it with
    `lf.sample(den, z, result.schedule)` or `ldd-fast sample --schedule out/schedule.json`, no --solver needed.
    """
    if not isinstance(den, Denoiser):
        raise InvalidArgumentType(f"expected an ldd_fast Denoiser, got {type(den).__name__}")
    # Every argument before anything is timed or learned.
    positive_number(budget_ms, "budget_ms")
    integer(batch, "batch", 1)
    integer(max_nfe, "max_nfe", 1)
    string(learn, "learn", LEARN)
    if not isinstance(candidates, (tuple, list)) or not candidates or not all(
            isinstance(c, (tuple, list)) and len(c) == 2 for c in candidates):
        raise InvalidArgumentType(f"candidates must be a non-empty list of (solver, order) pairs, got "
                                  f"{candidates!r:.60}")
    for solver, order in candidates:
        solvers.resolve_order(solvers.get_solver(solver), order)
    if not isinstance(backends, (tuple, list)) or not all(isinstance(b, str) for b in backends):
        raise InvalidArgumentType(f"backends must be a list of backend names, got {backends!r:.60}")
    integer(learn_top, "learn_top", 1)
    positive_number(learn_seconds, "learn_seconds")
    for name, v in (("n_select", n_select), ("n_eval", n_eval), ("teacher_steps", teacher_steps),
                    ("repeats", repeats)):
        integer(v, name, 1)
    if metrics is not None and not callable(getattr(metrics, "fd", None)):
        raise InvalidArgumentType(f"metrics must have .fd(x) -> {{'fd': float}} (e.g. ldd_fast.metrics.DigitsMetrics), "
                                  f"got {type(metrics).__name__}")
    cache = None if cache is None else path_like(cache, "cache")
    out = None if out is None else path_like(out, "out")
    if learn != "none" and cache is None:
        raise InvalidArgument("learned schedules are cached by model fingerprint: pass cache=<folder>")
    device = device_of(device)
    threads = None if threads is None else integer(threads, "threads", 1)
    if dtype is not None:
        dtype_of(dtype, "dtype", DTYPES)
    callable_or_none(cond_fn, "cond_fn")
    if latency is not None and not isinstance(latency, dict):
        raise InvalidArgumentType(f"latency must be a latency model {{backend: {{'overhead_ms', 'per_call_ms'}}}} "
                                  f"(result.latency_model) or None, got {type(latency).__name__}")
    boolean(show_progress, "show_progress")
    select_cond = _conditions(den, select_cond, n_select, "select_cond", "n_select")
    eval_cond = _conditions(den, eval_cond, n_eval, "eval_cond", "n_eval")
    if cond_fn is None and (select_cond is not None or eval_cond is not None):
        cond_fn = _cycled(select_cond if select_cond is not None else eval_cond)
    if sample_shape is not None:
        shape_of(sample_shape, "sample_shape")
    shape = tuple(sample_shape or getattr(den, "sample_shape", None) or ())
    if not shape:
        raise InvalidArgument("this model does not say its sample shape: pass sample_shape=(C, H, W)")
    params = list(den.parameters())
    device = device if device is not None else (params[0].device if params else torch.device("cpu"))
    threads = default_threads() if threads is None else threads
    backends = tuple(b for b in backends if b not in unavailable(backends, device)) or ("eager",)
    t_start = time.perf_counter()

    if latency is not None:
        if not (isinstance(latency, dict) and latency and all(
                isinstance(m, dict) and {"overhead_ms", "per_call_ms"} <= set(m) for m in latency.values())):
            raise InvalidArgument("latency: a latency model {backend: {'overhead_ms', 'per_call_ms'}} "
                                  "(result.latency_model)")
        model, skipped = {b: m for b, m in latency.items() if b in backends}, []
    else:
        model, skipped = latency_model(den, backends=backends, batch=batch, device=device, threads=threads,
                                       dtype=dtype, cond_fn=cond_fn, sample_shape=shape, repeats=repeats,
                                       show_progress=show_progress)
    if not model:
        raise Unavailable(f"no backend could be timed on {device}: {skipped}")
    fits = [(s, o, n) for s, o in candidates for n in _nfes(s, max_nfe) if _predict(model, n)[1] <= budget_ms]
    if not fits:
        fastest = min(_predict(model, 1)[1], _predict(model, 2)[1])
        raise InvalidArgument(f"no sampler fits {budget_ms:g} ms at batch {batch} here: one network call alone is "
                              f"predicted at {fastest:.2f} ms (per-call ms by backend: "
                              f"{json.dumps({k: round(v['per_call_ms'], 3) for k, v in model.items()})})")

    spec = TeacherSpec.default_for(den.noise)
    spec = TeacherSpec(solver=spec.solver, order=spec.order, nfe=teacher_steps, kind=spec.kind,
                       lower_order_final=spec.lower_order_final)
    cond_sel = select_cond if select_cond is not None else None if cond_fn is None else cond_fn(n_select)
    cond_rep = eval_cond if eval_cond is not None else None if cond_fn is None else cond_fn(n_eval)
    # The candidates run on `device` with these as given (make_teacher moves its own batches).
    cond_sel = None if cond_sel is None else map_cond(lambda c: c.to(device), cond_sel)
    cond_rep = None if cond_rep is None else map_cond(lambda c: c.to(device), cond_rep)
    sel = make_teacher(den, shape, n_select, spec=spec, seed=SELECT_SEED, cond=cond_sel, show_progress=show_progress)
    rep = make_teacher(den, shape, n_eval, spec=spec, seed=REPORT_SEED, cond=cond_rep, show_progress=show_progress)
    # A model that returns NaN would fail every candidate below; name it here, as lf.sample does.
    check_finite(sel.y, f"the planner's reference samples ({spec.solver}{spec.order}, {teacher_steps} steps)")
    z_sel, y_sel = sel.z.to(device), sel.y.to(device)
    z_rep, y_rep = rep.z.to(device), rep.y.to(device)

    rows = []
    for solver, order, nfe in progress(fits, desc="planner: hand-made schedules", disable=not show_progress):
        scores = {}
        for kind, sched in hand_made(den.noise, nfe, solver=solver).items():
            try:
                scores[kind] = (rmse(_samples(den, z_sel, sched, solver, order, cond_sel), y_sel).mean().item(), sched)
            except Exception as e:  # noqa: BLE001 - one schedule failing (e.g. non-finite) does not end the plan
                skipped.append({"what": f"{solver}{order} nfe {nfe} {kind}", "reason": f"{type(e).__name__}: {e}"})
        if not scores:
            continue
        kind = min(scores, key=lambda k: scores[k][0])
        backend, predicted = _predict(model, nfe)
        sched = _runnable(den, scores[kind][1], solver, order)
        rows.append({"solver": f"{solver}{order}", "solver_name": solver, "order": order, **_solver_fields(sched),
                     "nfe": nfe, "schedule": kind, "backend": backend, "predicted_ms": predicted,
                     "rmse_select": scores[kind][0], "_schedule": sched})

    if learn != "none":
        spent = 0.0
        top = sorted((r for r in rows if r["solver_name"] not in ("heun",)), key=lambda r: r["rmse_select"])[:learn_top]
        for r in top:
            if spent >= learn_seconds:
                skipped.append({"what": f"learning {r['solver']} nfe {r['nfe']}",
                                "reason": f"the learning cap of {learn_seconds:g} s was spent"})
                continue
            t0 = time.perf_counter()
            try:
                learned = _learned(den, r["solver_name"], r["order"], r["nfe"], kind=learn, cache=cache, shape=shape,
                                   show_progress=show_progress, cond=cond_sel)
            except Exception as e:  # noqa: BLE001
                skipped.append({"what": f"learning {r['solver']} nfe {r['nfe']}", "reason": f"{type(e).__name__}: {e}"})
                continue
            spent += time.perf_counter() - t0
            for sched in learned:
                sched = _runnable(den, sched, r["solver_name"], r["order"])
                score = rmse(_samples(den, z_sel, sched, r["solver_name"], r["order"], cond_sel), y_sel).mean().item()
                rows.append({**r, **_solver_fields(sched), "schedule": sched.origin, "rmse_select": score,
                             "_schedule": sched})

    if not rows:
        raise NonFiniteSample(f"no candidate sampler gave finite samples: {json.dumps(skipped)}")
    for r in rows:
        x = _samples(den, z_rep, r["_schedule"], r["solver_name"], r["order"], cond_rep)
        r["rmse"] = rmse(x, y_rep).mean().item()
        r["fd"] = metrics.fd(x.cpu())["fd"] if metrics is not None else None
    chosen = min(rows, key=lambda r: r["rmse_select"])
    sched = chosen["_schedule"]
    # No solver passed: the schedule's own is what is timed, as `ldd-fast sample --schedule` will run it.
    measured = bench(den, {"plan": sched}, backends=(chosen["backend"],), batches=(batch,), dtype=dtype,
                     threads=threads, device=device, repeats=repeats, warmup=2, cond_fn=cond_fn, sample_shape=shape,
                     show_progress=False)
    measured_ms = measured.rows[0]["sampler_ms"]["median"] if measured.rows else float("nan")
    best = {k: v for k, v in chosen.items() if not k.startswith("_")}
    best.update(budget_ms=float(budget_ms), batch=batch, dtype=str(dtype or torch.float32).replace("torch.", ""),
                threads=threads, device=str(device), measured_ms=measured_ms,
                prediction_error=measured_ms / chosen["predicted_ms"] - 1, seconds=time.perf_counter() - t_start)

    hand = []  # the hand choice, eager (what a user runs without the planner) and on the chosen backend
    for backend in dict.fromkeys(("eager", chosen["backend"])):
        if backend not in model:
            continue
        m = model[backend]
        fit = [n for n in _nfes("dpmpp", max_nfe) if m["overhead_ms"] + n * m["per_call_ms"] <= budget_ms]
        if not fit:
            continue
        hs = discretize(den.noise, max(fit), "edm", solver="dpmpp")
        x = _samples(den, z_rep, hs, "dpmpp", 2, cond_rep)
        hb = bench(den, {"hand": hs}, backends=(backend,), batches=(batch,), dtype=dtype, threads=threads,
                   device=device, solver="dpmpp", order=2, repeats=repeats, warmup=2, cond_fn=cond_fn,
                   sample_shape=shape, show_progress=False)
        hand.append({"solver": "dpmpp2", "nfe": max(fit), "schedule": "edm", "backend": backend,
                     "rmse": rmse(x, y_rep).mean().item(),
                     "measured_ms": hb.rows[0]["sampler_ms"]["median"] if hb.rows else float("nan"),
                     "fd": metrics.fd(x.cpu())["fd"] if metrics is not None else None})
    for r in rows:
        r.pop("_schedule")
    result = PlanResult(best, rows, model, hand, skipped, measured.env, sched)
    if out is not None:
        os.makedirs(out, exist_ok=True)
        sched.save(os.path.join(out, "schedule.json"))
        atomic_write_text(os.path.join(out, "plan.md"), result.markdown())
        atomic_write_text(os.path.join(out, "plan.json"), json.dumps(
            {"best": best, "hand_choice": hand, "latency_model": model, "rows": rows, "skipped": skipped,
             "env": result.env}, indent=1) + "\n")
        try:
            from .plots import plot_plan

            plot_plan(result, os.path.join(out, "plan.png"), model=den)
        except ImportError:
            pass
    return result
