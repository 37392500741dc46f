"""Adapters from other ecosystems to the one Denoiser contract: diffusers UNets with their DDPM-family
schedulers (SDXL's addition embedding included), and the flow-matching transformers of Stable Diffusion 3,
Flux and Wan 2.1 with a FlowMatchEulerDiscreteScheduler or a multistep scheduler on flow sigmas.

diffusers is never imported here: a UNet and a scheduler are recognised by their
class names and `config` (duck typing), so the core stays importable without it.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from .cond import is_cond
from .denoiser import Denoiser
from .errors import ConditionError, InvalidArgument, InvalidArgumentType, finite_number, string
from .noise import RectifiedFlow, VPDiscrete

# diffusers' prediction_type -> our prediction; our own names are accepted as they are.
PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")


def _class_names(obj) -> set[str]:
    return {c.__name__ for c in type(obj).__mro__}


def _get(config, key, default=None):
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


# addition_embed_type -> the added_cond_kwargs entries a UNet2DConditionModel reads beside encoder_hidden_states
# (diffusers' UNet2DConditionModel.get_aug_embed). A condition names them flat, by the forward's own names.
ADDED_COND = {"text_time": ("text_embeds", "time_ids")}  # SDXL: pooled text embedding, size / crop micro-conditions


class DiffusersUNet(nn.Module):
    """A diffusers UNet2DModel / UNet2DConditionModel as net(x, t_net, cond=None) -> output.

    t_net is the continuous float index N t - 1 (never rounded); cond is the class
    label tensor (UNet2DModel with a class embedding) or encoder_hidden_states of
    shape [B, L, D] (UNet2DConditionModel). A UNet2DConditionModel with an addition
    embedding (SDXL's "text_time") takes a dict keyed by its forward argument names, the
    added_cond_kwargs entries flattened: {"encoder_hidden_states", "text_embeds",
    "time_ids"}. The UNet runs in its own dtype; its output is cast back to x's dtype, so
    a float16 UNet can drive a float32 state.
    """

    def __init__(self, unet: nn.Module, kind: str, channel_split: int | None = None, added: tuple[str, ...] = ()):
        super().__init__()
        self.unet = unet
        self.kind = kind  # "plain" | "class" | "text"
        self.added = tuple(added)  # added_cond_kwargs keys the condition must carry
        cfg = unet.config
        self.in_channels = int(_get(cfg, "in_channels"))
        self.sample_size = _get(cfg, "sample_size")
        # UNet2DConditionModel forwards odd sizes to its upsamplers; UNet2DModel fails deep inside.
        self.down_factor = 2 ** (len(_get(cfg, "block_out_channels", ())) - 1) if kind != "text" else 1
        # Learned-variance UNets return [eps, variance] along channels; the ODE uses the first part.
        self.channel_split = channel_split

    def forward(self, x: torch.Tensor, t_net: torch.Tensor, cond=None) -> torch.Tensor:
        self._check_input(x)
        dtype = getattr(self.unet, "dtype", None) or next(self.unet.parameters()).dtype
        x_in = x.to(dtype)
        if self.kind == "plain":
            if cond is not None:
                raise InvalidArgument("cond was given, but this UNet2DModel is unconditional (no class embedding: "
                                      "num_class_embeds / class_embed_type unset); pass cond=None")
            out = self.unet(x_in, t_net, return_dict=False)[0]
        elif self.kind == "class":
            if cond is None:
                raise InvalidArgument("this UNet2DModel has a class embedding and needs cond: the class labels "
                                      "(one per sample), passed as class_labels")
            out = self.unet(x_in, t_net, class_labels=cond, return_dict=False)[0]
        else:
            if cond is None:
                raise InvalidArgument("a UNet2DConditionModel needs cond: encoder_hidden_states of shape [B, L, D] "
                                      f"(e.g. the prompt embedding){self._dict_hint()}; got cond=None")
            states, added = self._split(cond)
            if not isinstance(states, torch.Tensor) or states.dim() != 3:
                shape = tuple(states.shape) if isinstance(states, torch.Tensor) else type(states).__name__
                raise InvalidArgument("cond for a UNet2DConditionModel is encoder_hidden_states of shape [B, L, D]"
                                      f"{self._dict_hint()}, got {shape}")
            extra = {} if not self.added else {"added_cond_kwargs": {k: v.to(dtype) for k, v in added.items()}}
            out = self.unet(x_in, t_net, encoder_hidden_states=states.to(dtype), return_dict=False, **extra)[0]
        if self.channel_split is not None:
            out = out[:, :self.channel_split]
        return out.to(x.dtype)

    def _dict_hint(self) -> str:
        if not self.added:
            return ""
        return " in a dict with " + ", ".join(repr(k) for k in self.added) + " (the added_cond_kwargs)"

    def _split(self, cond):
        """(encoder_hidden_states, {added key: tensor}) from a tensor or a dict named as the forward's arguments."""
        if not isinstance(cond, Mapping):
            if self.added:
                added = ", ".join(repr(k) for k in self.added)
                raise ConditionError("this UNet2DConditionModel has an addition embedding: its cond is a dict "
                                     f"{{'encoder_hidden_states': [B, L, D], {added}}} (added_cond_kwargs "
                                     f"flattened), got {type(cond).__name__}")
            return cond, {}
        want = {"encoder_hidden_states", *self.added}
        if set(cond) != want:
            raise ConditionError(f"cond for this UNet2DConditionModel is a dict with keys {sorted(want)} (its forward "
                                 f"argument names, added_cond_kwargs flattened), got keys {sorted(cond)}")
        return cond["encoder_hidden_states"], {k: cond[k] for k in self.added}

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise InvalidArgument(f"a diffusers UNet2D takes images [B, C, H, W], got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise InvalidArgument(f"the UNet has in_channels={self.in_channels}, but the state has {x.shape[1]} "
                                  f"channels (shape {tuple(x.shape)})")
        h, w = x.shape[-2:]
        if h % self.down_factor or w % self.down_factor:
            raise InvalidArgument(f"the UNet downsamples by {self.down_factor} (trained "
                                  f"sample_size={self.sample_size}); "
                                  f"spatial size {h}x{w} is not divisible by it")


def _unet_kind(unet) -> str:
    names = _class_names(unet)
    cfg = getattr(unet, "config", None)
    if not isinstance(unet, nn.Module) or cfg is None:
        raise InvalidArgumentType("expected a diffusers UNet2DModel or UNet2DConditionModel, got "
                                  f"{type(unet).__name__}")
    if "UNet2DConditionModel" in names or _get(cfg, "cross_attention_dim") is not None:
        if getattr(unet, "class_embedding", None) is not None:
            raise InvalidArgument("this UNet2DConditionModel also needs class_labels (a class embedding); "
                                  "from_diffusers passes encoder_hidden_states and added_cond_kwargs only. Wrap it in "
                                  "your own net(x, t_net, cond) and use lf.Denoiser")
        added = _get(cfg, "addition_embed_type")
        if added is not None and added not in ADDED_COND:
            raise InvalidArgument(f"this UNet2DConditionModel has addition_embed_type={added!r}; from_diffusers "
                                  f"supports {', '.join(map(repr, ADDED_COND))} (SDXL) only. Wrap it in your own "
                                  "net(x, t_net, cond) and use lf.Denoiser")
        return "text"
    if "UNet2DModel" in names or _get(cfg, "in_channels") is not None:
        return "class" if getattr(unet, "class_embedding", None) is not None else "plain"
    raise InvalidArgumentType(f"expected a diffusers UNet2DModel or UNet2DConditionModel, got {type(unet).__name__}")


def _prediction(scheduler_config, prediction: str | None) -> str:
    p = prediction if prediction is not None else _get(scheduler_config, "prediction_type", "epsilon")
    if p in PREDICTION_TYPES.values():
        return p
    if p not in PREDICTION_TYPES:
        raise InvalidArgument(f"unsupported prediction type {p!r}: diffusers' prediction_type must be one of "
                              f"{sorted(PREDICTION_TYPES)} (ours: {sorted(PREDICTION_TYPES.values())})")
    return PREDICTION_TYPES[p]


def _alphas_cumprod_from_config(cfg) -> torch.Tensor:
    """alphas_cumprod exactly as diffusers' DDPM-family schedulers compute it (float32 betas)."""
    n = _get(cfg, "num_train_timesteps", 1000)
    trained = _get(cfg, "trained_betas")
    schedule = _get(cfg, "beta_schedule")
    if trained is not None:
        betas = torch.tensor(trained, dtype=torch.float32)
    elif schedule is None:
        raise InvalidArgument("the scheduler has neither alphas_cumprod nor betas (no trained_betas or beta_schedule "
                              "in its config): it is not a DDPM-family (discrete VP) scheduler")
    elif schedule == "linear":
        betas = torch.linspace(_get(cfg, "beta_start", 1e-4), _get(cfg, "beta_end", 0.02), n, dtype=torch.float32)
    elif schedule == "scaled_linear":
        betas = torch.linspace(_get(cfg, "beta_start", 1e-4) ** 0.5, _get(cfg, "beta_end", 0.02) ** 0.5, n,
                               dtype=torch.float32) ** 2
    elif schedule == "squaredcos_cap_v2":
        def alpha_bar(s):
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = torch.tensor([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)],
                             dtype=torch.float32)
    elif schedule == "sigmoid":
        start, end = _get(cfg, "beta_start", 1e-4), _get(cfg, "beta_end", 0.02)
        betas = torch.sigmoid(torch.linspace(-6, 6, n)) * (end - start) + start
    else:
        raise InvalidArgument(f"unsupported beta_schedule {schedule!r}; expected one of {BETA_SCHEDULES} or "
                              "trained_betas")
    if _get(cfg, "rescale_betas_zero_snr", False):
        # Lin et al. 2024, Algorithm 1: shift sqrt(alphas_cumprod) to end at zero, keep its start.
        ab = torch.cumprod(1.0 - betas, 0).sqrt()
        a0, a_t = ab[0].clone(), ab[-1].clone()
        ab = (ab - a_t) * (a0 / (a0 - a_t))
        ab = ab**2
        betas = 1.0 - torch.cat([ab[:1], ab[1:] / ab[:-1]])
    return torch.cumprod(1.0 - betas, 0)


def _alphas_cumprod(scheduler) -> torch.Tensor:
    ac = None if isinstance(scheduler, Mapping) else getattr(scheduler, "alphas_cumprod", None)
    if ac is not None:
        return torch.as_tensor(ac).detach().cpu()
    cfg = scheduler if isinstance(scheduler, Mapping) else getattr(scheduler, "config", None)
    if cfg is None:
        raise InvalidArgument(f"the scheduler ({type(scheduler).__name__}) has neither alphas_cumprod nor a config "
                              f"with betas: it is not a DDPM-family (discrete VP) scheduler")
    return _alphas_cumprod_from_config(cfg)


FLOW_TRANSFORMERS = ("SD3Transformer2DModel", "FluxTransformer2DModel", "WanTransformer3DModel")


def flux_image_ids(height: int, width: int) -> torch.Tensor:
    """Flux's rotary position ids of a packed latent of (height / 2) x (width / 2) tokens: (0, row, column)
    per token, row-major (FluxPipeline._prepare_latent_image_ids), float32 [tokens, 3]."""
    rows, cols = torch.meshgrid(torch.arange(height // 2), torch.arange(width // 2), indexing="ij")
    return torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).float()


class DiffusersTransformer(nn.Module):
    """A Stable Diffusion 3, Flux or Wan transformer as net(x, t_net, cond) -> the flow velocity.

    SD3 / Flux: cond = (prompt_embeds [B, L, D], pooled_projections [B, P]), as the pipelines'
    encode_prompt returns them. SD3 takes the latent [B, C, H, W] and t_net = 1000 t; Flux takes the
    packed latent [B, (H / 2)(W / 2), 4C] and t_net = t, and its position ids and embedded guidance are
    constants of this adapter (buffers: part of the model's fingerprint, so a schedule learned for one
    guidance or resolution refuses another). Wan takes the video latent [B, C, F, H, W], t_net = 1000 t
    (float32, whatever the transformer's dtype: its time embedding upcasts, a bfloat16 time would round
    999 to 1000) and cond = encoder_hidden_states [B, L, D] (the T5 prompt embedding). The transformer
    runs in its own dtype; the output is cast back.
    """

    def __init__(self, transformer: nn.Module, kind: str, *, latent_size: tuple[int, int] | None = None,
                 embedded_guidance: float | None = None):
        super().__init__()
        self.transformer, self.kind = transformer, kind
        if kind == "flux":
            if latent_size is None:
                raise InvalidArgument("a Flux transformer needs latent_size=(height, width) of the unpacked latent "
                                      "(image size / 8): its position ids depend on it")
            h, w = (int(v) for v in latent_size)
            if h < 2 or w < 2 or h % 2 or w % 2:
                raise InvalidArgument("latent_size must be even and >= 2 (Flux packs 2 x 2 patches), got "
                                      f"{latent_size}")
            self.latent_size = (h, w)
            self.register_buffer("img_ids", flux_image_ids(h, w))
            wants = bool(_get(transformer.config, "guidance_embeds", False))
            if wants and embedded_guidance is None:
                raise InvalidArgument("this Flux transformer embeds guidance (guidance_embeds=True): pass "
                                      "embedded_guidance (the pipeline's guidance_scale, e.g. 3.5)")
            if not wants and embedded_guidance is not None:
                raise InvalidArgument("this Flux transformer has no guidance embedding (guidance_embeds=False); "
                                      "embedded_guidance must be None")
            self.register_buffer("embedded_guidance", None if embedded_guidance is None else
                                 torch.tensor(float(embedded_guidance)))

    def forward(self, x: torch.Tensor, t_net: torch.Tensor, cond=None) -> torch.Tensor:
        if self.kind == "wan":
            return self._wan(x, t_net, _by_name(cond, ("encoder_hidden_states",), "a Wan transformer"))
        if isinstance(cond, Mapping):
            cond = _by_name(cond, ("encoder_hidden_states", "pooled_projections"), "an SD3 / Flux transformer")
        if not (isinstance(cond, (tuple, list)) and len(cond) == 2
                and all(isinstance(c, torch.Tensor) for c in cond)):
            raise ConditionError("the condition of an SD3 / Flux transformer is (prompt_embeds [B, L, D], "
                                 "pooled_projections [B, P]), as its pipeline's encode_prompt returns them, or the "
                                 "dict {'encoder_hidden_states': ..., 'pooled_projections': ...}")
        embeds, pooled = cond
        dtype = getattr(self.transformer, "dtype", None) or next(self.transformer.parameters()).dtype
        common = dict(hidden_states=x.to(dtype), timestep=t_net.to(dtype), encoder_hidden_states=embeds.to(dtype),
                      pooled_projections=pooled.to(dtype), return_dict=False)
        if self.kind == "sd3":
            return self.transformer(**common)[0].to(x.dtype)
        txt_ids = torch.zeros(embeds.shape[1], 3, device=x.device, dtype=self.img_ids.dtype)
        guidance = None if self.embedded_guidance is None else \
            self.embedded_guidance.to(dtype).expand(x.shape[0])
        return self.transformer(**common, img_ids=self.img_ids, txt_ids=txt_ids, guidance=guidance)[0].to(x.dtype)

    def _wan(self, x: torch.Tensor, t_net: torch.Tensor, cond) -> torch.Tensor:
        if not isinstance(cond, torch.Tensor) or cond.dim() != 3:
            got = tuple(cond.shape) if isinstance(cond, torch.Tensor) else type(cond).__name__
            raise ConditionError("the condition of a Wan transformer is encoder_hidden_states [B, L, D] (the T5 prompt "
                                 f"embedding, as WanPipeline.encode_prompt returns it), got {got}")
        cfg = self.transformer.config
        patch = tuple(int(p) for p in _get(cfg, "patch_size", (1, 2, 2)))
        channels = int(_get(cfg, "in_channels"))
        if x.dim() != 5 or x.shape[1] != channels or any(n % p for n, p in zip(x.shape[2:], patch)):
            raise InvalidArgument(f"a Wan transformer takes video latents [B, {channels}, F, H, W] with F, H, W "
                                  f"multiples of its patch size {patch}, got shape {tuple(x.shape)}")
        dtype = getattr(self.transformer, "dtype", None) or next(self.transformer.parameters()).dtype
        return self.transformer(hidden_states=x.to(dtype), timestep=t_net.to(torch.float32),
                                encoder_hidden_states=cond.to(dtype), return_dict=False)[0].to(x.dtype)


def _by_name(cond, keys: tuple[str, ...], what: str):
    """A dict condition keyed by the transformer's forward argument names, as the positional form (one tensor for
    one key, a tuple in `keys` order); any other condition is returned as it is, for the caller to check."""
    if not isinstance(cond, Mapping):
        return cond
    if set(cond) != set(keys):
        raise ConditionError(f"a dict condition of {what} has the keys {list(keys)} (its forward argument names), "
                             f"got keys {sorted(cond)}")
    return cond[keys[0]] if len(keys) == 1 else tuple(cond[k] for k in keys)


def _check_flow_scheduler(transformer, scheduler, cfg) -> None:
    """A FlowMatchEulerDiscreteScheduler (or its config), or a multistep scheduler on flow sigmas (Wan's UniPC)."""
    if cfg is None:
        raise InvalidArgumentType(f"a {type(transformer).__name__} samples with a FlowMatchEulerDiscreteScheduler or a "
                                  f"scheduler with use_flow_sigmas=True (or its config dict), got "
                                  f"{type(scheduler).__name__}")
    flow_sigmas = _get(cfg, "use_flow_sigmas")
    if flow_sigmas:
        pred = _get(cfg, "prediction_type", "epsilon")
        if pred != "flow_prediction":
            raise InvalidArgument(f"the scheduler has use_flow_sigmas=True but prediction_type={pred!r}; a flow "
                                  "transformer predicts the velocity (prediction_type='flow_prediction')")
    elif flow_sigmas is not None:  # a multistep scheduler on its DDPM-family betas
        raise InvalidArgument(f"a {type(transformer).__name__} is a flow model, but the scheduler has "
                              "use_flow_sigmas=False (a DDPM-family VP schedule); set use_flow_sigmas=True and "
                              "prediction_type='flow_prediction', as Wan ships its UniPCMultistepScheduler")
    elif not isinstance(scheduler, Mapping) and "FlowMatchEulerDiscreteScheduler" not in _class_names(scheduler) \
            and _get(cfg, "shift") is None:
        raise InvalidArgumentType(f"a {type(transformer).__name__} samples with a FlowMatchEulerDiscreteScheduler or a "
                                  f"scheduler with use_flow_sigmas=True (or its config dict), got "
                                  f"{type(scheduler).__name__}")
    if _get(cfg, "invert_sigmas", False) or _get(cfg, "shift_terminal"):
        raise InvalidArgument("invert_sigmas / shift_terminal change the flow's time axis; not supported")


def _flow_from_diffusers(transformer, scheduler, *, guidance_scale, null_cond, latent_size, embedded_guidance):
    names = _class_names(transformer)
    kind = "flux" if "FluxTransformer2DModel" in names else "wan" if "WanTransformer3DModel" in names else "sd3"
    cfg = scheduler if isinstance(scheduler, Mapping) else getattr(scheduler, "config", None)
    _check_flow_scheduler(transformer, scheduler, cfg)
    if latent_size is not None and len(latent_size) != (3 if kind == "wan" else 2):
        raise InvalidArgument("latent_size is (frames, height, width) of the latent for a Wan transformer and "
                              f"(height, width) for SD3 / Flux, got {latent_size!r:.60}")
    if kind == "wan":
        if embedded_guidance is not None:
            raise InvalidArgument("embedded_guidance belongs to Flux; a Wan transformer has no guidance embedding")
        if _get(transformer.config, "image_dim") is not None:
            raise InvalidArgument("this WanTransformer3DModel has image_dim set (image-to-video: it also reads "
                                  "encoder_hidden_states_image); from_diffusers takes the text-to-video transformer")
    n_train = int(_get(cfg, "num_train_timesteps", 1000))
    noise = RectifiedFlow(t_min=1.0 / n_train)
    net = DiffusersTransformer(transformer, kind, latent_size=latent_size, embedded_guidance=embedded_guidance)
    channels = int(_get(transformer.config, "in_channels"))
    if kind == "flux":
        h, w = net.latent_size
        shape = (h // 2 * (w // 2), channels)
    elif kind == "wan":  # no sample_size in its config: the shape is known only from latent_size
        shape = None if latent_size is None else (channels, *latent_size)
    else:
        size = int(_get(transformer.config, "sample_size"))
        shape = (channels, *(latent_size or (size, size)))
    # SD3 and Wan are fed 1000 t, as their pipelines feed the scheduler's timesteps (Wan's UniPC feeds them
    # truncated to integers; we feed the continuous value); Flux t (its pipeline divides by 1000).
    return Denoiser(net, noise, prediction="flow", time_input="t" if kind == "flux" else "t1000",
                    guidance_scale=guidance_scale, null_cond=null_cond, sample_shape=shape)


def from_diffusers(unet, scheduler, *, guidance_scale: float = 1.0, null_cond=None,
                   prediction: str | None = None, latent_size: tuple[int, int] | None = None,
                   embedded_guidance: float | None = None) -> Denoiser:
    """A Denoiser for a diffusers UNet2DModel / UNet2DConditionModel and its DDPM-family scheduler, or for
    an SD3Transformer2DModel / FluxTransformer2DModel / WanTransformer3DModel and its
    FlowMatchEulerDiscreteScheduler or a multistep scheduler with use_flow_sigmas=True and
    prediction_type="flow_prediction" (the UniPCMultistepScheduler Wan ships).

    Flow transformers: lf.RectifiedFlow (t_min = 1 / num_train_timesteps, t_max = 1), prediction
    "flow" (the velocity), time input 1000 t (SD3, Wan) or t (Flux), cond = (prompt_embeds,
    pooled_projections) (SD3, Flux) or encoder_hidden_states [B, L, D] (Wan); null_cond the
    negative prompt's condition for classifier-free guidance. The scheduler's grid options
    (shift, flow_shift, dynamic shifting, Karras / exponential sigmas, solver order) are sampling
    options, not part of the model: ignored here (lf.from_pipeline's pipeline_schedule reproduces them).
    Wan: the state is the video latent [B, C, F, H, W]; its UniPC feeds the transformer the
    timesteps int64(1000 sigma) (truncated), this Denoiser the continuous 1000 t (float32).
    latent_size: the unpacked latent's (height, width) (image size / 8); required for Flux, whose
    state is the packed latent [B, (h / 2)(w / 2), 4C] and whose position ids depend on it; for Wan
    (frames, height, width) of the latent, which sets sample_shape (optional).
    embedded_guidance: Flux-dev's guidance input (its pipeline's guidance_scale), fixed here.

    Conventions:
      - noise schedule: VPDiscrete(scheduler.alphas_cumprod): the training index k in
        0..N-1 sits at t = (k + 1) / N, alphas_cumprod taken as the scheduler holds it
        (float32 for diffusers). Without the attribute (or for a config dict) it is
        rebuilt from trained_betas / beta_schedule, beta_start, beta_end,
        num_train_timesteps, rescale_betas_zero_snr as diffusers computes it.
      - network time: the continuous index N t - 1 (time_input="index"), never rounded,
        so at t = (k + 1) / N the UNet sees exactly k (as a float).
      - prediction: from scheduler.config.prediction_type ("epsilon" -> "eps",
        "sample" -> "x0", "v_prediction" -> "v"), or the `prediction` argument
        (either spelling).
      - cond: class labels for a UNet2DModel with a class embedding (class_labels; labels
        outside [0, num_class_embeds) are a ConditionError in every executor),
        encoder_hidden_states [B, L, D] for a UNet2DConditionModel (required). A
        UNet2DConditionModel with addition_embed_type="text_time" (SDXL) takes a dict
        keyed by its forward argument names, added_cond_kwargs flattened:
        {"encoder_hidden_states": [B, L, D], "text_embeds": [B, P], "time_ids": [B, 6]}
        (exported graph inputs cond_encoder_hidden_states, cond_text_embeds, cond_time_ids).
        With guidance_scale != 1, null_cond is the unconditional counterpart (a null class
        label, the empty-prompt embedding [L, D] or [B, L, D], or the same dict for one
        example).
      - learned variance: a UNet with out_channels = 2 in_channels returns
        [prediction, variance]; the first in_channels channels are used, as diffusers does.
      - the scheduler's sampling options (clip_sample, thresholding, timestep_spacing,
        solver order) are not part of the model and are ignored: choose them with the
        Schedule and the solver.
    """
    # The keywords' types first, whatever the network: a wrong one is the same error for every model kind.
    guidance_scale = finite_number(guidance_scale, "guidance_scale")
    if null_cond is not None and not is_cond(null_cond):
        raise ConditionError(f"null_cond must be a tensor or a tuple / list / dict of tensors, got "
                             f"{type(null_cond).__name__}")
    if prediction is not None:
        string(prediction, "prediction")
    if latent_size is not None and (not isinstance(latent_size, (tuple, list)) or len(latent_size) not in (2, 3) or any(
            isinstance(v, bool) or not isinstance(v, int) for v in latent_size)):
        raise InvalidArgumentType(f"latent_size must be (height, width) of ints ((frames, height, width) for a video "
                                  f"transformer), got {latent_size!r:.60}")
    if embedded_guidance is not None:
        embedded_guidance = finite_number(embedded_guidance, "embedded_guidance")
    if _class_names(unet) & set(FLOW_TRANSFORMERS):
        return _flow_from_diffusers(unet, scheduler, guidance_scale=guidance_scale, null_cond=null_cond,
                                    latent_size=latent_size, embedded_guidance=embedded_guidance)
    if latent_size is not None or embedded_guidance is not None:
        raise InvalidArgument("latent_size and embedded_guidance belong to the flow transformers (SD3, Flux, Wan)")
    kind = _unet_kind(unet)
    cfg = unet.config
    in_ch, out_ch = _get(cfg, "in_channels"), _get(cfg, "out_channels", _get(cfg, "in_channels"))
    if not isinstance(in_ch, int) or in_ch < 1:
        raise InvalidArgument(f"the UNet's config has no valid in_channels (got {in_ch!r})")
    if out_ch == in_ch:
        split = None
    elif out_ch == 2 * in_ch:
        split = in_ch
    else:
        raise InvalidArgument(f"the UNet's out_channels={out_ch} does not fit in_channels={in_ch}: the prediction must "
                              f"have the sample's shape (or twice its channels for a learned variance)")
    sample_size = _get(cfg, "sample_size")
    if kind == "plain":
        if null_cond is not None or float(guidance_scale) != 1.0:
            raise InvalidArgument("this UNet2DModel is unconditional (no class embedding): guidance_scale must be 1 "
                                  "and null_cond None")
    if sample_size is not None and kind != "text":
        sizes = sample_size if isinstance(sample_size, (tuple, list)) else (sample_size,)
        factor = 2 ** (len(_get(cfg, "block_out_channels", ())) - 1)
        if any(int(s) % factor for s in sizes):
            raise InvalidArgument(f"the UNet's sample_size={sample_size} is not divisible by its downsampling "
                                  f"factor {factor}")
    scheduler_config = scheduler if isinstance(scheduler, Mapping) else getattr(scheduler, "config", None)
    if scheduler_config is None:
        raise InvalidArgumentType(f"expected a diffusers scheduler (with .config) or its config dict, "
                                  f"got {type(scheduler).__name__}")
    if _get(scheduler_config, "use_flow_sigmas", False):
        raise InvalidArgument("the scheduler uses flow-matching sigmas (use_flow_sigmas=True), not a DDPM-family VP "
                              "schedule")
    pred = _prediction(scheduler_config, prediction)
    noise = VPDiscrete(_alphas_cumprod(scheduler))
    added = ADDED_COND.get(_get(cfg, "addition_embed_type"), ()) if kind == "text" else ()
    net = DiffusersUNet(unet, kind, split, added)
    classes = _get(cfg, "num_class_embeds") if kind == "class" else None
    shape = None
    if sample_size is not None and kind != "text":
        size = (sample_size, sample_size) if isinstance(sample_size, int) else tuple(sample_size)
        shape = (int(in_ch), *(int(s) for s in size))
    return Denoiser(net, noise, prediction=pred, time_input="index", guidance_scale=guidance_scale,
                    null_cond=null_cond, num_classes=int(classes) if isinstance(classes, int) else None,
                    sample_shape=shape)
