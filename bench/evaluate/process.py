"""How each family makes an image, as arrays for the report's process figures (bench/report/process.py): a few
prompts and seeds, never the scored samples.

    strip      every image family: its samples for fixed prompts and seeds at each training snapshot (the steps the
               curves score), at its neutral knob: a GAN dropping modes is seen, not only counted
    explain    what the family itself shows (Family.explain_image): for diffusion the sampler's trajectory beside
               two other samplers at equal NFE, the forward process, and guidance taken apart

Drawn in the evaluation's arithmetic, on this process alone (no collective: [ddp] rank 0 calls it).
"""

import torch

from bench.train.loops import autocast

STRIP_PROMPTS = 8  # prompts (rows) of a snapshot strip: the first scored prompts with their seeds
EXPLAIN_PROMPTS = 4  # prompts of the trajectory (the first two also show guidance)


def snapshot_strip(ev, family, trained) -> dict[str, torch.Tensor]:
    """{"strip": (snapshots, prompts, C, H, W), "strip_steps": (snapshots,)}: the family's EMA at each training
    snapshot on the first STRIP_PROMPTS scored prompts and seeds, at its neutral knob (empty without snapshots)."""
    if not trained.snapshots:
        return {}
    prompts = ev.scored.rows(slice(0, STRIP_PROMPTS))
    knob = family.knob.neutral if family.knob else 1.0
    with autocast(ev.device, ev.amp):
        images = [family.sample_image(trained, prompts, knob, snap.ema)[0].float() for snap in trained.snapshots]
    return {"strip": torch.stack(images), "strip_steps": torch.tensor([snap.step for snap in trained.snapshots])}


def explain(prep, ev, family, trained, cfg) -> dict:
    """Every array of the family's process figures: its snapshot strip and what Family.explain_image draws (on the
    first EXPLAIN_PROMPTS scored prompts and the first held-out test image)."""
    out = snapshot_strip(ev, family, trained)
    if family.explain_image is not None:
        held = prep.held_out[:1] if len(prep.held_out) else torch.zeros(1, dtype=torch.long)
        with autocast(ev.device, ev.amp):
            out.update(family.explain_image(trained, ev.scored.rows(slice(0, EXPLAIN_PROMPTS)),
                                            prep.test.images[held[0]], family.grid(cfg)))
    return out
