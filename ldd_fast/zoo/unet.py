"""A small class-conditional U-Net for 8x8 images, of the DDPM / EDM family.

The layout follows the DDPM U-Net (Ho et al. 2020, appendix B) as modernised
in ADM and EDM (Karras et al. 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models", appendix F.2): residual blocks of
GroupNorm + SiLU + 3x3 conv, a noise-level embedding injected into every
residual block (scale-shift, as ADM / EDM's ``adaptive_scale``), one 2x
downsampling (8 -> 4), self-attention at the 4x4 resolution, and skip
connections from every encoder stage to the decoder.

Class conditioning uses a learned embedding of ``num_classes`` labels added
to the noise features before the embedding MLP, as EDM's SongUNet does. The
last label is the *null* class used for classifier-free guidance (Ho &
Salimans 2022): ``cond=None`` selects it.

The network is the raw function ``F`` only: it sees whatever noise input the
preconditioning hands it (EDM: c_noise = ln(sigma) / 4; DDPM: the float index
k). Preconditioning lives in :mod:`ldd_fast.zoo.precond`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidArgument

__all__ = ["TinyUNet", "PositionalEmbedding", "FourierEmbedding"]


def _num_groups(channels: int, max_groups: int = 32, min_channels_per_group: int = 4) -> int:
    # EDM's GroupNorm rule: at most 32 groups but never fewer than 4 channels each,
    # so narrow layers do not degenerate into per-channel (instance) norms.
    groups = max(1, min(max_groups, channels // min_channels_per_group))
    while channels % groups:
        groups -= 1
    return groups


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(_num_groups(channels), channels, eps=1e-6)


def _zero(module: nn.Module) -> nn.Module:
    # Zero-initialised output layers make every residual branch start as the
    # identity (DDPM / EDM do the same), which stabilises early training.
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class PositionalEmbedding(nn.Module):
    """Transformer sinusoidal embedding of a scalar noise input (DDPM, Ho et al. 2020)."""

    def __init__(self, channels: int, max_positions: int = 10000):
        super().__init__()
        if channels % 2:
            raise InvalidArgument(f"PositionalEmbedding: channels must be even, got {channels}")
        half = channels // 2
        # EDM's endpoint=True variant: frequencies run from 1 down to exactly 1/max_positions.
        freqs = (1.0 / max_positions) ** (torch.arange(half, dtype=torch.float32) / max(half - 1, 1))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # In float32 even in an fp16 model: fp16 would round a DDPM index near 999 to a multiple of 0.5.
        arg = t.float()[:, None] * self.freqs.float()[None, :]
        return torch.cat([arg.cos(), arg.sin()], dim=1).to(self.freqs.dtype)


class FourierEmbedding(nn.Module):
    """Random Fourier features of the noise input (NCSN++, Song et al. 2021; EDM's VE/EDM nets).

    The frequencies are drawn from a fixed-seed generator so that
    ``TinyUNet(**config)`` reproduces them; they are also stored as a buffer.
    """

    def __init__(self, channels: int, scale: float = 16.0, seed: int = 0):
        super().__init__()
        if channels % 2:
            raise InvalidArgument(f"FourierEmbedding: channels must be even, got {channels}")
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.randn(channels // 2, generator=gen) * scale)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        arg = (2 * math.pi) * t.float()[:, None] * self.freqs.float()[None, :]  # float32, as above
        return torch.cat([arg.cos(), arg.sin()], dim=1).to(self.freqs.dtype)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the embedding as a per-channel scale and shift (ADM / EDM)."""

    def __init__(self, in_ch: int, out_ch: int, emb_ch: int, dropout: float):
        super().__init__()
        self.norm0 = _norm(in_ch)
        self.conv0 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.affine = nn.Linear(emb_ch, 2 * out_ch)
        self.norm1 = _norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        scale, shift = self.affine(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        h = self.conv1(self.dropout(h))
        # EDM scales the residual sum by sqrt(1/2) to keep activations O(1) through deep stacks.
        return (h + self.skip(x)) * (0.5 ** 0.5)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map (DDPM uses it at 16x16 on CIFAR)."""

    def __init__(self, channels: int, head_channels: int = 32):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        if channels % self.heads:
            raise InvalidArgument(f"SelfAttention: {channels} channels do not split into {self.heads} heads")
        self.norm = _norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        # [B, heads, tokens, head_dim] layout for scaled_dot_product_attention.
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return (x + self.proj(out)) * (0.5 ** 0.5)


class _Stage(nn.Module):
    """A residual block optionally followed by attention; the unit the U-Net is built from."""

    def __init__(self, in_ch: int, out_ch: int, emb_ch: int, dropout: float, attn: bool, head_channels: int):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_ch, dropout)
        self.attn = SelfAttention(out_ch, head_channels) if attn else None

    def forward(self, x, emb):
        x = self.res(x, emb)
        return self.attn(x) if self.attn is not None else x


class TinyUNet(nn.Module):
    """Class-conditional U-Net ``F(x, t, cond)`` for small square images.

    Args:
        img_resolution: input height = width (8 for digits); must be divisible by 2^(levels-1).
        in_channels: image channels (1 for digits).
        model_channels: width of the first level.
        channel_mult: width multiplier per resolution level; each level after the first halves the resolution.
        num_res_blocks: residual blocks per level in the encoder (the decoder has one more, as in DDPM).
        attn_resolutions: resolutions at which residual blocks are followed by self-attention.
        num_classes: number of class labels *including* the null class, which is the last one.
        dropout: dropout inside residual blocks (DDPM used 0.1 on CIFAR-10; small data over-fits quickly).
        embedding_type: "positional" (DDPM sinusoids, as DDPM++ uses with both the DDPM index and
            EDM's c_noise = ln(sigma)/4) or "fourier" (NCSN++ random features).
        noise_channels: width of the raw noise features.
        fourier_scale: standard deviation of the Fourier frequencies.
        head_channels: channels per attention head.
    """

    def __init__(
        self,
        img_resolution: int = 8,
        in_channels: int = 1,
        model_channels: int = 64,
        channel_mult: tuple[int, ...] | list[int] = (1, 2),
        num_res_blocks: int = 2,
        attn_resolutions: tuple[int, ...] | list[int] = (4,),
        num_classes: int = 11,
        dropout: float = 0.1,
        embedding_type: str = "positional",
        noise_channels: int | None = None,
        fourier_scale: float = 16.0,
        head_channels: int = 32,
    ):
        super().__init__()
        channel_mult = [int(m) for m in channel_mult]
        attn_resolutions = [int(r) for r in attn_resolutions]
        if not channel_mult or any(m <= 0 for m in channel_mult):
            raise InvalidArgument("TinyUNet: channel_mult must be a non-empty list of positive ints, got "
                                  f"{channel_mult}")
        if img_resolution <= 0 or img_resolution % (2 ** (len(channel_mult) - 1)):
            raise InvalidArgument(f"TinyUNet: img_resolution={img_resolution} is not divisible by "
                                  f"2^{len(channel_mult) - 1} (one halving per extra level)")
        if in_channels <= 0 or model_channels <= 0 or num_res_blocks <= 0:
            raise InvalidArgument("TinyUNet: in_channels, model_channels and num_res_blocks must be positive")
        if num_classes < 2:
            raise InvalidArgument("TinyUNet: num_classes counts the null class too, so must be >= 2, got "
                                  f"{num_classes}")
        if not 0.0 <= dropout < 1.0:
            raise InvalidArgument(f"TinyUNet: dropout must lie in [0, 1), got {dropout}")
        if embedding_type not in ("positional", "fourier"):
            raise InvalidArgument(f"TinyUNet: embedding_type must be 'positional' or 'fourier', got {embedding_type!r}")
        noise_channels = int(noise_channels or model_channels)
        emb_ch = 4 * model_channels  # DDPM / EDM: embedding width = 4x base width

        self.config = dict(
            img_resolution=int(img_resolution), in_channels=int(in_channels), model_channels=int(model_channels),
            channel_mult=channel_mult, num_res_blocks=int(num_res_blocks), attn_resolutions=attn_resolutions,
            num_classes=int(num_classes), dropout=float(dropout), embedding_type=embedding_type,
            noise_channels=noise_channels, fourier_scale=float(fourier_scale), head_channels=int(head_channels),
        )
        self.img_resolution, self.in_channels, self.num_classes = img_resolution, in_channels, num_classes
        self.null_class = num_classes - 1

        # Noise and label embedding -> MLP -> per-block conditioning vector.
        if embedding_type == "positional":
            self.map_noise = PositionalEmbedding(noise_channels)
        else:
            self.map_noise = FourierEmbedding(noise_channels, scale=fourier_scale)
        self.map_label = nn.Embedding(num_classes, noise_channels)
        # One-hot through a linear layer in EDM; N(0, 1/sqrt(2)) keeps the sum with the
        # unit-variance sinusoids at unit scale.
        nn.init.normal_(self.map_label.weight, std=0.5 ** 0.5)
        self.map_layer0 = nn.Linear(noise_channels, emb_ch)
        self.map_layer1 = nn.Linear(emb_ch, emb_ch)

        # Encoder.
        self.conv_in = nn.Conv2d(in_channels, model_channels, 3, padding=1)
        self.enc = nn.ModuleList()
        skip_chs = [model_channels]
        ch, res = model_channels, img_resolution
        for level, mult in enumerate(channel_mult):
            if level > 0:
                # Strided conv downsampling (DDPM's "conv_resample").
                self.enc.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                res //= 2
                skip_chs.append(ch)
            for _ in range(num_res_blocks):
                self.enc.append(_Stage(ch, model_channels * mult, emb_ch, dropout, res in attn_resolutions,
                                       head_channels))
                ch = model_channels * mult
                skip_chs.append(ch)

        # Bottleneck: res - attention - res, as DDPM's middle block.
        self.mid0 = ResBlock(ch, ch, emb_ch, dropout)
        self.mid_attn = SelfAttention(ch, head_channels)
        self.mid1 = ResBlock(ch, ch, emb_ch, dropout)

        # Decoder: num_res_blocks + 1 blocks per level, each consuming one skip.
        self.dec = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                self.dec.append(_Stage(ch + skip_chs.pop(), model_channels * mult, emb_ch, dropout,
                                       res in attn_resolutions, head_channels))
                ch = model_channels * mult
            if level > 0:
                self.dec.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                              nn.Conv2d(ch, ch, 3, padding=1)))
                res *= 2
        assert not skip_chs
        self.norm_out = _norm(ch)
        self.conv_out = _zero(nn.Conv2d(ch, in_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Raw network output.

        Args:
            x: [B, C, H, W] input (already scaled by c_in where the preconditioning asks for it).
            t: noise input, shape [B] or 0-dim (broadcast over the batch); python numbers are accepted.
            cond: integer class labels [B] in [0, num_classes - 1], or None for the null class.
        """
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise InvalidArgument(f"TinyUNet: x must be a [B, C, H, W] tensor, got "
                                  f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        b, c, h, w = x.shape
        if c != self.in_channels or h != self.img_resolution or w != self.img_resolution:
            raise InvalidArgument(f"TinyUNet: expected x of shape [B, {self.in_channels}, {self.img_resolution}, "
                                  f"{self.img_resolution}], got {list(x.shape)}")
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(b)
        if t.shape != (b,):
            raise InvalidArgument(f"TinyUNet: t must be 0-dim or of shape [{b}], got {list(t.shape)}")
        if cond is None:
            cond = torch.full((b,), self.null_class, dtype=torch.long, device=x.device)
        else:
            cond = torch.as_tensor(cond, device=x.device)
            if cond.dtype.is_floating_point or cond.dtype.is_complex or cond.dtype == torch.bool:
                raise InvalidArgument(f"TinyUNet: cond must hold integer class labels, got dtype {cond.dtype}")
            if cond.dim() == 0:
                cond = cond.expand(b)
            if cond.shape != (b,):
                raise InvalidArgument(f"TinyUNet: cond must be None, 0-dim or of shape [{b}], got {list(cond.shape)}")
            cond = cond.long()

        emb = self.map_noise(t) + self.map_label(cond)
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))

        h = self.conv_in(x)
        skips = [h]
        for layer in self.enc:
            h = layer(h, emb) if isinstance(layer, _Stage) else layer(h)
            skips.append(h)
        h = self.mid1(self.mid_attn(self.mid0(h, emb)), emb)
        for layer in self.dec:
            if isinstance(layer, _Stage):
                h = layer(torch.cat([h, skips.pop()], dim=1), emb)
            else:
                h = layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))
