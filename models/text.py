"""Text conditioning: a word-level tokenizer, a small transformer text encoder, and CLIP-style contrastive pre-training.

The text encoder is pre-trained against a small image tower on the dataset's (image, caption) pairs with the symmetric
InfoNCE loss of CLIP (Radford et al. 2021, Fig. 3), then frozen. Its per-token states feed the UNet's cross-attention;
its pooled output feeds the conditional GAN, so both models see the same text features.

Notation: B = batch, L = tokens per caption (BOS included), W = width of the token states, E = embed_dim (pooled size).
"""

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import setting

# Special tokens sit at fixed indices, before the sorted words. BOS starts every caption, so the empty caption "" (the
# unconditional prompt of classifier-free guidance) still has one real token to attend to and pool.
PAD, UNK, BOS = 0, 1, 2
SPECIALS = ("<pad>", "<unk>", "<bos>")


def split_words(text: str) -> list[str]:
    """Lowercase; words are runs of letters and digits; every other non-space character is its own token."""
    return re.findall(r"[a-z0-9]+|[^\sa-z0-9]", text.lower())


@dataclass
class Tokenizer:
    vocab: list[str]  # index -> token; SPECIALS first, then the dataset's words in sorted order

    def __post_init__(self):
        self.vocab = list(self.vocab)
        if tuple(self.vocab[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a tokenizer vocabulary must start with {SPECIALS}, got {self.vocab[:3]}")
        self._index = {w: i for i, w in enumerate(self.vocab)}  # not a field: asdict() stays {"vocab": [...]}

    @classmethod
    def build(cls, captions: list[str]) -> "Tokenizer":
        """Vocabulary of every word in the captions, sorted, so the same captions always give the same ids."""
        words = sorted({w for c in captions for w in split_words(c)})
        return cls(list(SPECIALS) + words)

    def __len__(self) -> int:
        return len(self.vocab)

    def unknown_words(self, text: str) -> list[str]:
        """The words of text that are not in the vocabulary, in order of appearance, without repeats."""
        return list(dict.fromkeys(w for w in split_words(text) if w not in self._index))

    def encode(self, texts: list[str], max_len: int, strict: bool = True) -> torch.Tensor:
        """Captions -> LongTensor (B, max_len): BOS, word ids, then PAD; captions longer than max_len are truncated.

        strict=True raises a ValueError naming any unknown word (a prompt the model cannot read); strict=False
        maps unknown words to <unk>.
        """
        if isinstance(texts, str):
            raise TypeError("Tokenizer.encode takes a list of captions, not a single string")
        if max_len < 1:
            raise ValueError(f"max_len must be at least 1 (room for BOS), got {max_len}")
        out = torch.full((len(texts), max_len), PAD, dtype=torch.long)
        for row, text in enumerate(texts):
            if strict and (unknown := self.unknown_words(text)):
                known = ", ".join(self.vocab[len(SPECIALS):])
                raise ValueError(f"unknown word(s) {', '.join(map(repr, unknown))} in prompt {text!r}; "
                                 f"known words: {known}")
            ids = [BOS] + [self._index.get(w, UNK) for w in split_words(text)]
            ids = ids[:max_len]
            out[row, : len(ids)] = torch.tensor(ids)
        return out


@dataclass
class TextConfig:
    vocab_size: int = setting(64, derived=True)  # len(tokenizer); ids at or above it are rejected
    max_len: int = setting(16, min=2)  # longest token sequence (BOS included); learned positions exist up to here
    width: int = setting(128, min=1)  # token state width W; the UNet's context_dim
    layers: int = setting(2, min=1)  # transformer blocks
    heads: int = setting(4, min=1)  # attention heads; must divide width
    embed_dim: int = setting(128, min=1)  # pooled output size E; the GAN's cond_dim and the CLIP embedding size

    def __post_init__(self):
        if self.width % self.heads:
            raise ValueError(f"text width {self.width} is not divisible by heads={self.heads}")


class Block(nn.Module):
    """Pre-norm transformer block (Vaswani et al. 2017, with the pre-LN placement of GPT-2 / Xiong et al. 2020)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        B, L, W = x.shape
        qkv = self.qkv(self.norm1(x)).view(B, L, 3, self.heads, W // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, L, W / heads)
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # softmax(q k^T / sqrt(d)) v, eq. 1
        x = x + self.proj(h.transpose(1, 2).reshape(B, L, W))  # (B, L, W)
        return x + self.mlp(self.norm2(x))


class TextEncoder(nn.Module):
    """Bidirectional transformer over tokens. Padding is masked out of attention and pooling, so a caption's
    states and pooled embedding do not depend on how much padding it carries or on the rest of the batch."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.token_emb = nn.Embedding(cfg.vocab_size, cfg.width)
        self.pos_emb = nn.Parameter(torch.randn(cfg.max_len, cfg.width) * 0.02)  # learned positions, as in GPT/CLIP
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, cfg.embed_dim)

    def forward(self, tokens: torch.Tensor):
        """tokens (B, L) from Tokenizer.encode -> states (B, L, W), pooled (B, E), mask (B, L) bool True=real token."""
        L = tokens.shape[1]
        if L > self.cfg.max_len:
            raise ValueError(f"{L} tokens per caption but the text encoder has positions for {self.cfg.max_len}")
        if int(tokens.max()) >= self.cfg.vocab_size:
            raise ValueError(f"token id {int(tokens.max())} is outside the vocabulary of {self.cfg.vocab_size}")
        mask = tokens != PAD  # (B, L)
        x = self.token_emb(tokens) + self.pos_emb[:L]  # (B, L, W)
        attn_mask = mask[:, None, None, :]  # (B, 1, 1, L): every query attends to real tokens only
        for block in self.blocks:
            x = block(x, attn_mask)
        states = self.norm(x)  # (B, L, W); rows at padding are meaningless, the mask says which
        m = mask.unsqueeze(-1).to(states.dtype)  # (B, L, 1)
        pooled = self.head((states * m).sum(1) / m.sum(1))  # masked mean over real tokens -> (B, E)
        return states, pooled, mask


@dataclass
class ImageTowerConfig:
    in_channels: int = setting(3, derived=True)  # image channels
    channels: tuple[int, ...] = setting((32, 64, 128), min=1)  # width after each stride-2 stage
    embed_dim: int = setting(128, derived=True)  # output size; equals TextConfig.embed_dim for clip_loss
    groups: int = setting(8, min=1)  # GroupNorm groups; must divide every width

    def __post_init__(self):
        self.channels = tuple(self.channels)


class ImageTower(nn.Module):
    """Small CNN image encoder for CLIP pre-training only: (B, C, H, W) -> (B, E). Any resolution (global pooling).

    It also holds CLIP's learned temperature, as log(logit scale), initialised to log(1 / 0.07) (Radford et al. 2021
    sec. 2.5); pass `tower.logit_scale.exp()` to clip_loss.
    """

    def __init__(self, cfg: ImageTowerConfig):
        super().__init__()
        self.cfg = cfg
        layers, cin = [], cfg.in_channels
        for c in cfg.channels:
            layers += [nn.Conv2d(cin, c, 3, stride=2, padding=1), nn.GroupNorm(cfg.groups, c), nn.SiLU()]  # H /= 2
            cin = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))  # (B, C_last) -> (B, E)


def clip_loss(text_emb: torch.Tensor, image_emb: torch.Tensor, logit_scale, groups: torch.Tensor | None = None):
    """Symmetric InfoNCE over a batch of matching (text, image) pairs, Radford et al. 2021 Fig. 3.

    text_emb, image_emb: (B, E), L2-normalised here. logit_scale: the multiplier exp(t), clipped at 100 as in CLIP.
    groups: optional (B,) ids; pairs with the same id (the same caption) all count as matches, with the target spread
    evenly over them (as in supervised contrastive learning, Khosla et al. 2020). Without it, a caption repeated in the
    batch makes its copies false negatives, which matters when captions name a few classes.
    """
    t = F.normalize(text_emb, dim=-1)
    i = F.normalize(image_emb, dim=-1)
    logits = torch.as_tensor(logit_scale).clamp(max=100) * i @ t.T  # (B, B): image i against text j
    if groups is None:
        target = torch.arange(len(logits), device=logits.device)
    else:
        same = (groups[:, None] == groups[None, :]).to(logits.dtype)  # (B, B), symmetric
        target = same / same.sum(1, keepdim=True)  # rows are probability distributions
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
