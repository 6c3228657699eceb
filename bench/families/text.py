"""What every image family shares: the frozen text encoder, its encodings of the prompts, and the network shapes
read from the data.

    captions --tokenizer--> ids --text encoder (frozen)--> states (N, L, W), pooled (N, E), mask (N, L)

The encoder is CLIP-trained once per (dataset, seed) before any family trains (bench/train/images.py
train_text_encoder) and counted on no family's side. `network_configs` derives every shape a network reads from the
data or from another network (image channels and size, the vocabulary, the text widths the GAN and the UNet
consume); nothing else sets them, and every entry records the configs it was built with.
"""

from dataclasses import asdict, dataclass, replace

import torch

from models.dcgan import Discriminator, Generator
from models.text import TextConfig, TextEncoder, Tokenizer
from models.unet import UNet
from models.vae import KLAutoencoder


def network_configs(cfg, *, channels: int, resolution: int, vocab_size: int) -> dict:
    """The configs of every image network of an ImageBenchConfig, with the derived shapes filled in."""
    text = replace(cfg.text, vocab_size=vocab_size)
    return {
        "text": text,
        "tower": replace(cfg.tower, in_channels=channels, embed_dim=text.embed_dim),
        "dcgan": replace(cfg.dcgan, resolution=resolution, channels=channels, cond_dim=text.embed_dim),
        "vae": replace(cfg.vae, in_channels=channels, resolution=resolution),
        "unet": replace(cfg.unet, in_channels=cfg.vae.latent_channels, context_dim=text.width),
    }


def build_networks(cfg, *, channels: int, resolution: int, vocab_size: int, device) -> dict:
    """Fresh, frozen networks of every built-in image family for an ImageBenchConfig (eval mode, on device), by name:
    text, G, D, vae, unet. For measuring speed and FLOPs (`gvd throughput`): they do not depend on trained weights."""
    cfgs = network_configs(cfg, channels=channels, resolution=resolution, vocab_size=vocab_size)
    nets = {"text": TextEncoder(cfgs["text"]), "G": Generator(cfgs["dcgan"]), "D": Discriminator(cfgs["dcgan"]),
            "vae": KLAutoencoder(cfgs["vae"]), "unet": UNet(cfgs["unet"])}
    return {k: m.to(device).eval().requires_grad_(False) for k, m in nets.items()}


@dataclass
class TextModels:
    """The tokenizer and the frozen text encoder both families read."""

    tokenizer: Tokenizer
    encoder: TextEncoder  # frozen, in eval mode
    device: torch.device

    @torch.no_grad()
    def encode(self, captions: list[str], strict: bool = False) -> tuple:
        """Captions -> (states (N, L, W), pooled (N, E), mask (N, L)), in batches of 1024. strict: an unknown word
        raises ValueError naming it (a prompt from a user)."""
        max_len = self.encoder.cfg.max_len
        out = [self.encoder(self.tokenizer.encode(captions[i : i + 1024], max_len, strict=strict).to(self.device))
               for i in range(0, len(captions), 1024)]
        return tuple(torch.cat(parts) for parts in zip(*out))

    def empty_caption(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(states (1, L, W), mask (1, L)) of "": the unconditional input of classifier-free guidance."""
        states, _, mask = self.encode([""])
        return states, mask

    def checkpoint(self) -> tuple[dict, dict]:
        """(modules, metadata) for a checkpoint that rebuilds the encoder (bench/core/rundir.save_checkpoint)."""
        return {"text": self.encoder}, {"tokenizer": asdict(self.tokenizer), "text": asdict(self.encoder.cfg)}

    @classmethod
    def load(cls, states: dict, meta: dict, device) -> "TextModels":
        """The inverse of checkpoint(): states as bench/core/rundir.load_checkpoint returns them."""
        encoder = TextEncoder(TextConfig(**meta["text"]))
        encoder.load_state_dict(states["text"])
        encoder = encoder.to(device).eval().requires_grad_(False)
        return cls(Tokenizer(**meta["tokenizer"]), encoder, torch.device(device))
