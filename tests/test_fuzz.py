"""Property tests (hypothesis, derandomised, bounded): schedule files and the command line's arguments.

1. Any dict (mostly near-valid schedules with hostile fields mixed in) given to Schedule.from_dict,
   or any bytes written to a file given to Schedule.load, either raises one of the library's own
   errors (LddFastError) or gives a schedule that round-trips through JSON unchanged and samples
   finitely in float32 with an exact Gaussian denoiser for every solver of its layout.
2. Any argument list of the `ldd-fast` commands either parses and validates, or raises the CLI's
   own one-line error: parsing only, never running a command (so a fuzzed -n 10^9 allocates nothing).
"""
import json
import math

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import ldd_fast as lf  # noqa: E402
from ldd_fast.analytic import GaussianData  # noqa: E402
from ldd_fast.cli import CLIError, parse_args  # noqa: E402
from ldd_fast.noise import from_description  # noqa: E402

from test_solvers import CONFIGS  # noqa: E402

SETTINGS = dict(derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

# ----- schedules ------------------------------------------------------------------------------

GARBAGE = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10**30, max_value=10**30),
    st.sampled_from([10**400, -10**400, 2**63, 1e308, -1e308, 5e-324, 0.0, -0.0]),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4),
    st.lists(st.floats(allow_nan=True), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
POSITIVE = st.one_of(st.floats(min_value=1e-12, max_value=1e12), st.sampled_from([1e-300, 1e300, 1e-30, 1e30]))


@st.composite
def noise_descriptions(draw, hostile=True):
    kind = draw(st.sampled_from(["EDM", "VPLinear", "VPCosine", "VPDiscrete", "EDM", "VPLinear"]))
    if kind == "EDM":
        lo = draw(st.one_of(st.floats(min_value=1e-7, max_value=10.0), st.floats(min_value=1e-7, max_value=10.0),
                            POSITIVE))
        d = {"type": kind, "sigma_min": lo, "sigma_max": lo * draw(st.floats(min_value=1.5, max_value=1e7))}
    elif kind == "VPLinear":
        b0 = draw(st.floats(min_value=0.0, max_value=5.0))
        d = {"type": kind, "beta_min": b0, "beta_max": b0 + draw(st.floats(min_value=1e-3, max_value=100.0)),
             "t_min": draw(st.floats(min_value=1e-8, max_value=0.5)),
             "t_max": draw(st.floats(min_value=0.5, max_value=3))}
    elif kind == "VPCosine":
        d = {"type": kind, "s": draw(st.floats(min_value=0.0, max_value=2.0)),
             "t_min": draw(st.floats(min_value=1e-8, max_value=0.5)),
             "t_max": draw(st.floats(min_value=0.5, max_value=1.2))}
    else:
        n = draw(st.integers(2, 12))
        betas = draw(st.lists(st.floats(min_value=1e-6, max_value=0.999), min_size=n, max_size=n))
        ac = torch.cumprod(1 - torch.tensor(betas, dtype=torch.float64), 0).tolist()
        d = {"type": kind, "alphas_cumprod": ac, "t_min": 1 / n, "t_max": 1.0}
        if draw(st.booleans()):
            d["sha256"] = from_description(d).describe()["sha256"] if _builds(d) else "0" * 16
    for _ in range(draw(st.integers(0, 1)) if hostile else 0):  # one hostile parameter now and then
        d[draw(st.sampled_from(sorted(d) + ["extra"]))] = draw(GARBAGE)
    return d


def _builds(d) -> bool:
    try:
        from_description(d)
        return True
    except lf.LddFastError:
        return False


@st.composite
def schedule_dicts(draw, hostile=True):
    """Near-valid schedule dicts over every noise type and layout; hostile: with wrong fields mixed in."""
    noise = draw(noise_descriptions(hostile))
    try:
        lo, hi = from_description(noise).t_min, from_description(noise).t_max
    except lf.LddFastError:
        lo, hi = sorted([draw(POSITIVE), draw(POSITIVE)])
    heun = draw(st.booleans())
    steps = draw(st.integers(1, 5))
    nfe = 2 * steps - 1 if heun else steps
    final = draw(st.sampled_from(["t_min", "t_min", "zero"]))
    inner = sorted(draw(st.lists(st.floats(min_value=lo, max_value=hi), min_size=steps - 1, max_size=steps - 1)),
                   reverse=True)
    t = [hi, *inner, lo]
    if final == "zero":
        t = [hi, *inner, 0.0]
    t_eval = [t[0]] + [x for i in range(1, steps) for x in ((t[i], t[i]) if heun else (t[i],))]
    if draw(st.booleans()):  # learned-like network times inside the range
        t_eval = [t_eval[0]] + [min(hi, max(lo, x * draw(st.floats(min_value=0.9, max_value=1.1))))
                                for x in t_eval[1:]]
    d = {"format_version": 1, "nfe": nfe, "t": t, "t_eval": t_eval, "noise": noise, "final": final,
         "solver": None, "order": None, "variant": None, "lower_order_final": None, "guidance_scale": None,
         "fingerprint": None, "origin": "fuzz", "metrics": {}, "info": {}}
    if draw(st.booleans()):
        solver, order, variant = draw(st.sampled_from([c for c in CONFIGS if (c[0] == "heun") == heun]))
        d.update(solver=solver, order=order, variant=variant)
        if solver in ("dpmpp", "unipc", "ipndm"):
            d["lower_order_final"] = draw(st.sampled_from([None, True, False, "false", 0]))
    for _ in range(draw(st.integers(0, 2)) if hostile else 0):  # hostile fields
        key = draw(st.sampled_from(sorted(d) + ["extra", "metrics", "info", "t", "t_eval"]))
        d[key] = draw(st.one_of(GARBAGE, st.lists(GARBAGE, max_size=4)))
    return d


def _check_accepted(s: lf.Schedule) -> None:
    """Round trip through JSON text, then sample finitely with every solver the schedule allows."""
    text = json.dumps(s.to_dict())
    back = lf.Schedule.from_dict(json.loads(text))
    assert json.dumps(back.to_dict()) == text and back == s
    noise = s.noise
    g = torch.Generator().manual_seed(0)
    den = lf.Denoiser(GaussianData(noise, 0.5 * torch.randn(3, generator=g, dtype=torch.float64),
                                   0.3 + 0.5 * torch.rand(3, generator=g, dtype=torch.float64)),
                      noise, prediction="x0", time_input="t")
    z = torch.randn(2, 3, generator=g)
    configs = [(s.solver, s.order, s.variant)] if s.solver else \
        [c for c in CONFIGS if (c[0] == "heun") == (s.layout == "heun")]
    for solver, order, variant in configs:
        x = lf.sample(den, z, s, solver=solver, order=order, variant=variant)  # NonFiniteSample would fail
        assert x.dtype == torch.float32 and torch.isfinite(x).all()


@settings(max_examples=120, **SETTINGS)
@given(st.one_of(schedule_dicts(hostile=False), schedule_dicts(hostile=True)))
def test_schedule_from_dict_accepts_only_what_samples(d):
    try:
        s = lf.Schedule.from_dict(d)
    except lf.LddFastError:
        return
    _check_accepted(s)


@settings(max_examples=60, **SETTINGS)
@given(st.one_of(schedule_dicts().map(lambda d: json.dumps(d).encode()),
                 st.binary(max_size=64),
                 st.sampled_from([b"", b"{", b"[]", b"null", b"\xff\xfe", b'{"format_version": 1}',
                                  b"[" * 5000 + b"]" * 5000, b'{"format_version": true, "t": [1]}'])))
def test_schedule_load_of_any_file(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("fuzz") / "s.json"
    path.write_bytes(blob)
    try:
        s = lf.Schedule.load(path)
    except lf.LddFastError:
        return
    _check_accepted(s)


# ----- command line -----------------------------------------------------------------------------

VALUES = st.one_of(st.sampled_from(["0", "1", "3", "-1", "2", "4", "7", "1000000000", "1e999", "nan", "inf", "-inf",
                                    "0.5", "x", "", "digits", "edm", "unipc", "heun", "out.png", "out.pt",
                                    "s.json", "a.txt", "1,8,8", "0,8", "--", "-n"]),
                   st.integers(min_value=-10**20, max_value=10**20).map(str),
                   st.floats(allow_nan=True, allow_infinity=True).map(str), st.text(max_size=5))
FLAGS = {
    "sample": ["--model", "--guidance", "--shape", "--solver", "--order", "--variant", "--nfe", "--schedule", "-n",
               "--seed", "--label", "--force", "--out"],
    "learn": ["--model", "--guidance", "--shape", "--solver", "--order", "--variant", "--nfe", "--out", "--work-dir",
              "--resume", "--mode", "--init", "--loss", "--n-train", "--n-valid", "--teacher-solver",
              "--teacher-order", "--teacher-nfe", "--seed", "--checkpoint-calls"],
    "quality": ["--full", "--models", "--nfe", "--heun-nfe", "--solvers", "-n", "--out", "--learned", "--boot"],
    "export": ["--model", "--schedule", "--solver", "--order", "--variant", "--onnx", "--tensorrt", "--fp16",
               "--shape", "--conditional", "--schedule-as-input", "--static-batch", "--opset", "--force",
               "--min-batch", "--opt-batch", "--max-batch", "--strongly-typed", "--timing-cache", "--workspace",
               "--verify"],
    "demo": ["--out", "--quick"],
    "bench": ["--model", "--schedule", "--nfe", "--backends", "--batch", "--fp16", "--repeats", "--warmup", "--json",
              "--md", "--plot", "--pipeline", "--height"],
    "plan": ["--model", "--budget-ms", "--batch", "--max-nfe", "--solvers", "--backends", "--learn", "--learn-top",
             "--learn-seconds", "--n-select", "--n-eval", "--fd", "--out"],
}
for _flags in FLAGS.values():
    _flags += ["--threads", "--device"]
REQUIRED = {"learn": ["--nfe", "4", "--out", "s.json"], "export": ["--model", "digits", "--schedule", "s.json",
                                                                   "--onnx", "s.onnx"], "plan": ["--budget-ms", "20"]}


@st.composite
def command_lines(draw):
    command = draw(st.sampled_from(sorted(FLAGS) + ["nope"]))
    argv = [command] + (REQUIRED.get(command, []) if draw(st.booleans()) else [])
    for _ in range(draw(st.integers(0, 6))):
        argv.append(draw(st.sampled_from(FLAGS.get(command, ["--x"]))))
        for _ in range(draw(st.integers(0, 2))):
            argv.append(draw(VALUES))
    return argv


@settings(max_examples=300, **SETTINGS)
@given(command_lines())
def test_cli_parsing_fails_only_with_its_own_one_line_error(argv):
    try:
        args = parse_args(argv)
    except CLIError as e:
        assert "\n" not in str(e).strip()
        return
    # What parses is within range: no NaN, no non-positive counts reach a command.
    for key in ("n", "nfe", "n_train", "n_valid", "teacher_nfe", "static_batch", "boot", "threads", "repeats",
                "max_nfe", "learn_top", "n_select", "n_eval"):
        v = getattr(args, key, None)
        assert v is None or isinstance(v, list) or v >= 1
    g = getattr(args, "guidance", None)
    assert g is None or math.isfinite(g)
    if args.command == "sample":
        assert g in (None, 1.0) or args.label is not None
