"""The image models as one bundle: the only place they are wired together.

    captions --tokenizer--> ids --text encoder (frozen)--> states (N, L, W), pooled (N, E), mask (N, L)
    GAN:       G(z, pooled) -> image; D(image, pooled) -> logit (projection discriminator)
    diffusion: UNet(z_t, t, context=states, context_mask=mask) on VAE latents times vae.scale_factor;
               images = VAE decode(z_0 / scale_factor)

`network_configs` derives every shape a network reads from the data or from another network (image channels and
size, the vocabulary, the text widths the GAN and the UNet consume); nothing else sets them. `ImageModels` holds the
built networks and samples both families with per-sample seeds (sample i is the same image at any batch size), so the
benchmark, `gvd sample`, `gvd throughput` and the tests draw images the same way. `save` / `load` keep the networks in
one safetensors file with every config in its metadata: a checkpoint rebuilds its models alone.
"""

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from bench.core.rundir import load_checkpoint, save_checkpoint
from bench.core.seeding import noise_fn, per_sample_randn
from bench.evaluate.sweeps import truncate
from models.dcgan import DCGANConfig, Discriminator, Generator
from models.diffusion import DiffusionConfig, alphas_cumprod
from models.samplers import guided, sample
from models.text import ImageTower, TextConfig, TextEncoder, Tokenizer
from models.unet import UNet, UNetConfig
from models.vae import KLAutoencoder, VAEConfig


def network_configs(cfg, *, channels: int, resolution: int, vocab_size: int) -> dict:
    """The configs of every image network for an ImageBenchConfig, with the derived shapes filled in."""
    text = replace(cfg.text, vocab_size=vocab_size)
    return {
        "text": text,
        "tower": replace(cfg.tower, in_channels=channels, embed_dim=text.embed_dim),
        "dcgan": replace(cfg.dcgan, resolution=resolution, channels=channels, cond_dim=text.embed_dim),
        "vae": replace(cfg.vae, in_channels=channels, resolution=resolution),
        "unet": replace(cfg.unet, in_channels=cfg.vae.latent_channels, context_dim=text.width),
    }


def schedule(diffusion: DiffusionConfig, device) -> torch.Tensor:
    """alpha_bar (T,) of a diffusion config, float32 on device."""
    return alphas_cumprod(diffusion.schedule, diffusion.num_steps).float().to(device)


@torch.no_grad()
def encode_captions(text: TextEncoder, tokenizer: Tokenizer, captions: list[str], device, strict: bool = False):
    """Captions -> (states (N, L, W), pooled (N, E), mask (N, L)) from a frozen encoder, in batches.
    strict: an unknown word raises ValueError naming it (a prompt from a user)."""
    out = [text(tokenizer.encode(captions[i : i + 1024], text.cfg.max_len, strict=strict).to(device))
           for i in range(0, len(captions), 1024)]
    return tuple(torch.cat(parts) for parts in zip(*out))


@torch.no_grad()
def encode_latents(vae: KLAutoencoder, images: torch.Tensor) -> torch.Tensor:
    """Posterior means of the images (unscaled), in batches. The UNet trains on these times scale_factor: with a KL
    weight of 1e-6 the posterior std is tiny, so the mean loses nothing and makes training deterministic."""
    return torch.cat([vae.encode(b)[0] for b in images.split(512)])


def new_text_encoder(cfgs: dict) -> tuple[TextEncoder, ImageTower]:
    """The text encoder and the image tower it is CLIP-trained against (the tower is dropped after training)."""
    return TextEncoder(cfgs["text"]), ImageTower(cfgs["tower"])


@dataclass
class ImageModels:
    tokenizer: Tokenizer
    text: TextEncoder  # frozen after CLIP pre-training; shared by both families
    G: Generator  # the generator that samples (the EMA copy when training keeps one)
    D: Discriminator
    vae: KLAutoencoder
    unet: UNet  # the denoiser that samples (the EMA copy)
    diffusion: DiffusionConfig  # schedule, T, prediction
    device: torch.device
    amp: bool = False  # bf16 autocast on CUDA

    @classmethod
    def build(cls, cfg, *, tokenizer: Tokenizer, channels: int, resolution: int, device) -> "ImageModels":
        """Fresh, untrained networks for an ImageBenchConfig (in eval mode, on device)."""
        cfgs = network_configs(cfg, channels=channels, resolution=resolution, vocab_size=len(tokenizer))
        nets = {"text": TextEncoder(cfgs["text"]), "G": Generator(cfgs["dcgan"]), "D": Discriminator(cfgs["dcgan"]),
                "vae": KLAutoencoder(cfgs["vae"]), "unet": UNet(cfgs["unet"])}
        nets = {k: m.to(device).eval().requires_grad_(False) for k, m in nets.items()}
        return cls(tokenizer=tokenizer, diffusion=cfg.diffusion, device=torch.device(device), amp=cfg.amp, **nets)

    @property
    def alpha_bar(self) -> torch.Tensor:
        return schedule(self.diffusion, self.device)

    def encode(self, captions: list[str], strict: bool = False):
        """Captions -> (states (N, L, W), pooled (N, E), mask (N, L)); see encode_captions."""
        return encode_captions(self.text, self.tokenizer, captions, self.device, strict)

    def empty_caption(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(states (1, L, W), mask (1, L)) of "": the unconditional input of classifier-free guidance."""
        states, _, mask = self.encode([""])
        return states, mask

    @torch.no_grad()
    def sample_gan(self, pooled: torch.Tensor, seeds: torch.Tensor, *, psi: float = 1.0, G: nn.Module | None = None,
                   batch: int = 512) -> torch.Tensor:
        """One generator forward per image; z_i depends only on seed i; psi < 1 truncates z (bench/sweeps.py).
        G: another generator of the same shape (a snapshot) instead of self.G. Returns (N, C, H, W) on the CPU."""
        G = self.G if G is None else G
        out = []
        for i in range(0, len(seeds), batch):
            z = truncate(per_sample_randn(seeds[i : i + batch], (G.cfg.z_dim,)), psi).to(self.device)
            out.append(G(z, pooled[i : i + batch]).float().clamp(-1, 1).cpu())
        return torch.cat(out)

    @torch.no_grad()
    def sample_diffusion(self, states, mask, seeds: torch.Tensor, *, sampler: str, steps: int, guidance: float,
                         unet: nn.Module | None = None, batch: int = 256) -> tuple[torch.Tensor, int]:
        """Guided sampling in latent space from per-sample-seeded noise, then the VAE decoder.
        unet: another denoiser of the same shape (a snapshot). Returns (images (N, C, H, W) on the CPU, NFE)."""
        unet = self.unet if unet is None else unet
        h = self.vae.cfg.resolution // self.vae.cfg.factor
        shape = (unet.cfg.in_channels, h, h)
        u_states, u_mask = self.empty_caption()
        alpha_bar = self.alpha_bar
        out, nfe = [], 0
        for i in range(0, len(seeds), batch):
            s = seeds[i : i + batch]
            n = len(s)
            cond = {"context": states[i : i + n], "context_mask": mask[i : i + n]}
            uncond = {"context": u_states.expand(n, -1, -1), "context_mask": u_mask.expand(n, -1)}
            model = bind(unet, cond) if guidance == 1.0 else guided(unet, guidance, cond, uncond)
            x_T = per_sample_randn(s, shape).to(self.device)
            z, nfe = sample(sampler, model, x_T, alpha_bar, steps, prediction=self.diffusion.prediction,
                            noise=noise_fn(s, shape, self.device))
            out.append(self.decode_latents(z).float().cpu())
        return torch.cat(out), nfe

    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        return encode_latents(self.vae, images)

    @torch.no_grad()
    def decode_latents(self, z_scaled: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.vae.decode(b / self.vae.scale_factor) for b in z_scaled.split(512)]).clamp(-1, 1)

    def metadata(self) -> dict:
        """Everything `load` needs to rebuild the networks, as JSON."""
        return {"tokenizer": asdict(self.tokenizer), "text": asdict(self.text.cfg), "dcgan": asdict(self.G.cfg),
                "vae": asdict(self.vae.cfg), "unet": asdict(self.unet.cfg), "diffusion": asdict(self.diffusion),
                "amp": self.amp}

    def save(self, path: Path, extra: dict) -> None:
        """One safetensors file: every network's weights, and metadata() plus `extra` (dataset, seed, sampler...)."""
        modules = {"text": self.text, "G": self.G, "D": self.D, "vae": self.vae, "unet": self.unet}
        save_checkpoint(Path(path), modules, {**self.metadata(), **extra})

    @classmethod
    def load(cls, path: Path, device) -> tuple["ImageModels", dict]:
        """The inverse of save: (models in eval mode on device, the stored metadata). ValueError names a file that
        is not an image checkpoint."""
        states, meta = load_checkpoint(Path(path))
        if not {"tokenizer", "dcgan", "unet"} <= set(meta) or set(states) != {"text", "G", "D", "vae", "unet"}:
            raise ValueError(f"{path}: not an image-model checkpoint of this version")
        dcfg = DCGANConfig(**meta["dcgan"])
        nets = {"text": TextEncoder(TextConfig(**meta["text"])), "G": Generator(dcfg), "D": Discriminator(dcfg),
                "vae": KLAutoencoder(VAEConfig(**meta["vae"])), "unet": UNet(UNetConfig(**_tuples(meta["unet"])))}
        for name, module in nets.items():
            module.load_state_dict(states[name])
            nets[name] = module.to(device).eval().requires_grad_(False)
        models = cls(tokenizer=Tokenizer(**meta["tokenizer"]), diffusion=DiffusionConfig(**meta["diffusion"]),
                     device=torch.device(device), amp=meta.get("amp", False), **nets)
        return models, meta


def _tuples(cfg: dict) -> dict:
    """JSON turns tuples into lists; configs compare and hash tuples."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}


def bind(model, kwargs: dict):
    """A denoiser (x, t) -> prediction with its conditioning fixed."""
    return lambda x, t: model(x, t, **kwargs)

