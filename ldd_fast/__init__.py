"""ldd-fast: learned time discretisations (LD3) and compiled low-NFE samplers for diffusion models."""
from ._version import __version__
from .errors import (ConditionError, ForcedSchedule, IncompatibleSchedule, InvalidArgument, InvalidArgumentType,
                     LddFastError, MissingDependency, NoiseScheduleError, NonFiniteSample, ScheduleError,
                     StateFileError, Unavailable)
from .noise import EDM, NoiseSchedule, RectifiedFlow, VPCosine, VPDiscrete, VPLinear
from .denoiser import Affine, Denoiser
from .schedule import Schedule, discretize, flux_mu
from .plan import Plan
from .solvers import SOLVERS, make_plan
from .sample import plan_for, run_plan, sample
from .adapters import from_diffusers
from .pipelines import from_pipeline
from .diffusers_scheduler import to_diffusers_scheduler
from .k_diffusion import k_sampler, to_sigmas
from .sampler import Sampler
from .learn import LD3Config, LearnResult, learn
from .teacher import TeacherData, TeacherSpec, make_teacher


__all__ = [
    "__version__",
    "EDM", "VPLinear", "VPCosine", "VPDiscrete", "RectifiedFlow", "NoiseSchedule", "flux_mu",
    "Denoiser", "Affine", "Schedule", "discretize",
    "Plan", "SOLVERS", "make_plan", "sample", "plan_for", "run_plan",
    "LddFastError", "ScheduleError", "IncompatibleSchedule", "NoiseScheduleError", "StateFileError", "ConditionError",
    "NonFiniteSample", "InvalidArgument", "InvalidArgumentType", "Unavailable", "MissingDependency", "ForcedSchedule",
    "from_diffusers", "from_pipeline", "to_diffusers_scheduler", "to_sigmas", "k_sampler", "Sampler",
    "learn", "LD3Config", "LearnResult", "TeacherSpec", "TeacherData", "make_teacher",
]


def __getattr__(name):
    # Imported on first use, so that `import ldd_fast` needs only torch: `lf.zoo` (the built-in models,
    # safetensors weights), `lf.bench` (the latency benchmark; the module is callable: lf.bench(den, ...))
    # and `lf.plan_sampler` (the planner).
    import importlib

    if name in ("zoo", "bench"):
        return importlib.import_module(f".{name}", __name__)
    if name == "plan_sampler":
        return importlib.import_module(".planner", __name__).plan_sampler
    raise AttributeError(f"module 'ldd_fast' has no attribute {name!r}")
