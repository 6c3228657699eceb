"""Fidelity/diversity sweeps: one knob per family (declared by the family: bench/families), the same prompts and
per-sample seeds at every setting. The built-in ones:

  diffusion: the classifier-free guidance scale s, eps = eps_u + s (eps_c - eps_u) (Ho & Salimans 2021, eq. 6 with
             w = s - 1); s = 1 is the plain conditional model, larger s trades diversity for prompt fidelity.
  GAN:       latent truncation psi: z <- psi z, z ~ N(0, I). Brock et al. 2019 (BigGAN, sec. 3.1) introduced the
             "truncation trick" by resampling the entries of z whose magnitude exceeds a threshold; scaling z toward
             its mean (0) instead is the form of Karras et al. 2019 (StyleGAN, sec. 2.3, psi applied in z rather than w)
             and of Kingma & Dhariwal 2018 (Glow's temperature). Scaling is used here: it is one continuous knob with
             psi = 1 the untruncated model and psi = 0 one image per prompt, and it keeps per-sample seeds exact.

Both knobs should move a model along the same curve: precision (fidelity) up, recall (diversity) down
(Kynkaanniemi et al. 2019 show this for truncation). Drawing both families on the same precision/recall axes shows
which trades better.
"""

from collections.abc import Callable, Iterable

import numpy as np
import torch


def sweep(values: Iterable, generate: Callable[..., torch.Tensor], score: Callable[[torch.Tensor], dict],
          key: str = "value") -> list[dict]:
    """[{key: v, **score(generate(v))}] for each knob value v. generate must use the same prompts and seeds at every
    v, so the points differ only by the knob. A setting whose samples cannot be drawn or scored (non-finite images of
    a diverged model, or any other fault) is recorded with its error, not raised. The metric-over-training curve is
    the same loop with key="step" over training checkpoints."""
    points = []
    for v in values:
        try:
            points.append({key: v, **score(generate(v))})
        except Exception as exc:  # noqa: BLE001 -- one bad setting is a recorded point, not a lost sweep
            points.append({key: v, "error": f"{type(exc).__name__}: {exc}"})
    return points


def summarise_sweeps(sweeps: list[list[dict]], keys: Iterable[str]) -> list[dict]:
    """Mean and sample std over seeds (one sweep per seed) at each knob value: [{"value", key: (mean, std)}].

    Values are matched by knob value; a value missing from some seed's sweep (or a metric missing at it) is averaged
    over the seeds that have it, and std is 0 for a single seed."""
    values = list(dict.fromkeys(p["value"] for s in sweeps for p in s))
    out = []
    for v in values:
        row: dict = {"value": v}
        points = [p for s in sweeps for p in s if p["value"] == v]
        for key in keys:
            vals = np.array([p[key] for p in points if p.get(key) is not None], dtype=float)
            if len(vals):
                row[key] = (float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0)
        out.append(row)
    return out
