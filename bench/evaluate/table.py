"""The metric table: one declaration per metric, read by every table of the report, the verdict, `gvd compare`'s
gates and metrics.csv. Adding a metric is one Metric here (and, when its maths is new, a pure function in
bench/evaluate/metrics.py that `compute` calls).

A Metric says what a number is (key, label, format, display scale, note), which way is better (+1 higher, -1 lower,
0 neither: a count or a diagnostic), where it applies (the benchmarks; "labels" when it needs the judge's classes),
where it lives in a run entry (path), its sane range (a compare gate's amount is checked against it) and whether it
enters the verdict (its aspect). `compute`, when given, is how the evaluation stage computes it from the scored
sample set (bench/evaluate/images.py image_metrics): {"real_feats", "feats", "judged", "prompted", "num_modes",
"images"} -> float.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bench.evaluate.metrics import FRESH_SPREAD, duplicate_share

INF = math.inf


@dataclass(frozen=True)
class Metric:
    key: str  # the key in a run entry's metrics (or the last part of `path`)
    label: str  # as a table header writes it
    fmt: str = "{:.3g}"  # format of the displayed value (after `scale`)
    better: int = 0  # +1 higher is better, -1 lower is better, 0 neither
    benchmarks: tuple[str, ...] = ("image",)  # "mixture", "image"
    aspect: str | None = None  # the verdict's aspect when the metric enters the verdict ("quality", ...)
    scale: float = 1.0  # displayed value = value x scale
    note: str = ""  # what a reader must know to read it (printed under the tables that show it)
    bounds: tuple[float, float] = (-INF, INF)  # the values it can take
    path: tuple[str, ...] = ()  # where it lives in a run entry; () = ("metrics", key)
    needs: str = ""  # "labels": only where a judge gives classes
    column: bool = True  # shown as a column of the per-family table
    compute: Callable[[dict], float] | None = None  # how the evaluation stage computes it (None: built in)
    # better=0 with a target: the verdict ranks by closeness to it (the metric's exact value for fresh data or for a
    # generator without the defect), where more in either direction is a defect
    target: float | None = None

    def where(self) -> tuple[str, ...]:
        return self.path or ("metrics", self.key)

    def display(self, value: float) -> str:
        return self.fmt.format(value * self.scale)

    def display_mean(self, value: float) -> str:
        """A mean over seeds (or a mean difference): one decimal more for a count, so 7.7 modes is not shown as 8."""
        return ("{:.1f}" if self.fmt == "{:.0f}" else self.fmt).format(value * self.scale)


FRACTION = (0.0, 1.0)
LF = ("on the label-free encoder's features (bench/data/encoder.py: an autoencoder trained without labels; its "
      "variance is mostly not class identity, unlike the judge's)")
METRICS = [
    # ---- quality
    Metric("fid_lf", "FID (label-free)", "{:.2f}", -1, aspect="quality", bounds=(0, INF),
           note=f"FID (label-free): FID {LF}; biased upward at small N (Chong & Forsyth 2020): compare at equal N"),
    Metric("intra_fid", "intra-class FID", "{:.1f}", -1, aspect="quality", bounds=(0, INF), needs="labels",
           note="intra-class FID: FID between each class's real images and the samples prompted for it, averaged over "
                "the classes (Miyato & Koyama 2018), label-free features; with a few dozen images per class it is "
                "strongly biased upward: read it against the held-out real row"),
    Metric("fid", "FID (judge)", "{:.2f}", -1, bounds=(0, INF),
           note="FID (judge): FID on the class-trained judge's features (about 95% of their variance is class "
                "identity: blind to collapse within a class)"),
    Metric("hq_fraction", "high-quality share", "{:.3f}", +1, ("mixture",), aspect="quality", bounds=FRACTION),
    Metric("kid", "KID x1e3 (judge)", "{:.2f}", -1, scale=1e3, column=False,
           note="KID on the judge's features (not Inception KID: not comparable with published KID)"),
    Metric("precision_lf", "precision (label-free)", "{:.2f}", +1, bounds=FRACTION),
    Metric("density_lf", "density (label-free)", "{:.2f}", +1, bounds=(0, INF), column=False),
    Metric("precision", "precision (judge)", "{:.2f}", +1, bounds=FRACTION, column=False),
    Metric("density", "density (judge)", "{:.2f}", +1, bounds=(0, INF), column=False),
    # ---- diversity
    Metric("recall_lf", "recall (label-free)", "{:.2f}", +1, aspect="diversity", bounds=FRACTION),
    Metric("coverage_lf", "coverage (label-free)", "{:.2f}", +1, aspect="diversity", bounds=FRACTION),
    Metric("recall", "recall (judge)", "{:.2f}", +1, bounds=FRACTION, column=False),
    Metric("coverage", "coverage (judge)", "{:.2f}", +1, bounds=FRACTION, column=False),
    Metric("modes", "modes", "{:.0f}", +1, ("mixture", "image"), aspect="diversity", bounds=(0, INF), needs="labels"),
    Metric("reverse_kl", "reverse KL", "{:.3f}", -1, ("mixture", "image"), aspect="diversity", bounds=(0, INF),
           needs="labels"),
    Metric("forward_kl", "forward KL", "{:.3f}", -1, bounds=(0, INF), needs="labels", column=False),
    # ---- within a class (a mode)
    Metric("within_coverage", "within-class coverage", "{:.2f}", +1, aspect="within-class diversity",
           bounds=FRACTION, needs="labels",
           note="within-class coverage: per class, the share of its real images whose 5-nearest-neighbour ball (label-"
                "free features) holds a sample the judge puts in that class, averaged (Naeem et al. 2020's coverage, "
                "class by class): fresh data ~0.96, one image per class ~0.1"),
    Metric("factor_coverage", "factor coverage", "{:.2f}", +1, aspect="within-class diversity", bounds=FRACTION,
           needs="labels",
           note="factor coverage: the same on the generator's own factors (shapes: position, size, background) read "
                "back from the images by a regressor trained on the real ones: the ground truth of within-class "
                "variety"),
    Metric("mode_spread", "within-mode spread", "{:.2f}", 0, ("mixture",), aspect="within-class diversity",
           bounds=(0, INF), target=FRESH_SPREAD,
           note="within-mode spread: the samples' RMS distance from their mode's centre over the mode's own (sqrt(2) "
                "std), averaged over modes: fresh draws 0.974, one point per mode 0, samples strewn across the 3-std "
                "disc up to 1.5; ranked by closeness to 0.974"),
    Metric("duplicate_share", "duplicates", "{:.3f}", -1, bounds=FRACTION,
           compute=lambda s: duplicate_share(s["images"]),
           note="duplicates: the share of samples identical to an earlier sample of the same set"),
    # ---- prompt adherence
    Metric("cond_accuracy", "prompt accuracy", "{:.3f}", +1, aspect="prompt adherence", bounds=FRACTION,
           needs="labels"),
    # ---- memorisation
    Metric("copy_excess", "copy excess", "{:+.2f}", 0, aspect="memorisation", bounds=(-INF, 1), needs="labels",
           target=0.0,
           note="copy excess: how much more often a sample's nearest real image (label-free features) is a training "
                "image than chance |T| / (|T| + |H|) makes it, scaled so that a copier reads 1: exactly 0 in "
                "expectation for every generator that does not depend on the training set (fresh, concentrated or "
                "blurry alike), c for one that copies a share c; its spread is about sqrt(|T| / (|H| N)) per seed. "
                "The verdict ranks it by closeness to 0 and names no leader where samples come near no real image"),
    Metric("near_copy_share", "near-copies of train", "{:.3f}", 0, bounds=FRACTION, needs="labels", column=False),
    Metric("near_copy_share_held", "near-copies of held-out", "{:.3f}", 0, bounds=FRACTION, needs="labels",
           column=False),
    Metric("c_t", "C_T", "{:.2f}", 0, needs="labels",
           note="C_T: Meehan et al. 2020's data-copying statistic against held-out images (well below 0 = samples "
                "nearer the training set than held-out data are; concentrated samples read low too)"),
    # ---- Inception features (with the extra)
    Metric("fid_inception", "FID (Inception)", "{:.2f}", -1, bounds=(0, INF), column=False),
    Metric("kid_inception", "KID x1e3 (Inception)", "{:.2f}", -1, scale=1e3, column=False),
    # ---- cost (from the train and throughput records)
    Metric("sample_seconds", "sampling s (same sample count)", "{:.3g}", -1, ("mixture", "image"),
           aspect="cost: sampling", bounds=(0, INF), path=("throughput", "sample_seconds"), column=False),
    Metric("train_seconds", "training s", "{:.3g}", -1, ("mixture", "image"), aspect="cost: training",
           bounds=(0, INF), path=("train", "seconds"), column=False),
    Metric("train_flops", "training FLOPs", "{:.3g}", -1, ("mixture", "image"), bounds=(0, INF),
           path=("train", "flops"), column=False),
    # ---- the sample count and FID's resampling (recorded, not columns)
    Metric("num_samples", "samples", "{:.0f}", 0, ("mixture", "image"), bounds=(0, INF), column=False),
    Metric("fid_bc", "FID (judge), bias-corrected", "{:.2f}", -1, bounds=(0, INF), column=False),
    Metric("judge_accuracy", "judge accuracy", "{:.3f}", 0, bounds=FRACTION, column=False, needs="labels"),
]
BY_KEY = {m.key: m for m in METRICS}

# What `gvd metrics` prints beside each metric: its definition where the metric has no note (a note is the definition
# the report prints), and where it comes from. "this suite" marks an instrument defined here; its docstring in
# bench/evaluate/metrics.py gives the maths and its known-answer check (bench/evaluate/panel.py).
KNN = "k-nearest-neighbour balls"
DEFINITIONS = {
    "hq_fraction": "2D mixtures: the share of samples within 3 standard deviations of their nearest mode's centre",
    "precision_lf": f"the share of samples inside the real images' {KNN} (k = 3): fidelity; {LF}",
    "density_lf": f"how many real images' {KNN} (k = 5) hold a sample, on average over the samples, divided by k: "
                  f"about 1 for fresh data, above 1 where samples crowd dense regions; {LF}",
    "precision": f"the share of samples inside the real images' {KNN} (k = 3), on the judge's features",
    "density": f"density (k = 5) on the judge's features: how many real images' {KNN} hold a sample, over k",
    "recall_lf": f"the share of real images inside the samples' {KNN} (k = 3): diversity; {LF}",
    "coverage_lf": f"the share of real images whose ball (k = 5 among the real images) holds a sample; {LF}",
    "recall": f"the share of real images inside the samples' {KNN} (k = 3), on the judge's features",
    "coverage": "the share of real images whose 5-nearest-neighbour ball holds a sample, on the judge's features",
    "modes": "images: the classes the judge finds among the samples; 2D: the modes that are the nearest mode of at "
             "least one high-quality sample",
    "reverse_kl": "KL(p_gen || p_data) over the judge's labels (p_data: the test split's class histogram), or on 2D "
                  "over the nearest-mode histogram of the high-quality samples (p_data uniform)",
    "forward_kl": "KL(p_data || p_gen) over the same histograms: large where the samples miss classes the data have",
    "cond_accuracy": "prompt accuracy: the share of samples the judge assigns to the class their prompt asks for "
                     "(at most the judge's own accuracy)",
    "near_copy_share": "the share of samples nearer a training image than the 5% quantile of the training images' "
                       "own leave-one-out nearest-neighbour distances (label-free features): fresh data ~0.05",
    "near_copy_share_held": "the same against the held-out real images: far below 0.05, the samples come near no "
                            "real image and memorisation cannot be read",
    "fid_inception": "FID on Inception-v3 pool features (clean-fid's resize; the [inception] extra or "
                     "--inception-weights): comparable with published FIDs only at the same N and resolution",
    "kid_inception": "KID (x1e3) on the same Inception-v3 features",
    "sample_seconds": "wall seconds to draw the scored samples at the neutral knob on the run's device",
    "train_seconds": "wall seconds of the family's training (the shared, frozen text encoder on no side)",
    "train_flops": "training FLOPs: the FLOPs of one step (torch.utils.flop_counter: matmuls, convolutions, "
                   "attention) x steps, plus a first stage (the diffusion model's autoencoder)",
    "num_samples": "the images (2D: points) scored; FID and KID depend on it: compare at equal N",
    "fid_bc": "FID (judge) less its bootstrap bias estimate: 2 FID - mean(FID*) over resamples of both sets",
    "judge_accuracy": "the judge's accuracy on the test split: the ceiling of prompt accuracy",
}
PRDC_2019 = "Kynkaanniemi et al. 2019, Improved Precision and Recall Metric for Assessing Generative Models"
PRDC_2020 = "Naeem et al. 2020, Reliable Fidelity and Diversity Metrics for Generative Models"
FID_2017 = "Heusel et al. 2017, GANs Trained by a Two Time-Scale Update Rule (FID); clean-fid's frechet_distance"
MODES_2D = "Srivastava et al. 2017 (VEEGAN) and Lin et al. 2018 (PacGAN), 2D mixtures; Metz et al. 2017 (Stacked MNIST)"
CITATIONS = {
    "fid_lf": FID_2017, "fid": FID_2017, "fid_inception": FID_2017 + "; Szegedy et al. 2016 (Inception-v3)",
    "intra_fid": "Miyato & Koyama 2018, cGANs with Projection Discriminator (intra-class FID)",
    "hq_fraction": MODES_2D,
    "kid": "Binkowski et al. 2018, Demystifying MMD GANs (KID); clean-fid's kernel_distance",
    "kid_inception": "Binkowski et al. 2018, Demystifying MMD GANs (KID); clean-fid's kernel_distance",
    "precision_lf": PRDC_2019, "precision": PRDC_2019, "recall_lf": PRDC_2019, "recall": PRDC_2019,
    "density_lf": PRDC_2020, "density": PRDC_2020, "coverage_lf": PRDC_2020, "coverage": PRDC_2020,
    "modes": MODES_2D, "reverse_kl": MODES_2D + "; direction as PacGAN's released code",
    "forward_kl": "Kullback & Leibler 1951; the reverse of reverse_kl's direction",
    "within_coverage": PRDC_2020 + ", class by class (this suite)",
    "factor_coverage": PRDC_2020 + ", on the shapes generator's own factors (this suite)",
    "mode_spread": "this suite (bench/evaluate/metrics.py mode_spread)",
    "duplicate_share": "this suite (bench/evaluate/metrics.py duplicate_share)",
    "cond_accuracy": "Shmelkov et al. 2018, How good is my GAN? (GAN-test: a classifier trained on real images "
                     "reads the samples)",
    "copy_excess": "this suite (bench/evaluate/metrics.py memorisation); cf. Meehan et al. 2020",
    "near_copy_share": "this suite (bench/evaluate/metrics.py memorisation)",
    "near_copy_share_held": "this suite (bench/evaluate/metrics.py memorisation)",
    "c_t": "Meehan et al. 2020, A Non-Parametric Test to Detect Data-Copying in Generative Models",
    "sample_seconds": "a measurement (bench/evaluate/images.py)",
    "train_seconds": "a measurement (bench/families)",
    "train_flops": "a count (torch.utils.flop_counter, bench/train/loops.py count_flops)",
    "num_samples": "Chong & Forsyth 2020, Effectively Unbiased FID and Inception Score (why N matters)",
    "fid_bc": "Efron & Tibshirani 1993, ch. 10 (bootstrap bias); Chong & Forsyth 2020 (FID's bias at finite N)",
    "judge_accuracy": "Metz et al. 2017 (the Stacked MNIST protocol's classifier); this suite's judge",
}


def definition(m: Metric) -> str:
    """What a metric is, in words: its note where it has one (the report prints it), else DEFINITIONS."""
    return m.note or DEFINITIONS.get(m.key, "")


def direction(m: Metric) -> str:
    if m.target is not None:
        return f"closer to {m.target:.3g} is better"
    return {1: "higher is better", -1: "lower is better"}.get(m.better, "neither: read against the held-out real row")


def metric(key: str) -> Metric | None:
    return BY_KEY.get(key)


def of(benchmark: str, columns_only: bool = False) -> list[Metric]:
    """The metrics of a benchmark ("mixture" or "image"), in table order."""
    return [m for m in METRICS if benchmark in m.benchmarks and (m.column or not columns_only)]


def verdict_metrics() -> list[Metric]:
    """The metrics that enter the verdict, in the verdict's order of aspects."""
    return [m for m in METRICS if m.aspect is not None]


def value(entry: dict, m: Metric, setting: str = "neutral") -> float | None:
    """A metric's value in a run entry (at the tuned knob with setting="tuned", for the per-sample metrics), or None
    when the entry does not have it (or has a non-number there)."""
    where = m.where()
    if setting == "tuned" and where[0] == "metrics":
        where = ("tuned", "metrics", *where[1:])
    node = entry
    for part in where:
        node = node.get(part) if isinstance(node, dict) else None
    ok = isinstance(node, (int, float, np.number)) and not isinstance(node, bool)
    return float(node) if ok else None


def extra_metrics(sample_set: dict) -> dict:
    """The table's metrics with a `compute`, of one scored sample set (bench/evaluate/images.py image_metrics)."""
    return {m.key: m.compute(sample_set) for m in METRICS if m.compute is not None}
