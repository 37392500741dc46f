"""One error family: everything ldd-fast raises on purpose is an lf.LddFastError.

1. A scan of the library's source (ldd_fast/ without the command line, kernels/, export/) for
   `raise ValueError(...)`, `raise TypeError(...)` and `raise RuntimeError(...)`: each must be one of
   the internal assertions listed in ALLOWED (a bug in ldd-fast, never a user's input).
2. Every public function and class, called with one keyword argument wrong at a time (an object(),
   NaN for a number, the strings "no" / "false" for a bool), raises an LddFastError that names the
   keyword, and a TypeError as well where the type is the problem. The valid base arguments are a
   tiny exact Gaussian denoiser, so no case gets far even if a check were missing.
3. The silent wrong results this pass removed: a string lower_order_final run as True, a flow schedule
   past t = 1 loaded, and the dtypes of z (lf.sample, lf.Sampler; OnnxSampler's are in test_export).
"""
import ast
import inspect
import math
import os
import pathlib

import pytest
import torch

import ldd_fast as lf
import ldd_fast.export as lfx
from ldd_fast.analytic import GaussianData

ROOT = pathlib.Path(__file__).resolve().parent.parent

# ----- 1. the source scan ----------------------------------------------------------------------------

PLAIN = {"ValueError", "TypeError", "RuntimeError"}
# "path:function" -> why a plain built-in error is right there. Line numbers would go stale.
ALLOWED = {
    "ldd_fast/plan.py:Lin.__mul__": "operator protocol inside solver code: a Lin times a Lin is a bug of a solver",
    "ldd_fast/plan.py:PlanBuilder.call": "PlanBuilder call order (solver code, not user input): an internal assertion",
    "ldd_fast/plan.py:PlanBuilder.correct": "PlanBuilder call order (solver code, not user input): an internal "
                                            "assertion",
    "ldd_fast/plan.py:PlanBuilder.update": "PlanBuilder call order (solver code, not user input): an internal "
                                           "assertion",
    "ldd_fast/plan.py:PlanBuilder.build": "a solver's plan left the wrong registers or calls: an internal assertion",
    "ldd_fast/diffusers_scheduler.py:_no_network": "placeholder network of the scheduler's Denoiser; calling it is a "
                                                   "bug (the pipeline calls its own network)",
}


def _scanned_files():
    for top in ("ldd_fast", "kernels", "export"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel == "ldd_fast/cli.py" or rel.startswith("ldd_fast/cli/"):
                continue  # the command line has its own error (CLIError, an LddFastError) and its own owner
            yield rel, path


def plain_raises(source: str):
    """(line, qualified function name, exception name) of every `raise ValueError/TypeError/RuntimeError(...)`."""
    found = []

    def visit(node, scope):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child, scope + [child.name])
                continue
            if isinstance(child, ast.Raise) and isinstance(child.exc, ast.Call) \
                    and isinstance(child.exc.func, ast.Name) and child.exc.func.id in PLAIN:
                found.append((child.lineno, ".".join(scope) or "<module>", child.exc.func.id))
            visit(child, scope)
    visit(ast.parse(source), [])
    return found


def test_scan_finds_what_it_should():
    src = ("def f():\n    raise ValueError('x')\n"
           "class C:\n    def g(self):\n        if 1:\n            raise TypeError('y')\n"
           "def h():\n    raise lf.LddFastError('z')\n"
           "def k():\n    raise RuntimeError\n")
    assert plain_raises(src) == [(2, "f", "ValueError"), (6, "C.g", "TypeError")]


def test_no_plain_builtin_errors_in_the_library():
    bad, seen = [], set()
    for rel, path in _scanned_files():
        for line, func, name in plain_raises(path.read_text()):
            key = f"{rel}:{func}"
            seen.add(key)
            if key not in ALLOWED:
                bad.append(f"{rel}:{line} ({func}): raise {name}(...)")
    assert not bad, ("raise an LddFastError subclass (lf.InvalidArgument, lf.InvalidArgumentType, lf.Unavailable "
                     "or a named one) instead, or list an internal assertion in ALLOWED:\n" + "\n".join(bad))
    stale = sorted(set(ALLOWED) - seen)
    assert not stale, f"ALLOWED entries with nothing left to allow: {stale}"


# ----- 2. every public callable, one wrong keyword at a time ---------------------------------------------

NOISE = lf.EDM()
SHAPE = (1, 2, 2)
NET = GaussianData(NOISE, torch.linspace(-1, 1, 4).reshape(SHAPE), torch.full(SHAPE, 0.5))
DEN = lf.Denoiser(NET, NOISE, prediction="x0", time_input="sigma", sample_shape=SHAPE)
SCHED = lf.discretize(NOISE, 2, "edm")
Z = torch.randn(2, *SHAPE)
PLAN = lf.plan_for(DEN, SCHED, solver="euler")
SAMPLER = lf.Sampler(DEN, SCHED, solver="euler")
K_SAMPLER = lf.k_sampler(SCHED, solver="euler")
class UNet2DModel(torch.nn.Module):
    """Duck-typed as diffusers' (from_diffusers reads class names and configs, never imports diffusers)."""
    config = {"in_channels": 1, "out_channels": 1, "sample_size": 4, "block_out_channels": (4, 4)}


MISSING = os.path.join(os.sep, "nonexistent-ldd-fast-dir", "x")  # never created: checks come before files
OPTIONS = ("lower_order_final", "variant", "final")  # the **options of the samplers and exporters


@pytest.fixture(scope="module")
def schedule_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("error_family") / "schedule.json"
    SCHED.save(path)
    return str(path)


# name -> (callable, valid base keywords, extra keyword names (**options), the error class of every refusal
# where a named family is the contract instead of InvalidArgument / InvalidArgumentType)
TABLE = {
    "EDM": (lf.EDM, {}, (), lf.NoiseScheduleError),
    "VPLinear": (lf.VPLinear, {}, (), lf.NoiseScheduleError),
    "VPCosine": (lf.VPCosine, {}, (), lf.NoiseScheduleError),
    "VPDiscrete": (lf.VPDiscrete, {"alphas_cumprod": [0.9, 0.5, 0.1]}, (), lf.NoiseScheduleError),
    "RectifiedFlow": (lf.RectifiedFlow, {}, (), lf.NoiseScheduleError),
    "flux_mu": (lf.flux_mu, {"image_seq_len": 1024}, (), None),
    "Denoiser": (lf.Denoiser, {"net": NET, "noise": NOISE, "prediction": "x0"}, (), None),
    "Denoiser.with_guidance": (DEN.with_guidance, {"guidance_scale": 2.0, "null_cond": torch.zeros(SHAPE)}, (),
                               None),
    "Schedule": (lf.Schedule, SCHED.fields(), (), lf.ScheduleError),
    "Schedule.replace": (SCHED.replace, {}, lf.schedule.FIELDS, lf.ScheduleError),
    "Schedule.from_dict": (lf.Schedule.from_dict, {"d": SCHED.to_dict()}, (), lf.ScheduleError),
    "Schedule.load": (lf.Schedule.load, {"path": "<schedule file>"}, (), None),
    "discretize": (lf.discretize, {"noise": NOISE, "nfe": 2}, (), None),
    "make_plan": (lf.make_plan, {"noise": NOISE, "t": SCHED.t, "t_eval": SCHED.t_eval, "solver": "dpmpp"}, (),
                  None),
    "plan_for": (lf.plan_for, {"den": DEN, "schedule": SCHED, "solver": "dpmpp"}, (), None),
    "sample": (lf.sample, {"den": DEN, "z": Z, "schedule": SCHED, "solver": "dpmpp"}, OPTIONS, None),
    "run_plan": (lf.run_plan, {"plan": PLAN, "den": DEN, "z": Z}, (), None),
    "Sampler": (lf.Sampler, {"den": DEN, "schedule": SCHED, "solver": "dpmpp"}, OPTIONS, None),
    "Sampler.__call__": (SAMPLER, {"z": Z}, (), None),
    "from_diffusers": (lf.from_diffusers, {"unet": "<unet>", "scheduler": {"num_train_timesteps": 10,
                                                                          "beta_schedule": "linear"}}, (), None),
    "to_diffusers_scheduler": (lf.to_diffusers_scheduler, {"schedule": SCHED, "solver": "dpmpp"}, (), None),
    "to_sigmas": (lf.to_sigmas, {"schedule": SCHED}, (), None),
    "k_sampler": (lf.k_sampler, {"schedule": SCHED, "solver": "dpmpp"}, OPTIONS, None),
    "k_sampler.__call__": (K_SAMPLER, {"model": lambda x, sigma: DEN(x, sigma), "x": Z * NOISE.prior_scale,
                                       "sigmas": lf.to_sigmas(SCHED)}, (), None),
    "learn": (lf.learn, {"den": DEN, "solver": "euler", "nfe": 2, "shape": SHAPE, "n_train": 1, "n_valid": 1,
                         "show_progress": False}, ("lower_order_final", "variant"), None),
    "LD3Config": (lf.LD3Config, {}, (), None),
    "TeacherSpec": (lf.TeacherSpec, {}, (), None),
    "make_teacher": (lf.make_teacher, {"den": DEN, "shape": SHAPE, "n": 1, "show_progress": False}, (), None),
    "bench": (lf.bench, {"den": DEN, "schedules": SCHED, "solver": "dpmpp", "repeats": 1, "warmup": 0,
                         "show_progress": False}, OPTIONS, None),
    "plan_sampler": (lf.plan_sampler, {"den": DEN, "budget_ms": 1e3, "max_nfe": 2, "candidates": (("euler", 1),),
                                       "backends": ("eager",), "n_select": 2, "n_eval": 2, "teacher_steps": 4,
                                       "repeats": 1, "show_progress": False}, (), None),
    "zoo.load": (lf.zoo.load, {"name": "digits"}, (), None),
    "export.unroll": (lfx.unroll, {"den": DEN, "schedule": SCHED, "solver": "dpmpp"}, OPTIONS, None),
    "export.to_onnx": (lfx.to_onnx, {"den_or_sampler": DEN, "schedule": SCHED, "path": MISSING + ".onnx",
                                     "example_z": Z, "solver": "dpmpp"}, OPTIONS, None),
    "export.OnnxSampler": (lfx.OnnxSampler, {"path": MISSING + ".onnx"}, (), None),
    "export.build_tensorrt": (lfx.build_tensorrt, {"onnx_path": MISSING + ".onnx", "engine_path": MISSING + ".plan",
                                                   "min_batch": 1, "opt_batch": 1, "max_batch": 1}, (), None),
    "export.TensorRTSampler": (lfx.TensorRTSampler, {"engine_path": MISSING + ".plan"}, (), None),
    "export.manifest_path": (lfx.manifest_path, {"onnx_path": MISSING + ".onnx"}, (), None),
    "export.read_manifest": (lfx.read_manifest, {"path": MISSING + ".json"}, (), None),
    "export.write_pipeline_manifest": (lfx.write_pipeline_manifest, {
        "export": lfx.OnnxExport(path=MISSING + ".onnx", data_path=None, nfe=2, inputs=["z"], conditional=False,
                                 schedule_as_input=False, dtype="float32", network_bytes=0, initializer_bytes=0,
                                 file_bytes=0), "den": DEN}, (), None),
}

# Keywords whose message names them another way (the argument's role, not its name).
NAMED_AS = {"den": "Denoiser", "den_or_sampler": "Denoiser", "d": "schedule", "net": "net", "pipe": "Pipeline",
            "unet": "UNet", "z": "tensor", "example_z": "example_z", "schedules": "schedules",
            "plan": "Plan", "scheduler": "scheduler", "alphas_cumprod": "alphas_cumprod"}
# (function, keyword) -> the message names it so (e.g. a schedule field by its field name)
NAMED_AS_IN = {("Sampler.__call__", "z"): "tensor", ("Schedule.from_dict", "d"): "JSON object"}
# Keywords whose named error is the contract: a condition is refused with a ConditionError whatever is wrong.
FAMILY_OF = {"cond": lf.ConditionError, "null_cond": lf.ConditionError}
# Keywords that take strings, where "no" is a wrong value (a ValueError), not a wrong type.
STRING_OK = {("learn", "coefficients")}


def _target(fn):
    return fn.__call__ if isinstance(fn, lf.Sampler) else fn


def _keywords(name):
    fn, base, extra, _ = TABLE[name]
    params = [p for p in inspect.signature(_target(fn)).parameters.values()
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "self"]
    return params, extra


def _kinds(p):
    """Which wrong values apply to a parameter: every one gets an object(); numbers NaN, bools strings."""
    ann = str(p.annotation)
    default = p.default
    is_bool = isinstance(default, bool) or "bool" in ann
    is_num = (isinstance(default, (int, float)) and not isinstance(default, bool)) or "int" in ann or "float" in ann
    kinds = ["object"]
    if is_num:
        kinds.append("nan")
    if is_bool:
        kinds += ["no", "false"]
    return kinds


def _cases():
    out = []
    for name in TABLE:
        params, extra = _keywords(name)
        for p in params:
            for kind in _kinds(p):
                out.append(pytest.param(name, p.name, kind, id=f"{name}-{p.name}-{kind}"))
        for kw in extra:
            kinds = ["object"] + (["no", "false"] if kw == "lower_order_final" else [])
            for kind in kinds:
                out.append(pytest.param(name, kw, kind, id=f"{name}-{kw}-{kind}"))
    return out


BAD = {"object": object(), "nan": math.nan, "no": "no", "false": "false"}


@pytest.mark.parametrize("name,keyword,kind", _cases())
def test_every_wrong_keyword_is_an_ldd_fast_error(name, keyword, kind, schedule_file):
    fn, base, _, family = TABLE[name]
    kwargs = dict(base)
    if kwargs.get("path") == "<schedule file>":
        kwargs["path"] = schedule_file
    if kwargs.get("unet") == "<unet>":
        kwargs["unet"] = UNet2DModel()
    kwargs[keyword] = BAD[kind]
    with pytest.raises(lf.LddFastError) as info:
        fn(**kwargs)
    err = info.value
    family = FAMILY_OF.get(keyword, family)
    if family is not None:
        assert isinstance(err, family), (name, keyword, type(err))
    elif kind == "object" or (kind in ("no", "false") and (name, keyword) not in STRING_OK):
        assert isinstance(err, TypeError), f"{name}({keyword}={BAD[kind]!r}): {type(err).__name__}: {err}"
    said = NAMED_AS_IN.get((name, keyword), NAMED_AS.get(keyword, keyword))
    assert said.lower() in str(err).lower(), f"{name}({keyword}=...): the message does not name it: {err}"


def test_the_table_covers_the_public_names():
    """Every public callable of ldd_fast and ldd_fast.export is in TABLE or listed here with why not."""
    not_called = {
        "NoiseSchedule": "abstract base", "Affine": "a NamedTuple of tensors the Denoiser returns",
        "Plan": "made by make_plan / plan_for", "SOLVERS": "a dict", "LearnResult": "returned by learn",
        "TeacherData": "returned by make_teacher (its files: test_state_file)", "__version__": "a string",
        "UnrolledSampler": "made by unroll", "schedule_tensors": "takes a FoldedPlan made inside unroll",
        "OnnxExport": "returned by to_onnx", "read_metadata": "reads a file (test_export, test_hostile_inputs)",
        "artifact_files": "reads a file (test_export)",
        "from_pipeline": "needs a diffusers pipeline (test_pipelines checks its arguments)",
    }
    names = {n for n in lf.__all__ if not isinstance(getattr(lf, n), type)
             or not issubclass(getattr(lf, n), BaseException)}
    names |= {f"export.{n}" for n in lfx.__all__ if not isinstance(getattr(lfx, n), type)
              or not issubclass(getattr(lfx, n), BaseException)}
    covered = {n.split(".")[0] if not n.startswith("export.") else ".".join(n.split(".")[:2]) for n in TABLE}
    missing = sorted(n for n in names if n not in covered and n.split(".")[-1] not in not_called)
    assert not missing, missing


# ----- 3. no silent wrong result: booleans, a flow's t = 1, dtypes ----------------------------------------

FLOW = lf.RectifiedFlow()


def flow_den():
    net = GaussianData(FLOW, torch.linspace(-0.5, 0.5, 4, dtype=torch.float64), torch.full((4,), 0.5),
                       prediction="flow")
    return lf.Denoiser(net, FLOW, prediction="flow", time_input="t")


@pytest.mark.parametrize("value", ["no", "false", "False", 0, 1, 1.0])
def test_lower_order_final_takes_only_a_bool(value):
    """A truthy string once ran bit-identical to True; now every entry point refuses it by name."""
    sched = lf.discretize(NOISE, 4, "edm")
    z = torch.randn(2, *SHAPE)
    calls = {
        "sample": lambda: lf.sample(DEN, z, sched, solver="dpmpp", lower_order_final=value),
        "Sampler": lambda: lf.Sampler(DEN, sched, solver="dpmpp", lower_order_final=value),
        "plan_for": lambda: lf.plan_for(DEN, sched, solver="dpmpp", lower_order_final=value, force=True),
        "make_plan": lambda: lf.make_plan(NOISE, sched.t, sched.t_eval, solver="dpmpp", lower_order_final=value),
        "unroll": lambda: lfx.unroll(DEN, sched, solver="dpmpp", lower_order_final=value),
        "to_diffusers_scheduler": lambda: lf.to_diffusers_scheduler(sched, solver="dpmpp", lower_order_final=value),
        "TeacherSpec": lambda: lf.TeacherSpec(lower_order_final=value),
        "learn": lambda: lf.learn(DEN, solver="dpmpp", nfe=2, shape=SHAPE, lower_order_final=value),
    }
    for name, call in calls.items():
        with pytest.raises(lf.InvalidArgumentType, match="lower_order_final must be True, False or None"):
            call()
    for ok in (True, False, None):  # the real values still run, and differ where they should
        lf.sample(DEN, z, sched, solver="dpmpp", order=3, lower_order_final=ok)
    on, off = (lf.sample(DEN, z, sched, solver="dpmpp", order=3, lower_order_final=v) for v in (True, False))
    assert not torch.equal(on, off)


@pytest.mark.parametrize("keyword", ["force", "check_finite"])
def test_other_boolean_keywords_take_only_a_bool(keyword):
    for value in ("no", 0, 1, None if keyword == "force" else "yes"):
        with pytest.raises(lf.InvalidArgumentType, match=keyword):
            lf.Sampler(DEN, SCHED, solver="euler", **{keyword: value})


def _flow_schedule_dict(t0: float) -> dict:
    d = lf.discretize(FLOW, 3, "time_uniform", solver="euler").to_dict()
    d["t"][0] = d["t_eval"][0] = t0
    return d


@pytest.mark.parametrize("field", ["t", "t_eval"])
def test_a_flow_schedule_past_pure_noise_is_refused(tmp_path, field):
    """t = 1 + 1e-12 is past a flow's pure noise; it used to load (a 1e-9 tolerance), print as t=[1, ...], and
    sample NaN (lf.Sampler) or raise NonFiniteSample (lf.sample)."""
    d = lf.discretize(FLOW, 3, "time_uniform", solver="euler").to_dict()
    d[field][0] = 1 + 1e-12
    path = tmp_path / "past.json"
    path.write_text(__import__("json").dumps(d))
    with pytest.raises(lf.ScheduleError, match=rf"{field}\[0\]=1.000000000001 is outside"):
        lf.Schedule.load(path)
    with pytest.raises(lf.ScheduleError, match=field):
        lf.Schedule.from_dict(d)


def test_a_flow_schedule_at_exactly_pure_noise_loads_and_samples(tmp_path):
    path = tmp_path / "one.json"
    path.write_text(__import__("json").dumps(_flow_schedule_dict(1.0)))
    sched = lf.Schedule.load(path)
    assert float(sched.t[0]) == 1.0 == float(sched.t_eval[0])
    den, z = flow_den(), torch.randn(3, 4)
    for x in (lf.sample(den, z, sched, solver="euler"), lf.Sampler(den, sched, solver="euler")(z)):
        assert torch.isfinite(x).all()
    # Other noise schedules keep their tolerance (round trips through lambda), within 1e-9 of t_max.
    d = lf.discretize(NOISE, 3, "edm").to_dict()
    d["t"][0] = d["t_eval"][0] = NOISE.t_max * (1 + 1e-12)
    lf.Schedule.from_dict(d)


class Linear(torch.nn.Module):
    """A network with parameters, so that it has a dtype of its own."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x, t):
        return self.lin(x)


def _linear_den():
    torch.manual_seed(0)
    return lf.Denoiser(Linear(), NOISE, prediction="x0")


def test_sample_dtypes():
    """lf.sample: float32 / float64 z run (the network in its own dtype); float16 / bfloat16 z are refused."""
    den, sched, z = _linear_den(), lf.discretize(NOISE, 3, "edm"), torch.randn(2, 4)
    ref = lf.sample(den, z, sched, solver="euler")
    assert lf.sample(den, z.double(), sched, solver="euler").dtype == torch.float64
    assert torch.allclose(lf.sample(den, z.double(), sched, solver="euler").float(), ref, rtol=1e-4, atol=1e-4)
    for dtype in (torch.float16, torch.bfloat16):
        with pytest.raises(lf.InvalidArgumentType, match=rf"z has dtype {dtype}.*float32 or float64.*z.float\(\)"):
            lf.sample(den, z.to(dtype), sched, solver="euler")
        with pytest.raises(lf.InvalidArgumentType, match=f"z has dtype {dtype}"):
            lf.run_plan(lf.plan_for(den, sched, solver="euler"), den, z.to(dtype))
    den.net.to(torch.bfloat16)  # a half-precision network under a float32 solver: cast at the network's boundary
    low = lf.sample(den, z, sched, solver="euler")
    assert low.dtype == torch.float32 and torch.allclose(low, ref, rtol=0.05, atol=0.05)


def test_sampler_dtypes():
    """lf.Sampler feeds its network its own dtype, without a per-call cast: a mismatch is refused up front."""
    den, sched, z = _linear_den(), lf.discretize(NOISE, 3, "edm"), torch.randn(2, 4)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        with pytest.raises(lf.InvalidArgumentType, match=rf"dtype={dtype}.*parameters are torch.float32.*"
                                                         rf"den.net.to\({dtype}\)"):
            lf.Sampler(den, sched, solver="euler", dtype=dtype)
    den.net.to(torch.bfloat16)
    fast = lf.Sampler(den, sched, solver="euler", dtype=torch.bfloat16)
    assert fast(z.to(torch.bfloat16)).dtype == torch.bfloat16
    with pytest.raises(lf.InvalidArgumentType, match="z has dtype torch.float32.*built for torch.bfloat16"):
        fast(z)
    # A network without parameters runs in whatever it is fed: every dtype is the caller's choice.
    assert lf.Sampler(DEN, SCHED, solver="euler", dtype=torch.float16)(Z.half()).dtype == torch.float16


def test_a_guided_denoiser_without_cond_is_refused_by_every_executor():
    """Without cond, a guided model once ran the plain network: an unguided sample nobody asked for."""
    den = lf.zoo.load("digits", guidance_scale=2.0)
    sched, z = lf.discretize(den.noise, 2, "edm"), torch.randn(2, *den.sample_shape)
    for run in (lambda: lf.sample(den, z, sched, solver="euler"),
                lambda: lf.Sampler(den, sched, solver="euler")(z)):
        with pytest.raises(lf.ConditionError, match=r"guidance_scale=2.*needs cond.*with_guidance\(1.0\)"):
            run()
    labels = torch.tensor([3, 5])
    assert lf.sample(den, z, sched, solver="euler", cond=labels).shape == z.shape
    lf.sample(den.with_guidance(1.0), z, sched, solver="euler")  # unguided on purpose
