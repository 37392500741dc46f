"""Property tests (hypothesis, derandomised, bounded) of the public API's keyword arguments and of a flow's
time range at pure noise.

1. Any value for any keyword of the sampling entry points (lf.sample, lf.Sampler, lf.plan_for,
   lf.discretize, lf.Denoiser, lf.make_plan, ldd_fast.export.unroll) either runs, and then gives a finite
   sample, or raises an lf.LddFastError: never another class of error. A bool keyword given anything but a
   bool (a string, an int, NaN) is always refused with lf.InvalidArgumentType naming the keyword: "no" is
   truthy and once ran as True.
2. A rectified-flow schedule whose first time t0 lies in [1 - 1e-6, 1 + 1e-6] is accepted exactly when
   t0 <= 1 (past t = 1 a flow is beyond pure noise), and what is accepted samples finitely on every executor.
"""
import math

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings, strategies as st  # noqa: E402

import ldd_fast as lf  # noqa: E402
import ldd_fast.export as lfx  # noqa: E402
from ldd_fast.analytic import GaussianData  # noqa: E402

SETTINGS = dict(derandomize=True, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])
pytestmark = pytest.mark.usefixtures("one_thread")

NOISE = lf.VPLinear()
DEN = lf.Denoiser(GaussianData(NOISE, torch.linspace(-1, 1, 3, dtype=torch.float64), torch.full((3,), 0.4)),
                  NOISE, prediction="x0", time_input="t")
SCHED = lf.discretize(NOISE, 3, "logsnr")
Z = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))

# name -> (callable, valid keywords, the keywords to vary, which of them are bools)
CALLS = {
    "sample": (lf.sample, {"den": DEN, "z": Z, "schedule": SCHED, "solver": "dpmpp"},
               ("solver", "order", "force", "lower_order_final", "variant", "final", "cond"),
               ("force", "lower_order_final")),
    "Sampler": (lambda **kw: lf.Sampler(**kw)(Z), {"den": DEN, "schedule": SCHED, "solver": "unipc"},
                ("solver", "order", "backend", "dtype", "device", "force", "check_finite", "lower_order_final",
                 "variant", "final"), ("force", "check_finite", "lower_order_final")),
    "plan_for": (lf.plan_for, {"den": DEN, "schedule": SCHED, "solver": "ipndm"},
                 ("solver", "order", "force", "final", "lower_order_final", "variant"), ("force", "lower_order_final")),
    "make_plan": (lf.make_plan, {"noise": NOISE, "t": SCHED.t, "t_eval": SCHED.t_eval, "solver": "dpmpp"},
                  ("solver", "order", "final", "lower_order_final", "variant", "coefficient_form"),
                  ("lower_order_final",)),
    "discretize": (lf.discretize, {"noise": NOISE, "nfe": 3}, ("nfe", "kind", "solver", "rho", "final", "t_end",
                                                             "shift", "mu"), ()),
    "Denoiser": (lf.Denoiser, {"net": DEN.net, "noise": NOISE}, ("prediction", "time_input", "guidance_scale",
                                                                "null_cond", "sigma_data", "num_classes",
                                                                "sample_shape"), ()),
    "unroll": (lambda **kw: lfx.unroll(**kw)(Z), {"den": DEN, "schedule": SCHED, "solver": "euler"},
               ("solver", "order", "conditional", "dtype", "schedule_as_input", "force", "lower_order_final",
                "final"), ("conditional", "schedule_as_input", "force", "lower_order_final")),
}
# Where None is a bool keyword's "not set" (solver default), it is a valid value, not a wrong type.
NONE_OK = {"lower_order_final", "conditional"}

VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-3, max_value=5), st.sampled_from([2**70, -0.0, 1e308]),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from(["no", "false", "False", "0", "", "yes", "euler", "dpmpp", "unipc", "heun", "ipndm", "bh1",
                     "bh2", "t_min", "zero", "edm", "logsnr", "x0", "eps", "v", "eager", "triton", "cpu", "meta",
                     "exact", "relaxed", "t", "sigma"]),
    st.text(max_size=3), st.sampled_from([torch.float16, torch.float64, torch.int64, torch.complex64]),
    st.lists(st.integers(min_value=-1, max_value=3), max_size=3).map(tuple),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    st.sampled_from([torch.tensor(float("nan")), torch.zeros(2), torch.zeros(2, dtype=torch.long), object()]))


@st.composite
def one_wrong_keyword(draw):
    name = draw(st.sampled_from(sorted(CALLS)))
    fn, base, keywords, bools = CALLS[name]
    keyword = draw(st.sampled_from(keywords))
    return name, keyword, draw(VALUES)


@settings(max_examples=400, **SETTINGS)
@given(one_wrong_keyword())
def test_any_keyword_value_runs_finitely_or_is_an_ldd_fast_error(case):
    name, keyword, value = case
    fn, base, _, bools = CALLS[name]
    try:
        out = fn(**{**base, keyword: value})
    except lf.LddFastError as e:
        event(f"refused: {type(e).__name__}")
        if keyword in bools and not isinstance(value, bool) and not (value is None and keyword in NONE_OK):
            assert isinstance(e, lf.InvalidArgumentType) and keyword in str(e), (name, keyword, value, e)
        return
    event("ran")
    assert not (keyword in bools and not isinstance(value, bool) and not (value is None and keyword in NONE_OK)), \
        f"{name}({keyword}={value!r}) ran: a bool keyword took a {type(value).__name__}"
    if isinstance(out, torch.Tensor):
        assert torch.isfinite(out.float()).all(), (name, keyword, value)
    if isinstance(out, lf.Schedule):
        assert torch.isfinite(lf.sample(DEN, Z, out, solver="euler" if out.layout == "multistep" else "heun")).all()


FLOW = lf.RectifiedFlow()
FLOW_DEN = lf.Denoiser(GaussianData(FLOW, torch.linspace(-0.5, 0.5, 3, dtype=torch.float64), torch.full((3,), 0.5),
                                    prediction="flow"), FLOW, prediction="flow", time_input="t")
BOUNDARY = st.one_of(st.floats(min_value=1 - 1e-6, max_value=1 + 1e-6),
                     st.sampled_from([1.0, math.nextafter(1.0, 2.0), math.nextafter(1.0, 0.0), 1 + 1e-12, 1 - 1e-12,
                                      1 + 1e-9, 1 + 1e-6, 1 - 1e-6]))


@settings(max_examples=60, **SETTINGS)
@given(BOUNDARY, st.sampled_from(["t", "t_eval", "both"]), st.sampled_from([("euler", 3), ("heun", 3),
                                                                             ("unipc", 3), ("ipndm", 3)]))
def test_a_flow_starts_at_most_at_pure_noise(t0, which, config):
    solver, nfe = config
    d = lf.discretize(FLOW, nfe, "time_uniform", solver=solver).to_dict()
    for field in (("t", "t_eval") if which == "both" else (which,)):
        d[field][0] = t0
    try:
        sched = lf.Schedule.from_dict(d)
    except lf.ScheduleError as e:
        assert t0 > 1 and "outside the noise schedule's range" in str(e), (t0, which, e)
        return
    assert t0 <= 1, f"t0 = {t0!r} > 1 was accepted"
    z = torch.randn(2, 3, generator=torch.Generator().manual_seed(1))
    for x in (lf.sample(FLOW_DEN, z, sched, solver=solver), lf.Sampler(FLOW_DEN, sched, solver=solver)(z)):
        assert torch.isfinite(x).all(), (t0, which, solver)
