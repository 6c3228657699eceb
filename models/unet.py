"""Text-conditioned UNet denoiser for latent diffusion (Ronneberger et al. 2015; DDPM, Ho et al. 2020 appendix B;
the cross-attention conditioning of Rombach et al. 2022 sec. 3.3).

    t -> sinusoidal embedding -> MLP -> temb (added inside every residual block)
    x -> conv_in -> [down levels: ResBlock (+ Transformer) x layers_per_block, then a stride-2 conv]
      -> middle: ResBlock, Transformer, ResBlock
      -> [up levels: ResBlock on concat(h, skip) (+ Transformer) x (layers_per_block + 1), then upsample] -> conv_out

A Transformer block (Rombach et al.'s SpatialTransformer) turns the feature map into HW tokens, applies self-attention,
cross-attention to the text tokens, and a GEGLU feed-forward, then adds the result back to the map.

Notation: B batch, C channels, H x W spatial size, L text tokens, D = context_dim, temb = time embedding.
The last convolution of every residual branch and of the output is zero-initialised (Dhariwal & Nichol 2021, "ADM"),
so a fresh UNet is the identity inside each block and predicts 0.

The default config is the one of the speed comparison with diffusers' UNet2DConditionModel (bench/gpu_check.py):
block widths 64/128/128, two layers per block, cross-attention at the two higher resolutions, 8x8x4 latents, 16
context tokens of width 128, 8.75M parameters; diffusers' CrossAttnDownBlock2D, CrossAttnDownBlock2D, DownBlock2D.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import setting, timestep_embedding


@dataclass
class UNetConfig:
    in_channels: int = setting(4, derived=True)  # channels of x (latent channels); the output has x's shape
    channels: tuple[int, ...] = setting((64, 128, 128), min=1)  # width per resolution level; level i works at H / 2**i
    layers_per_block: int = setting(2, min=1)  # residual blocks per level on the way down (one more on the way up)
    attention: tuple[bool, ...] = (True, True, False)  # per level: self + cross-attention after each residual block
    context_dim: int = setting(128, derived=True)  # width D of the text token states; 0 = no cross-attention
    heads: int = setting(4, min=1)  # attention heads; must divide every attended width
    groups: int = setting(8, min=1)  # GroupNorm groups; must divide every width

    def __post_init__(self):
        self.channels, self.attention = tuple(self.channels), tuple(bool(a) for a in self.attention)
        if len(self.attention) != len(self.channels):
            raise ValueError(f"UNet attention {self.attention} needs one flag per level of channels {self.channels}")
        if any(c % self.groups for c in self.channels):
            raise ValueError(f"UNet channels {self.channels} must all be divisible by groups={self.groups}")
        if any(c % self.heads for c in self.channels):
            raise ValueError(f"UNet channels {self.channels} must all be divisible by heads={self.heads}")


def zero_(layer: nn.Module) -> None:
    """Zero a residual branch's last layer so the branch starts as nothing (ADM's zero_module)."""
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, + time embedding, GroupNorm -> SiLU -> conv, + skip (DDPM appendix B)."""

    def __init__(self, cin: int, cout: int, temb_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(temb_dim, cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        zero_(self.conv2)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))  # (B, cout, H, W)
        h = h + self.temb(temb)[:, :, None, None]  # temb is already SiLU-activated: (B, cout, 1, 1)
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head attention of queries x (B, N, C) over keys/values ctx (B, M, Dc); Vaswani et al. 2017 eq. 1."""

    def __init__(self, dim: int, ctx_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(ctx_dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim)

    def forward(self, x, ctx, mask=None):
        B, N, C = x.shape
        q = self.q(x).view(B, N, self.heads, C // self.heads).transpose(1, 2)  # (B, heads, N, C / heads)
        k, v = self.kv(ctx).view(B, -1, 2, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # (B, heads, M, C/h)
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # mask (B, 1, 1, M) bool, True = attend
        return self.out(h.transpose(1, 2).reshape(B, N, C))  # (B, N, C)


class Transformer(nn.Module):
    """Rombach et al. 2022's SpatialTransformer: self-attention, cross-attention to the text, GEGLU feed-forward."""

    def __init__(self, dim: int, ctx_dim: int, heads: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, dim)
        self.proj_in = nn.Linear(dim, dim)
        self.norm1, self.attn1 = nn.LayerNorm(dim), Attention(dim, dim, heads)
        self.cross = ctx_dim > 0
        if self.cross:
            self.norm2, self.attn2 = nn.LayerNorm(dim), Attention(dim, ctx_dim, heads)
        self.norm3 = nn.LayerNorm(dim)
        self.ff_in = nn.Linear(dim, 2 * 4 * dim)  # GEGLU, Shazeer 2020 eq. 5: value and gate, 4x wider
        self.ff_out = nn.Linear(4 * dim, dim)
        self.proj_out = nn.Linear(dim, dim)
        zero_(self.proj_out)

    def forward(self, x, context, mask):
        B, C, H, W = x.shape
        h = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))  # (B, HW, C)
        n = self.norm1(h)
        h = h + self.attn1(n, n)  # self-attention over the HW positions
        if self.cross:
            h = h + self.attn2(self.norm2(h), context, mask)  # cross-attention to the L text tokens
        value, gate = self.ff_in(self.norm3(h)).chunk(2, dim=-1)
        h = h + self.ff_out(value * F.gelu(gate))  # (B, HW, C)
        return x + self.proj_out(h).transpose(1, 2).reshape(B, C, H, W)


class Layer(nn.Module):
    """One residual block, then a Transformer block if this level attends."""

    def __init__(self, cin: int, cout: int, tdim: int, attend: bool, cfg: UNetConfig):
        super().__init__()
        self.res = ResBlock(cin, cout, tdim, cfg.groups)
        self.attn = Transformer(cout, cfg.context_dim, cfg.heads, cfg.groups) if attend else None

    def forward(self, h, temb, context, mask):
        h = self.res(h, temb)
        return h if self.attn is None else self.attn(h, context, mask)


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        ch, g, n = cfg.channels, cfg.groups, len(cfg.channels)
        tdim = 4 * ch[0]  # time-embedding width, 4x the base width as in DDPM
        self.time_mlp = nn.Sequential(nn.Linear(ch[0], tdim), nn.SiLU(), nn.Linear(tdim, tdim), nn.SiLU())
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)

        # Down path: down[i] holds level i's layers, downsample[i] halves the size after level i (not after the last).
        # Every layer and every downsample leaves a skip; conv_in's output is the first.
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        skips, cin = [ch[0]], ch[0]
        for i, c in enumerate(ch):
            layers = nn.ModuleList()
            for _ in range(cfg.layers_per_block):
                layers.append(Layer(cin, c, tdim, cfg.attention[i], cfg))
                cin = c
                skips.append(c)
            self.down.append(layers)
            if i < n - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))  # (B, c, H/2, W/2)
                skips.append(c)

        self.mid1 = ResBlock(cin, cin, tdim, g)
        self.mid_attn = Transformer(cin, cfg.context_dim, cfg.heads, g)
        self.mid2 = ResBlock(cin, cin, tdim, g)

        # Up path, deepest level first: up[k] has one more layer than its down level, each eating one skip;
        # upsample[k] doubles the size after it (not after the top level).
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(n)):
            c = ch[i]
            layers = nn.ModuleList()
            for _ in range(cfg.layers_per_block + 1):
                layers.append(Layer(cin + skips.pop(), c, tdim, cfg.attention[i], cfg))
                cin = c
            self.up.append(layers)
            if i > 0:
                # nearest upsampling then conv, as in DDPM (no transposed-conv checkerboard)
                self.upsample.append(nn.Sequential(nn.Upsample(scale_factor=2.0, mode="nearest"),
                                                   nn.Conv2d(c, c, 3, padding=1)))  # (B, c, 2H, 2W)

        self.norm_out = nn.GroupNorm(g, cin)
        self.conv_out = nn.Conv2d(cin, cfg.in_channels, 3, padding=1)
        zero_(self.conv_out)

    def forward(self, x, t, context=None, context_mask=None):
        """x (B, C, H, W); t (B,) float timesteps; context (B, L, D); context_mask (B, L) bool, True = attend.

        Returns a tensor shaped like x (whether it is eps, v or x0 is the diffusion code's choice).
        H and W must be divisible by 2 ** (len(channels) - 1). Every caption needs one unmasked token (BOS does it):
        a row with all tokens masked has no attention weights (SDPA returns NaN there).
        """
        if self.cfg.context_dim and context is None:
            raise ValueError("this UNet has cross-attention (context_dim > 0) and needs context; "
                             "use the empty caption's encoding for the unconditional branch")
        mask = None if context_mask is None else context_mask[:, None, None, :]  # (B, 1, 1, L)
        temb = self.time_mlp(timestep_embedding(t, self.cfg.channels[0]).to(x.dtype))  # (B, tdim)

        h = self.conv_in(x)  # (B, ch0, H, W)
        skips = [h]
        for i, layers in enumerate(self.down):
            for layer in layers:
                h = layer(h, temb, context, mask)
                skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)  # (B, c, H / 2**(i+1), W / 2**(i+1))
                skips.append(h)

        h = self.mid2(self.mid_attn(self.mid1(h, temb), context, mask), temb)

        for k, layers in enumerate(self.up):
            for layer in layers:
                h = layer(torch.cat([h, skips.pop()], dim=1), temb, context, mask)  # (B, c + c_skip, H, W) in
            if k < len(self.upsample):
                h = self.upsample[k](h)
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, C, H, W)
