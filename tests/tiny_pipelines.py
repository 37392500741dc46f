"""Tiny random Stable Diffusion, SDXL, SD3, Flux and Wan pipelines built from config objects (nothing is downloaded):
their real diffusers / transformers classes at a few thousand parameters, with a word-level tokenizer
written here. Built once per process (`build(kind)`)."""
import functools

import torch

import ldd_fast as lf

diffusers = __import__("pytest").importorskip("diffusers")
transformers = __import__("pytest").importorskip("transformers")

WORDS = ("a photo of the digit zero one two three four five six seven eight nine cat dog red blue big small "
         "painting drawing").split()
PROMPTS = ["a photo of a cat", "a red dog", "the digit seven", "a blue painting", "a small drawing of a dog",
           "big red cat", "the digit one", "a drawing"]


def tokenizer(max_length: int):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<unk>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                                eos_token="</s>", model_max_length=max_length)


def _clip(with_projection: bool, hidden=8, projection=4):
    cfg = transformers.CLIPTextConfig(vocab_size=len(WORDS) + 3, hidden_size=hidden, intermediate_size=16,
                                      num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=16,
                                      projection_dim=projection, bos_token_id=0, eos_token_id=2, pad_token_id=0)
    cls = transformers.CLIPTextModelWithProjection if with_projection else transformers.CLIPTextModel
    return cls(cfg).eval()


def _t5(d_model=16):
    cfg = transformers.T5Config(vocab_size=len(WORDS) + 3, d_model=d_model, d_kv=4, d_ff=16, num_layers=1,
                                num_heads=2, pad_token_id=0, eos_token_id=2, decoder_start_token_id=0)
    return transformers.T5EncoderModel(cfg).eval()


def _umt5(d_model=16):
    cfg = transformers.UMT5Config(vocab_size=len(WORDS) + 3, d_model=d_model, d_kv=4, d_ff=16, num_layers=1,
                                  num_heads=2, pad_token_id=0, eos_token_id=2, decoder_start_token_id=0)
    return transformers.UMT5EncoderModel(cfg).eval()


def _vae(latent_channels: int, blocks=(8,), **kw):
    return diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * len(blocks),
                                   up_block_types=("UpDecoderBlock2D",) * len(blocks), block_out_channels=blocks,
                                   layers_per_block=1, latent_channels=latent_channels, norm_num_groups=2,
                                   sample_size=8, **kw).eval()


def _randomize(*modules, seed: int):
    """Non-zero weights everywhere (diffusers zero-initialises output layers)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in modules:
            for p in m.parameters():
                if not p.any():
                    p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return modules


@functools.lru_cache(maxsize=None)
def build(kind: str):
    torch.manual_seed({"sd": 1, "sd3": 2, "flux": 3, "sdxl": 4, "wan": 5}[kind])
    if kind == "sd":
        unet = diffusers.UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(8, 16), layers_per_block=1,
            cross_attention_dim=8, attention_head_dim=2, norm_num_groups=4).eval()
        vae = _vae(4, blocks=(8, 8))  # scale factor 2: 16 x 16 images, 8 x 8 latents
        _randomize(unet, vae, seed=11)
        scheduler = diffusers.PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                            skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
        return diffusers.StableDiffusionPipeline(vae=vae, text_encoder=_clip(False), tokenizer=tokenizer(8),
                                                 unet=unet, scheduler=scheduler, safety_checker=None,
                                                 feature_extractor=None, requires_safety_checker=False)
    if kind == "sdxl":
        # cross_attention_dim = the two CLIP widths concatenated (8 + 8); the addition embedding reads the pooled
        # projection (4) and six micro-conditions of addition_time_embed_dim (4) each: 4 + 6 * 4 = 28.
        unet = diffusers.UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=(8, 16), layers_per_block=1,
            cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4, use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=4,
            projection_class_embeddings_input_dim=28).eval()
        vae = _vae(4, blocks=(8, 8), scaling_factor=0.13025)  # scale factor 2: 16 x 16 images, 8 x 8 latents
        _randomize(unet, vae, seed=14)
        scheduler = diffusers.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                                     timestep_spacing="leading", steps_offset=1)
        return diffusers.StableDiffusionXLPipeline(
            vae=vae, text_encoder=_clip(False), text_encoder_2=_clip(True), tokenizer=tokenizer(8),
            tokenizer_2=tokenizer(8), unet=unet, scheduler=scheduler, add_watermarker=False)
    if kind == "wan":
        # Patch (1, 2, 2); the VAE downsamples 4x in time and space (two stages), so 5 frames of 16 x 16 are
        # 2 latent frames of 4 x 4, 2 x 2 tokens each. attention_head_dim 8 splits into rotary axes 4 + 2 + 2.
        transformer = diffusers.WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
            text_dim=16, freq_dim=8, ffn_dim=16, num_layers=1, rope_max_seq_len=32).eval()
        vae = diffusers.AutoencoderKLWan(base_dim=4, z_dim=4, dim_mult=[1, 1, 1], num_res_blocks=1,
                                         temperal_downsample=[True, True], latents_mean=[0.1, -0.2, 0.3, 0.0],
                                         latents_std=[1.5, 0.8, 2.0, 1.0], scale_factor_temporal=4,
                                         scale_factor_spatial=4).eval()
        _randomize(transformer, vae, seed=15)
        # Wan 2.1's scheduler_config.json (480p): UniPC on flow sigmas, flow_shift 3, order 2, final sigma 0.
        scheduler = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                      flow_shift=3.0, solver_order=2, final_sigmas_type="zero",
                                                      num_train_timesteps=1000)
        return diffusers.WanPipeline(tokenizer=tokenizer(8), text_encoder=_umt5(), vae=vae, scheduler=scheduler,
                                     transformer=transformer)
    if kind == "sd3":
        transformer = diffusers.SD3Transformer2DModel(
            sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
            caption_projection_dim=16, joint_attention_dim=16, pooled_projection_dim=8, out_channels=4,
            pos_embed_max_size=8).eval()
        vae = _vae(4, shift_factor=0.0609, scaling_factor=1.5035)
        _randomize(transformer, vae, seed=12)
        return diffusers.StableDiffusion3Pipeline(
            transformer=transformer, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
            text_encoder=_clip(True), tokenizer=tokenizer(8), text_encoder_2=_clip(True), tokenizer_2=tokenizer(8),
            text_encoder_3=_t5(), tokenizer_3=tokenizer(8))
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, pooled_projection_dim=8, guidance_embeds=True, axes_dims_rope=(2, 2, 4)).eval()
    vae = _vae(4, shift_factor=0.1159, scaling_factor=0.3611)
    _randomize(transformer, vae, seed=13)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                          base_image_seq_len=256, max_image_seq_len=4096)
    return diffusers.FluxPipeline(transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=_clip(False),
                                  tokenizer=tokenizer(8), text_encoder_2=_t5(), tokenizer_2=tokenizer(8))


def learned_like_schedule(den, solver: str = "unipc", nfe: int = 3):
    """A schedule on the pipeline's own grid (logSNR for Stable Diffusion) with the network times moved
    off the solver times, as a learned schedule has them."""
    base = lf.discretize(den.noise, nfe, "logsnr", solver=solver) if not den.pipeline_grid else \
        lf.discretize(den.noise, nfe, solver=solver, final="zero", **den.pipeline_grid)
    t_eval = base.t_eval
    t_eval[1:] = t_eval[1:] * 0.97
    return base.replace(t_eval=t_eval)


def pipeline_call(pipe, den, cond, z, nfe: int):
    """The pipeline's own __call__ on the same latents and prompt embeddings; returns its latents."""
    kind = den.pipeline_kind
    kw = dict(num_inference_steps=nfe, latents=z.clone(), output_type="latent", return_dict=False)
    with torch.no_grad():
        if kind == "sd":
            null = den.null_cond.expand(z.shape[0], *den.null_cond.shape)
            return pipe(prompt_embeds=cond, negative_prompt_embeds=null, guidance_scale=den.guidance_scale, **kw)[0]
        size = dict(height=den.height, width=den.width)
        if kind == "wan":
            null = den.null_cond.expand(z.shape[0], *den.null_cond.shape)
            return pipe(prompt_embeds=cond, negative_prompt_embeds=null, guidance_scale=den.guidance_scale,
                        num_frames=den.num_frames, **size, **kw)[0]
        if kind == "sdxl":  # the pipeline rebuilds time_ids from height / width: the same as encode_prompt's
            null = {k: n.expand(z.shape[0], *n.shape) for k, n in den.null_cond.items()}
            return pipe(prompt_embeds=cond["encoder_hidden_states"], pooled_prompt_embeds=cond["text_embeds"],
                        negative_prompt_embeds=null["encoder_hidden_states"],
                        negative_pooled_prompt_embeds=null["text_embeds"], guidance_scale=den.guidance_scale,
                        **size, **kw)[0]
        if kind == "sd3":
            null = tuple(n.expand(z.shape[0], *n.shape) for n in den.null_cond)
            return pipe(prompt_embeds=cond[0], pooled_prompt_embeds=cond[1], negative_prompt_embeds=null[0],
                        negative_pooled_prompt_embeds=null[1], guidance_scale=den.guidance_scale, **size, **kw)[0]
        return pipe(prompt_embeds=cond[0], pooled_prompt_embeds=cond[1],
                    guidance_scale=float(den.net.embedded_guidance), **size, **kw)[0]


def drop_in_difference(pipe, den, sched, *, batch: int, solver: str = "unipc", order: int = 3) -> float:
    """max |pipe(...) with lf.to_diffusers_scheduler - lf.sample| / max |lf.sample| on the same inputs."""
    cond = den.encode_prompt(PROMPTS[:batch])
    z = torch.randn(batch, *den.sample_shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = lf.sample(den, z, sched, solver=solver, order=order, cond=cond)
    original = pipe.scheduler
    try:
        pipe.scheduler = lf.to_diffusers_scheduler(sched, solver=solver, order=order, model=den)
        out = pipeline_call(pipe, den, cond, z, sched.nfe)
    finally:
        pipe.scheduler = original
    return float((out - ref).abs().max() / ref.abs().max())


def onnx_and_eager(runner, den, sched, *, batches=(1, 3), solver: str = "unipc"):
    """(runner's sample, lf.sample's) on fresh noise and the first prompts, at each batch size: the exported
    graph's dynamic batch axis against the eager reference."""
    for batch in batches:
        z = torch.randn(batch, *den.sample_shape)
        cond = den.encode_prompt(PROMPTS[:batch])
        with torch.no_grad():
            ref = lf.sample(den, z, sched, solver=solver, cond=cond)
        yield z, cond, runner(z, cond), ref


def unet_folder(folder):
    """A tiny UNet2DModel and DDPM scheduler saved as a diffusers model folder (unet/, scheduler/)."""
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    scheduler = diffusers.DDPMScheduler()
    unet.save_pretrained(folder / "unet")
    scheduler.save_pretrained(folder / "scheduler")
    return unet, scheduler
