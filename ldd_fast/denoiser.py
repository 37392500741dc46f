"""One model contract: D(x, t, cond) -> x0 estimate. Model types are adapted here and nowhere else.

A network predicts eps, x0, v, the flow velocity, or is the raw network F of an
EDM-preconditioned denoiser. All five turn into x0 by an affine map of (x, network
output) whose coefficients depend only on t:

    net_in = c_in(t) * x                       (EDM preconditioning only)
    raw    = net(net_in, t_net(t), cond)       (cond and null cond batched for guidance)
    x0     = a(t) * x + sum_k b_k(t) * raw_k   (raw_k: the cond / uncond halves)

`Denoiser.affine(t)` exposes (c_in, a, b) so that a Plan can fold them into its
linear maps; every conversion is evaluated at the network time t. Guidance is
classifier-free guidance on the network output (Ho & Salimans 2022):
raw = raw_u + w (raw_c - raw_u), so b = (w b_0, (1 - w) b_0).
"""
from __future__ import annotations

import hashlib
import inspect
import json
from typing import Callable, NamedTuple

import torch
from torch import nn

from .cond import is_cond, leaves, map_cond, same_structure, structure
from .errors import ConditionError, InvalidArgument, InvalidArgumentType, finite_number, integer, shape_of, string
from .noise import EDM, NoiseSchedule, VPDiscrete, as_time

PREDICTIONS = ("eps", "x0", "v", "edm", "flow")
TIME_INPUTS = ("t", "index", "sigma", "edm", "t1000")


class Affine(NamedTuple):
    """x0 = a * x + sum_k b[k] * raw[k], with the network fed c_in * x (c_in None: fed x).

    a is None when x0 does not depend on x directly (x0 prediction).
    """
    c_in: torch.Tensor | None
    a: torch.Tensor | None
    b: tuple[torch.Tensor, ...]

    def to(self, device, dtype) -> "Affine":
        def cast(v):
            return None if v is None else v.to(device=device, dtype=dtype)
        return Affine(cast(self.c_in), cast(self.a), tuple(cast(v) for v in self.b))


def _accepts_cond(net) -> bool:
    fn = net.forward if isinstance(net, nn.Module) else net
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3 or any(p.kind == p.VAR_POSITIONAL for p in params)


class Denoiser(nn.Module):
    """Wraps a network as the x0 estimate D(x, t, cond) under a noise schedule.

    Args:
        net: callable net(x, t_net) or net(x, t_net, cond) -> tensor of x's shape.
        noise: the noise schedule the network was trained with.
        prediction: "eps" | "x0" | "v" | "edm" (net is the raw F of EDM's preconditioning,
            Karras et al. 2022, Table 1, with sigma = sigma(t) / alpha(t) and x / alpha) | "flow"
            (the velocity v = eps - x0 of SD3 / Flux / diffusers' flow matching: for a rectified flow
            x0 = x - t v; in general x0 = (x - sigma v) / (alpha + sigma)).
        time_input: what the network receives as time: "t" (continuous t; Flux's transformer),
            "t1000" (1000 t: Stable Diffusion 3's transformer), "index" (VPDiscrete: the continuous
            index N t - 1, never rounded), "sigma" (sigma / alpha), "edm" (ln(sigma / alpha) / 4), or
            a callable of float64 t. Default: "edm" for prediction="edm", "index" for VPDiscrete,
            "sigma" for EDM, else "t".
        guidance_scale: classifier-free guidance weight w (1 = no guidance); the
            guided output is uncond + w (cond - uncond), one batched network call.
        null_cond: the condition meaning "unconditional" (e.g. a null class label or the
            empty-prompt embedding), for one example, in the structure of cond (a tensor, or a
            tuple / dict of tensors such as SD3's prompt embeddings and pooled projections);
            required when guidance_scale != 1.
        sigma_data: EDM's sigma_data (prediction="edm" only).
        num_classes: for a network conditioned on integer class labels, how many labels it
            embeds (the null label included): every executor refuses labels outside
            [0, num_classes) with the same ConditionError, instead of letting a backend clamp
            or wrap them into another class.
        sample_shape: the shape of one sample, when the model knows it (used by the command line).

    guidance_scale and null_cond are fixed once validated (they decide every sample and are
    recorded in schedules and exported graphs): `den.with_guidance(w, null_cond)` returns a new
    Denoiser on the same network.
    """

    def __init__(self, net: Callable, noise: NoiseSchedule, *, prediction: str = "eps",
                 time_input: str | Callable | None = None, guidance_scale: float = 1.0,
                 null_cond: torch.Tensor | None = None, sigma_data: float = 0.5, num_classes: int | None = None,
                 sample_shape: tuple[int, ...] | None = None):
        super().__init__()
        if not callable(net):
            raise InvalidArgumentType(f"net must be callable, got {type(net).__name__}")
        if not isinstance(noise, NoiseSchedule):
            raise InvalidArgumentType("noise must be a NoiseSchedule (lf.EDM, lf.VPLinear, ...), got "
                                      f"{type(noise).__name__}")
        string(prediction, "prediction", PREDICTIONS)
        if time_input is None:
            time_input = ("edm" if prediction == "edm" else "index" if isinstance(noise, VPDiscrete)
                          else "sigma" if isinstance(noise, EDM) else "t")
        if not callable(time_input) and time_input not in TIME_INPUTS:
            error = InvalidArgument if isinstance(time_input, str) else InvalidArgumentType
            raise error(f"time_input must be one of {TIME_INPUTS} or a callable, got {time_input!r:.60}")
        if time_input == "index" and not isinstance(noise, VPDiscrete):
            raise InvalidArgument("time_input='index' needs a VPDiscrete noise schedule")
        guidance_scale = finite_number(guidance_scale, "guidance_scale")
        if guidance_scale != 1.0 and null_cond is None:
            raise InvalidArgument("guidance_scale != 1 needs null_cond: the condition that means 'unconditional' "
                                  "(a null class label or the empty-prompt embedding); copying the conditional "
                                  "one would make guidance do nothing")
        sigma_data = finite_number(sigma_data, "sigma_data")
        if sigma_data <= 0:
            raise InvalidArgument(f"sigma_data must be positive, got {sigma_data}")
        if num_classes is not None:
            integer(num_classes, "num_classes", 1)
        if null_cond is not None:
            if not isinstance(null_cond, (tuple, list, dict)):
                try:
                    null_cond = torch.as_tensor(null_cond)
                except (TypeError, ValueError, RuntimeError):
                    raise ConditionError(f"null_cond must be a tensor or a tuple / list / dict of tensors, got "
                                         f"{type(null_cond).__name__}") from None
            if not is_cond(null_cond):
                raise ConditionError(f"null_cond must be a tensor or a tuple / list / dict of tensors, got "
                                     f"{type(null_cond).__name__}")
            null_cond = map_cond(lambda c: c.detach().clone(), null_cond)
            if any(c.is_floating_point() and not torch.isfinite(c).all() for c in leaves(null_cond)):
                raise ConditionError("null_cond holds NaN or inf")
            if num_classes is not None:
                if not isinstance(null_cond, torch.Tensor):
                    raise ConditionError("a model of class labels (num_classes) takes a tensor null_cond")
                check_labels(null_cond.reshape(-1), num_classes, what="null_cond")
        if sample_shape is not None:
            sample_shape = shape_of(sample_shape, "sample_shape")
        self.net = net
        self.noise = noise
        self.prediction = prediction
        self.time_input = time_input
        self._guidance_scale = guidance_scale
        self._null_cond = null_cond
        self.sigma_data = sigma_data
        self.num_classes = num_classes
        self.sample_shape = sample_shape
        self._net_takes_cond = _accepts_cond(net)
        self._fingerprint: tuple | None = None

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @guidance_scale.setter
    def guidance_scale(self, value):
        raise AttributeError("guidance_scale is fixed when the Denoiser is built; use den.with_guidance(scale) "
                             "for a Denoiser with another scale")

    @property
    def null_cond(self):
        """The unconditional condition (a copy: editing it changes nothing)."""
        return None if self._null_cond is None else map_cond(torch.clone, self._null_cond)

    @null_cond.setter
    def null_cond(self, value):
        raise AttributeError("null_cond is fixed when the Denoiser is built; use den.with_guidance(scale, "
                             "null_cond=...)")

    def with_guidance(self, guidance_scale: float, null_cond=None) -> "Denoiser":
        """The same network with another guidance scale (and null condition, default: this one's)."""
        null = self._null_cond if null_cond is None else null_cond
        new = Denoiser(self.net, self.noise, prediction=self.prediction, time_input=self.time_input,
                       guidance_scale=guidance_scale, null_cond=null, sigma_data=self.sigma_data,
                       num_classes=self.num_classes, sample_shape=self.sample_shape)
        for key, value in vars(self).items():  # what a caller attached (e.g. the zoo's name and info)
            if not key.startswith("_") and key not in vars(new):
                setattr(new, key, value)
        return new.train(self.training)

    def check_cond(self, cond, batch: int, *, values: bool = True) -> None:
        """A ConditionError unless cond fits this model (see `check_condition`). A guided model needs a
        cond: without one every executor would run the plain network, an unguided sample the caller did
        not ask for."""
        if cond is None and self.guidance_scale != 1.0:
            raise ConditionError(f"this Denoiser guides (guidance_scale={self.guidance_scale:g}) and needs cond, the "
                                 f"condition to steer toward; for unguided samples use den.with_guidance(1.0)")
        check_condition(cond, batch, self.num_classes, values=values)

    # ----- the parts a Plan may fold in -------------------------------------------------

    def time_net(self, t) -> torch.Tensor:
        """What the network receives as its time input, float64, differentiable in t."""
        t = as_time(t)
        if callable(self.time_input):
            return as_time(self.time_input(t))
        if self.time_input == "t":
            return t
        if self.time_input == "t1000":
            return 1000.0 * t
        if self.time_input == "index":
            return self.noise.index(t)
        sigma = self.noise.sigma(t) / self.noise.alpha(t)
        return sigma if self.time_input == "sigma" else torch.log(sigma) / 4.0

    def guided(self, cond) -> bool:
        return cond is not None and self.guidance_scale != 1.0

    def affine(self, t, guided: bool = False) -> Affine:
        """Coefficients turning (x, raw output) into x0 at time t, in float64."""
        t = as_time(t)
        alpha, sigma = self.noise.alpha(t), self.noise.sigma(t)
        c_in = None
        if self.prediction == "eps":
            a, b = 1.0 / alpha, -sigma / alpha
        elif self.prediction == "x0":
            a, b = None, torch.ones_like(t)
        elif self.prediction == "v":
            norm = alpha**2 + sigma**2
            a, b = alpha / norm, -sigma / norm
        elif self.prediction == "flow":
            # x = alpha x0 + sigma (v + x0): finite at pure noise (alpha = 0), unlike eps.
            norm = alpha + sigma
            a, b = 1.0 / norm, -sigma / norm
        else:  # EDM preconditioning on x~ = x / alpha at noise level s = sigma / alpha.
            s, sd2 = sigma / alpha, self.sigma_data**2
            c_skip = sd2 / (s**2 + sd2)
            c_out = s * self.sigma_data / torch.sqrt(s**2 + sd2)
            c_in = 1.0 / torch.sqrt(s**2 + sd2) / alpha
            a, b = c_skip / alpha, c_out
        if guided:
            w = self.guidance_scale
            return Affine(c_in, a, (w * b, (1.0 - w) * b))
        return Affine(c_in, a, (b,))

    def net_call(self, x_in: torch.Tensor, t_net: torch.Tensor, cond=None) -> tuple[torch.Tensor, ...]:
        """The network on its own input and time; with guidance, cond and null cond in one batch.

        The network runs in its own dtype (that of its floating-point parameters; a network without
        parameters gets x_in's): x_in and a floating-point cond are cast to it and the output back to
        x_in's dtype, so a float16 network can serve a float32 solver and a float32 one a float64
        solver. This is the one dtype boundary of the eager path, as NetCall's is the exported graph's.
        """
        out_dtype = x_in.dtype
        net_dtype = network_dtype(self.net) or out_dtype
        if net_dtype != out_dtype:
            x_in = x_in.to(net_dtype)
            if cond is not None and is_cond(cond):
                cond = map_cond(lambda c: c.to(net_dtype) if c.is_floating_point() else c, cond)
        batch = x_in.shape[0]
        t_net = t_net.to(device=x_in.device, dtype=torch.float64 if net_dtype == torch.float64 else torch.float32)
        if t_net.dim() == 0:
            t_net = t_net.expand(batch)
        if cond is not None and not self._net_takes_cond:
            raise InvalidArgumentType(f"cond was given but {type(self.net).__name__} takes no condition argument")
        if cond is None:
            out = self.net(x_in, t_net) if not self._net_takes_cond else self.net(x_in, t_net, None)
            raw = (check_output(out, x_in),)
        elif not self.guided(cond):
            raw = (check_output(self.net(x_in, t_net, cond), x_in),)
        else:
            pair = torch.cat([x_in, x_in])
            both = map_cond(lambda c, n: torch.cat([c, n]), cond, self._null_like(cond))
            raw = halves(self.net(pair, torch.cat([t_net, t_net]), both), pair)
        return raw if net_dtype == out_dtype else tuple(r.to(out_dtype) for r in raw)

    def _null_like(self, cond):
        """null_cond on cond's device and dtype, one row per sample (placed once per device and dtype)."""
        first = leaves(cond)[0]
        key = (first.device, tuple(c.dtype for c in leaves(cond)), repr(structure(cond)))
        if getattr(self, "_null_cache", (None,))[0] != key:  # one host-to-device copy, not one per call
            if not same_structure(cond, self._null_cond):
                raise ConditionError(f"cond has the structure {structure(cond)}, null_cond "
                                     f"{structure(self._null_cond)}")
            self._null_cache = (key, map_cond(_like, self._null_cond, cond))
        return map_cond(expand_null, self._null_cache[1], cond)

    # ----- the contract -----------------------------------------------------------------

    def raw(self, x: torch.Tensor, t, cond=None) -> tuple[torch.Tensor, ...]:
        """The network's own output(s) for state x at time t (cond and uncond halves when guided)."""
        aff = self.affine(t, self.guided(cond))
        x_in = x if aff.c_in is None else _bcast(aff.c_in, x) * x
        return self.net_call(x_in, self.time_net(t), cond)

    def forward(self, x: torch.Tensor, t, cond=None) -> torch.Tensor:
        """D(x, t, cond): the x0 estimate. t is a scalar or one time per sample."""
        check_state(x)
        t = as_time(t).to(x.device)
        if t.dim() > 1 or (t.dim() == 1 and t.shape[0] != x.shape[0]):
            raise InvalidArgument(f"t must be a scalar or have one entry per sample ({x.shape[0]}), got "
                                  f"{tuple(t.shape)}")
        aff = self.affine(t, self.guided(cond))
        return combine_output(x, self.raw(x, t, cond), aff)

    # ----- identity ---------------------------------------------------------------------

    def fingerprint(self) -> str:
        """sha256 over the network's class, prediction type, noise schedule and CPU weights.

        The weights are hashed as float32 on the CPU after rounding to float16 precision,
        so casting the model to fp16 or moving it keeps the fingerprint, while any change
        of the weights above fp16 resolution changes it. Cached until a parameter changes.
        """
        tensors = _state_tensors(self.net)
        key = tuple((id(p), p._version, p.dtype, p.device) for _, p in tensors)
        if self._fingerprint is None or self._fingerprint[0] != key:
            h = hashlib.sha256()
            h.update(type(self.net).__qualname__.encode())
            h.update(self.prediction.encode())
            h.update(json.dumps(self.noise.describe(), sort_keys=True).encode())
            for name, p in tensors:
                h.update(name.encode())
                h.update(p.detach().to("cpu", torch.float16).to(torch.float32).contiguous().numpy().tobytes())
            self._fingerprint = (key, h.hexdigest())
        return self._fingerprint[1]

    def __repr__(self):
        time_input = self.time_input if isinstance(self.time_input, str) else "callable"
        return (f"Denoiser({type(self.net).__name__}, prediction={self.prediction!r}, noise={self.noise!r}, "
                f"time_input={time_input!r}, guidance_scale={self.guidance_scale})")


def network_dtype(net) -> torch.dtype | None:
    """The dtype of a network's first floating-point parameter (None: not a module, or no such parameter)."""
    if isinstance(net, nn.Module):
        for p in net.parameters():
            if p.is_floating_point():
                return p.dtype
    return None


def _state_tensors(net) -> list[tuple[str, torch.Tensor]]:
    if not isinstance(net, nn.Module):
        return []
    named = list(net.named_parameters()) + [(n, b) for n, b in net.named_buffers() if b.is_floating_point()]
    return sorted(named, key=lambda kv: kv[0])


def _bcast(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A float64 coefficient (scalar or per sample) as x's dtype, broadcastable against x."""
    c = c.to(device=x.device, dtype=x.dtype)
    return c.view(-1, *([1] * (x.dim() - 1))) if c.dim() == 1 else c


def combine_output(x: torch.Tensor, raw: tuple[torch.Tensor, ...], aff: Affine) -> torch.Tensor:
    out = None if aff.a is None else _bcast(aff.a, x) * x
    for r, b in zip(raw, aff.b):
        term = _bcast(b, r) * r
        out = term if out is None else out + term
    return out


def check_output(out, x: torch.Tensor) -> torch.Tensor:
    """The network's output must have its input's shape: a silent broadcast would give a wrong sample."""
    if not isinstance(out, torch.Tensor):
        raise InvalidArgumentType(f"the network returned {type(out).__name__}, not a tensor")
    if out.shape != x.shape:
        raise InvalidArgument(f"the network returned shape {tuple(out.shape)} for an input of shape {tuple(x.shape)}: "
                              f"its output must have the shape of its input")
    return out


def halves(out, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The cond / uncond halves of one guided call on x = [x_c, x_u] (views). Slices, not chunk(2): torch.export
    cannot prove a symbolic chunk count and would pin the batch."""
    batch = x.shape[0] // 2
    check_output(out, x)
    return out[:batch], out[batch:]


def _like(null: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    null = null.to(cond.device)
    return null.to(cond.dtype) if null.dtype != cond.dtype and null.is_floating_point() else null


def expand_null(null: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """One leaf of null_cond for every sample of cond: as is when batched already, else expanded."""
    if null.shape == cond.shape:
        return null
    if null.shape == cond.shape[1:]:
        return null.expand(cond.shape)
    raise ConditionError(f"null_cond of shape {tuple(null.shape)} fits neither cond {tuple(cond.shape)} "
                         f"nor one example {tuple(cond.shape[1:])}")


def check_condition(cond, batch: int, num_classes: int | None, *, values: bool = True) -> None:
    """A ConditionError unless cond fits a model: a tensor or a tuple / list / dict of tensors, every leaf
    with one row per sample; for a model of class labels (num_classes set) integer labels [batch] within
    [0, num_classes); otherwise finite values. values=False skips what needs the data itself (labels and
    finiteness), which for a tensor on an accelerator would synchronise the host. Every executor
    (eager, Sampler, ONNX, TensorRT) calls this."""
    if cond is None:
        return
    if not is_cond(cond) or any(c.dim() == 0 or c.shape[0] != batch for c in leaves(cond)):
        shape = [tuple(c.shape) for c in leaves(cond)] if is_cond(cond) else type(cond).__name__
        raise ConditionError(f"cond must be a tensor (or a tuple / list / dict of tensors) with one entry per "
                             f"sample ({batch}), got {shape}")
    if not isinstance(cond, torch.Tensor):
        if num_classes is not None:
            raise ConditionError("this model takes integer class labels as cond, not a structure")
        if values and any(c.is_floating_point() and not _all_finite(c) for c in leaves(cond)):
            raise ConditionError("cond holds NaN or inf")
        return
    if num_classes is not None:
        if cond.is_floating_point() or cond.is_complex() or cond.dtype == torch.bool or cond.dim() != 1:
            raise ConditionError(f"cond must be integer class labels of shape [batch] for this model, got "
                                 f"{cond.dtype} of shape {tuple(cond.shape)}")
        if values:
            check_labels(cond, num_classes)
    elif values and cond.is_floating_point() and not _all_finite(cond):
        raise ConditionError("cond holds NaN or inf")


def check_labels(labels: torch.Tensor, num_classes: int, *, what: str = "cond") -> None:
    """A ConditionError naming the first label outside [0, num_classes). Host tensors are read through
    numpy (no torch op runs); a label tensor on an accelerator is copied to the host once."""
    values = labels.detach()
    if values.device.type != "cpu":
        values = values.cpu()
    arr = values.numpy()
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        bad = arr[(arr < 0) | (arr >= num_classes)][0]
        raise ConditionError(f"{what} holds class label {int(bad)}, outside this model's labels 0..{num_classes - 1}")


def _all_finite(x: torch.Tensor) -> bool:
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64, torch.float16):
        import numpy as np

        return bool(np.isfinite(x.detach().numpy()).all())
    return bool(torch.isfinite(x).all())


def check_state(x) -> None:
    if not isinstance(x, torch.Tensor):
        raise InvalidArgumentType(f"expected a tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InvalidArgumentType(f"expected a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise InvalidArgument(f"expected a batch of samples (leading batch dimension >= 1), got shape {tuple(x.shape)}")
