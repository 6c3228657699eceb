"""`gvd score` and `bench.score`: samples made anywhere, scored by the suite's protocol against a reference.

    samples      a folder of images (class sub-folders named like the reference's classes give each sample's class;
                 a captions file, metadata.csv / metadata.jsonl with `file_name` and `text` columns as the dataset
                 folders take, gives each sample's prompt), or a .npz with an `images` array: (N, C, H, W) floats
                 in [-1, 1] or (N, H, W, C) uint8, and optionally `labels` (class indices or names) and `captions`;
                 from Python also an array or tensor of the same forms. Images of another size are resized to the
                 reference's resolution (a folder's by the dataset loader's centre square and bicubic resampling, an
                 array's by antialiased bilinear resampling) and the record says so.
    reference    a built-in image dataset (`shapes`: its fixed test split at the preset's resolution) or a folder
                 (`folder:PATH`, or a path): its fixed seeded split, whose training part the readers learn from and
                 whose test part the metrics compare with, exactly as `gvd run` would use it
    protocol     bench/run/images.py prepare (the judge, the label-free encoder and factor read-out, the scored
                 reference: N test images for N samples; Inception with the extra or --inception-weights) and
                 bench/evaluate/images.py (every metric of a run entry, memorisation included, by the same
                 functions); classes, where given, make prompt accuracy and the intra-class numbers
    calibration  beside the samples at the same N and classes: the held-out real row (test images outside the
                 reference) and the copier (training images replayed), bench/families/calibration.py

Samples without classes are scored on everything that needs none; the calibration rows then draw their classes as
`gvd run` draws prompts (the data's caption distribution). The images a `gvd run` scored (`gvd sample RUN --scored`
writes them) score here exactly as the run scored them (tests/test_score.py).
"""

import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bench.config import ConfigError, apply_override, preset, validate
from bench.core.files import atomic_write, csv_text, json_text, versions
from bench.core.pool import torch_threads
from bench.core.rundir import load_checkpoint
from bench.core.seeding import sample_seeds
from bench.data.images import DataError, ImageData, load_folder, load_splits, parse_name, split_record
from bench.data.registry import dataset_info
from bench.errors import UserError
from bench.evaluate import images as evaluation
from bench.evaluate import table
from bench.evaluate.images import draw, eval_set, held_out_pool, inception_metrics, memorisation_record, occurrences
from bench.families.calibration import Pool
from bench.families.interface import Prompts
from bench.families.text import TextModels
from bench.report.render import to_markdown
from bench.run.images import prepare
from bench.run.suite import cache_dir

SCHEMA = "gan-vs-diffusion/score/v1"
ROWS = ("samples", "held-out-real", "copier")
MEMORISED = ("near_copy_share", "near_copy_share_held", "copy_excess", "c_t")  # a run entry's headline memorisation
NEED_PROMPTS = ("cond_accuracy", "intra_fid", "intra_fid_classes", "intra_fid_min_count", "intra_fid_median_count")


@dataclass
class Samples:
    """Images to score, as the readers take them, and what is known of what each was made for."""

    images: torch.Tensor  # (N, C, H, W) float32 in [-1, 1] at the reference's resolution and channels
    labels: torch.Tensor | None  # (N,) the reference class each was made for; None when not given
    captions: list[str] | None  # (N,) the prompts, when given
    record: dict  # where they came from and how they were read


# ---------------------------------------------------------------- reading samples


def _normalise(text: str) -> str:
    return " ".join(str(text).lower().split())


def caption_classes(data: ImageData) -> dict[str, int | None]:
    """Every caption the dataset's templates make from its images' words, normalised, -> its class (None when two
    classes share it): how a prompt is read back into the class it asks for."""
    out: dict[str, int | None] = {}
    fields = data.fields or [{"caption": c} for c in data.captions]
    for words, label in zip(fields, data.labels.tolist()):
        for template in data.templates:
            key = _normalise(template.format(**words))
            out[key] = label if out.get(key, label) == label else None
    return out


def _classes_of_captions(captions: list[str], data: ImageData) -> torch.Tensor:
    known = caption_classes(data)
    labels = []
    for i, caption in enumerate(captions):
        label = known.get(_normalise(caption), -1)
        if label is None or label < 0:
            example = data.captions[0] if data.captions else ""
            why = "two classes share it" if label is None else f"the reference's captions read like {example!r}"
            raise DataError(f"caption {caption!r} of sample {i} names no one class of the reference ({why}); prompt "
                            f"accuracy needs captions the reference's own words make")
        labels.append(label)
    return torch.tensor(labels, dtype=torch.long)


def _classes_of_names(names, data: ImageData, where: str) -> torch.Tensor:
    index = {_normalise(n): i for i, n in enumerate(data.class_names)}
    unknown = sorted({str(n) for n in names if _normalise(n) not in index})
    if unknown:
        raise DataError(f"{where}: {', '.join(map(repr, unknown[:3]))} {'is' if len(unknown) == 1 else 'are'} not a "
                        f"class of the reference (its classes: {', '.join(data.class_names[:6])}"
                        f"{' ...' if len(data.class_names) > 6 else ''})")
    return torch.tensor([index[_normalise(n)] for n in names], dtype=torch.long)


def _array_images(x, resolution: int, record: dict) -> torch.Tensor:
    """An (N, C, H, W) float array in [-1, 1] or an (N, H, W, C) uint8 one, as (N, C, resolution, resolution)."""
    x = torch.as_tensor(np.asarray(x))
    if x.ndim != 4:
        raise DataError(f"images must be (N, C, H, W) floats or (N, H, W, C) uint8; got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        if x.shape[-1] not in (1, 3):
            raise DataError(f"uint8 images are read as (N, H, W, C) with C = 1 or 3; got {tuple(x.shape)}")
        x = x.permute(0, 3, 1, 2).float() / 255 * 2 - 1
    else:
        x = x.float()
        if x.shape[1] not in (1, 3):
            raise DataError(f"float images are read as (N, C, H, W) with C = 1 or 3; got {tuple(x.shape)}")
        if not torch.isfinite(x).all() or x.min() < -1.001 or x.max() > 1.001:
            raise DataError(f"float images must be finite and in [-1, 1]; these span [{x.min():.3g}, {x.max():.3g}]")
    if x.shape[-2:] != (resolution, resolution):
        record["resized"] = f"{x.shape[-2]}x{x.shape[-1]} -> {resolution}x{resolution} (bilinear, antialiased)"
        x = torch.cat([F.interpolate(c, size=(resolution, resolution), mode="bilinear", align_corners=False,
                                     antialias=True) for c in x.split(1024)])
    return x.clamp(-1, 1).contiguous()


def _read_npz(path: Path, resolution: int) -> tuple[torch.Tensor, object, object, dict]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path} as a .npz of arrays ({str(exc).splitlines()[0]})") from None
    if "images" not in arrays:
        raise DataError(f"{path} has no `images` array (it holds {', '.join(arrays) or 'nothing'})")
    record = {"path": str(path), "format": "npz"}
    given = {k: arrays[k] for k in ("labels", "captions") if k in arrays and arrays[k].size}  # empty: not given
    return _array_images(arrays["images"], resolution, record), given.get("labels"), given.get("captions"), record


def _read_folder(path: Path, resolution: int, captions: str | None) -> tuple[torch.Tensor, object, object, dict]:
    """A folder as the dataset loader reads one (class sub-folders, or images alone); its captions from `captions`
    or a metadata.csv / metadata.jsonl inside it."""
    found = [path / n for n in ("metadata.csv", "metadata.jsonl") if (path / n).is_file()]
    captions_file = captions or (str(found[0]) if found else None)
    data = load_folder(str(path), resolution, captions_file)
    with_classes = any(d.is_dir() and not d.name.startswith(".") for d in path.iterdir())
    names = [data.class_names[i] for i in data.labels.tolist()] if with_classes else None
    record = {"path": str(path), "format": "folder", "read": "centre square, bicubic to the reference's resolution"}
    return data.images, names, data.captions if captions_file else None, record


def read_samples(source, data: ImageData, resolution: int, captions=None, labels=None) -> Samples:
    """Samples from a folder, a .npz, or an array / tensor (see the module docstring), at the reference's resolution
    and channels, with the class each was made for when class names or indices (sub-folders, the .npz's `labels`,
    `labels`) or captions say it. A folder's captions come from a file (`captions`, else its metadata.csv /
    metadata.jsonl); an array's from a list or a text file of one caption per line (`captions`), else the .npz's
    `captions`. DataError (one line) for anything it cannot read."""
    path = Path(source) if isinstance(source, (str, Path)) else None
    if path is not None and path.is_dir():
        if captions is not None and not isinstance(captions, (str, Path)):
            raise DataError("a folder's captions come from a file: metadata.csv or .jsonl with file_name and text")
        images, names, given, record = _read_folder(path, resolution, None if captions is None else str(captions))
    else:
        if path is None:
            record = {"format": "array"}
            images, names, given = _array_images(source, resolution, record), None, None
        elif path.suffix == ".npz" and path.is_file():
            images, names, given, record = _read_npz(path, resolution)
        else:
            raise DataError(f"samples {source}: give a folder of images or a .npz file"
                            + ("" if path.exists() else " (no such file or folder)"))
        if captions is not None:
            given = _caption_lines(Path(captions)) if isinstance(captions, (str, Path)) else list(captions)
    return _with_classes(images, names if labels is None else labels, given, data, record)


def _caption_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"--captions {path}: no such file")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _with_classes(images: torch.Tensor, labels, captions, data: ImageData, record: dict) -> Samples:
    n, channels = len(images), data.images.shape[1]
    if n < 2:
        raise DataError(f"{n} sample{'s' * (n != 1)}: FID and the other set metrics need at least 2")
    if images.shape[1] != channels:
        if channels != 3:
            raise DataError(f"the samples have {images.shape[1]} channels, the reference {channels}")
        images = images.expand(-1, 3, -1, -1).contiguous()  # greyscale samples of a colour reference
        record["channels"] = "greyscale samples repeated to 3 channels"
    if captions is not None:
        captions = [str(c) for c in np.asarray(captions).tolist()]
        if len(captions) != n:
            raise DataError(f"{len(captions)} captions for {n} samples")
        labels, record["classes"] = _classes_of_captions(captions, data), "read from the captions"
    elif labels is not None:
        values = np.asarray(labels).tolist()
        if len(values) != n:
            raise DataError(f"{len(values)} labels for {n} samples")
        if all(isinstance(v, int) for v in values):
            if not all(0 <= v < data.num_modes for v in values):
                raise DataError(f"labels must be class indices 0..{data.num_modes - 1} of the reference")
            labels = torch.tensor(values, dtype=torch.long)
        else:
            labels = _classes_of_names(values, data, "the samples' classes")
        record.setdefault("classes", "given (class sub-folders or labels)")
    record.update(count=n, classes=record.get("classes", "none given: no prompt accuracy or intra-class numbers"))
    return Samples(images, labels, captions, record)


# ---------------------------------------------------------------- scoring


def image_config(preset_name: str = "quick", overrides=(), inception_weights: str = ""):
    """The image config of a preset with `--set` overrides (images.* keys), validated: the protocol scored by."""
    cfg = preset(preset_name)
    for assignment in overrides:
        apply_override(cfg, assignment)
    if cfg.images is None:
        raise ConfigError(f"preset {preset_name!r} has no image benchmark: its protocol cannot score images")
    if inception_weights:
        cfg.images.inception_weights = inception_weights
    validate(cfg)
    return cfg


def _dataset_name(reference: str) -> str:
    """`shapes`, `folder:PATH`, or a folder's path (read as folder:PATH)."""
    if ":" not in reference and Path(reference).is_dir():
        return f"folder:{reference}"
    parse_name(reference)  # an unknown name is one line naming the choices
    return reference


def _row(prep, ev, images: torch.Tensor, cfg, seed: int, prompted: bool) -> dict:
    """Every metric of a run entry's "metrics" for one image set (bench/evaluate/images.py _metrics plus the
    memorisation headline, as bench/run/images.py records them); the ones that need prompts dropped when the
    images were made for none."""
    out = evaluation.score(prep, ev, ev.scored, images, fid_boot=cfg.fid_bootstrap,
                           fid_counts=tuple(cfg.fid_counts), seed=seed)
    if prep.judge is not None:
        out["judge_accuracy"] = prep.judge.accuracy
    if ev.real_inception is not None and prep.judge is not None:
        out.update(inception_metrics(ev.real_inception, prep.inception.features(images))[0])
    memorised = memorisation_record(ev, prep, images)
    out.update({k: memorised[k] for k in MEMORISED if k in memorised})
    return {k: v for k, v in out.items() if prompted or k not in NEED_PROMPTS}


def _prompts(samples: Samples, data: ImageData, seed: int) -> Prompts:
    """The scored prompts: the samples' own classes, or (none given) classes drawn as `gvd run` draws its prompts,
    which only the calibration rows read."""
    n = len(samples.images)
    if samples.labels is not None:
        captions, labels = samples.captions or [data.class_names[i] for i in samples.labels.tolist()], samples.labels
    else:
        captions, labels = data.prompts(n, seed=10_000 + seed)
    return Prompts(list(captions), labels, (), sample_seeds(seed, n), occurrences(labels))


def _calibration(prep, ev, cfg, seed: int) -> dict:
    """The held-out real row and the copier on the scored prompts (where the test split leaves images held out)."""
    rows, labels, occurrence = {}, ev.scored.labels, ev.scored.occurrence
    if len(prep.held_out):
        rows["held-out-real"] = _row(prep, ev, held_out_pool(prep, seed).draw(labels, occurrence), cfg, seed, True)
    copier = Pool.of(prep.data.images, prep.data.labels, seed).draw(labels, occurrence)
    rows["copier"] = _row(prep, ev, copier.float(), cfg, seed, True)
    return rows


def score(samples, reference: str = "shapes", *, captions=None, labels=None, preset: str = "quick", overrides=(),
          device="cpu", seed: int = 0, inception_weights: str = "", progress: Callable[[str], None] | None = None,
          cache=None) -> dict:
    """Score samples (a folder, a .npz, an array or tensor; README: Your own samples) against a reference (a built-in
    image dataset, folder:PATH or a folder) by the protocol of a preset's image benchmark (its resolution, split
    sizes, readers; `overrides`: --set assignments such as "images.resolution=32"). Returns a JSON-able dict:
    "rows" {"samples", "held-out-real", "copier"} of metrics (the keys of a run entry's "metrics"), and what they were
    scored on: "samples", "reference", "readers", "protocol", "unavailable". UserError (one line) for bad input,
    raised before any reader is trained."""
    say = progress or (lambda line: None)
    t0 = time.perf_counter()
    if not 0 <= seed < 2**31:
        raise UserError(f"seed {seed}: give a whole number in 0..2^31 - 1")
    suite = image_config(preset, overrides, inception_weights)
    cfg, dataset = suite.images, _dataset_name(reference)
    dataset_info(dataset, check=True)
    data = load_splits(dataset, cfg.num_train, cfg.num_test, cfg.resolution)[0]
    samples = read_samples(samples, data, cfg.resolution, captions, labels)  # no line before the input is checked
    say(f"read {len(samples.images)} samples ({samples.record['classes']})")
    cfg.datasets, cfg.num_samples = [dataset], len(samples.images)  # the reference: as many test images as samples
    with torch_threads(suite.job_threads):  # as a run's job computes: the numbers do not depend on the machine's cores
        say("the readers: judge, label-free encoder, factor read-out (trained once per dataset, cached)")
        prep = prepare(dataset, cfg, torch.device(device), Path(cache or cache_dir()))
        if prep.failure is not None:
            raise UserError(prep.failure)
        if prep.judge is None and prep.inception is None:
            raise UserError(f"{dataset} has one class: no judge can be trained on it, and no Inception weights were "
                            "given (--inception-weights, or the [inception] extra with --set images.inception=true)")
        say("reference features")
        ev = eval_set(prep, None, cfg, seed, device, scored=_prompts(samples, prep.data, seed))
        say(f"scoring {len(samples.images)} samples")
        rows = {"samples": _row(prep, ev, samples.images, cfg, seed, samples.labels is not None)}
        say("scoring the calibration rows (held-out real, copier)")
        rows.update(_calibration(prep, ev, cfg, seed))
    return _result(samples, prep, ev, suite, preset, list(overrides), rows, time.perf_counter() - t0)


def _result(samples: Samples, prep, ev, suite, preset_name: str, overrides: list, rows: dict, seconds: float) -> dict:
    cfg = suite.images
    readers = {"judge": None if prep.judge is None else {"accuracy": prep.judge.accuracy,
                                                         "weights_sha256": prep.judge.weights_sha256},
               "label_free": None if prep.encoder is None else prep.encoder.record,
               "factors": None if prep.factors is None else prep.factors.record,
               "inception": None if prep.inception is None else prep.inception.name}
    notes = [] if "held-out-real" in rows else [
        f"no held-out real row: the test split ({len(prep.test.labels)} images) is taken whole by the reference of "
        f"{cfg.num_samples}; raise images.num_test or score fewer samples"]
    return {"schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": seconds,
            "samples": samples.record,
            "reference": {"dataset": prep.dataset, "preset": preset_name, "overrides": overrides,
                          "resolution": cfg.resolution, "num_samples": cfg.num_samples, "set": ev.reference,
                          "splits": split_record(prep.data, prep.test), "held_out": len(prep.held_out)},
            "readers": readers, "protocol": ev.protocols, "unavailable": ev.unavailable, "notes": notes, "rows": rows,
            "versions": versions()}


# ---------------------------------------------------------------- output


def markdown(result: dict) -> str:
    """The scores as a Markdown table, one column per row (samples, then the calibration rows), one line per metric
    of the metric table that any row has, with its direction; then what they were scored against."""
    rows = {k: result["rows"][k] for k in ROWS if k in result["rows"]}
    header = ["metric", "better"] + list(rows)
    lines = []
    for m in table.METRICS:
        values = [r.get(m.key) for r in rows.values()]
        if all(not isinstance(v, (int, float)) for v in values):
            continue
        better = {1: "higher", -1: "lower"}.get(m.better, "neither")
        lines.append([m.label, better] + ["n/a" if not isinstance(v, (int, float)) or v != v else m.display(v)
                                          for v in values])
    ref, smp = result["reference"], result["samples"]
    judge = result["readers"]["judge"]
    about = (f"{smp['count']} samples ({smp.get('path', 'an array')}; classes: {smp['classes']}) against "
             f"{ref['set']['given']} test images of {ref['dataset']} at {ref['resolution']}x{ref['resolution']} "
             f"(preset {ref['preset']}{', ' + ', '.join(ref['overrides']) if ref['overrides'] else ''})"
             + (f"; judge accuracy on the test split {judge['accuracy']:.1%}" if judge else "")
             + (f"; resized {smp['resized']}" if smp.get("resized") else "") + ".")
    blocks = [("h1", "gvd score"), ("p", about), ("table", header, lines),
              ("p", "held-out-real: test images outside the reference, of the same classes (the best any generator "
                    "can read at this N); copier: training images replayed (what memorisation reads). "
                    "`gvd metrics` defines every metric.")]
    if missing := result.get("unavailable"):
        blocks.append(("p", f"Not scored: {', '.join(missing['metrics'])}: {missing['why']}"))
    blocks += [("p", note) for note in result.get("notes", [])]
    return to_markdown(blocks)


def write_score(out: Path, result: dict) -> list[Path]:
    """score.json and score.md in folder `out` (created)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "score.json", json_text(result))
    atomic_write(out / "score.md", markdown(result))
    return [out / "score.json", out / "score.md"]


# ---------------------------------------------------------------- the samples a run scored (`gvd sample --scored`)


def scored_samples(checkpoint: Path, family, suite, dataset: str, seed: int, device="cpu") -> Samples:
    """The images a `gvd run` scored for one family, dataset and seed, drawn again from its checkpoint on the same
    prompts and per-sample seeds at the neutral knob, in the run's arithmetic and threads: the very images of its
    entry's "metrics" (suite: the run's config)."""
    cfg = suite.images
    states, meta = load_checkpoint(Path(checkpoint))
    with torch_threads(suite.job_threads):
        text = TextModels.load(states, meta, device)
        trained = family.load_image(states, meta, device, text)
        prep = prepare(dataset, cfg, torch.device(device), cache_dir())
        ev = eval_set(prep, text, cfg, seed, device)
        images, _ = draw(ev, family, trained, ev.scored, cfg.num_samples, family.knob.neutral if family.knob else 1.0)
    record = {"path": str(checkpoint), "format": "run", "family": family.name, "dataset": dataset, "seed": seed}
    return Samples(images, ev.scored.labels, list(ev.scored.captions), record)


def save_samples(out: Path, samples: Samples, class_names: list[str]) -> Path:
    """Samples as a .npz (out ends in .npz: `images` (N, C, H, W) float32 in [-1, 1], and `labels`, `captions` where
    known) or as a folder any tool reads: PNGs numbered in scoring order, in one sub-folder per class (its name) where
    the classes are known, and metadata.csv (file_name, text) where the prompts are; 8-bit PNGs round each pixel to
    1/255 of the range."""
    out = Path(out)
    if out.suffix == ".npz":
        known = {"labels": None if samples.labels is None else samples.labels.numpy(),
                 "captions": None if samples.captions is None else np.asarray(samples.captions, dtype=str)}
        buf = io.BytesIO()
        np.savez(buf, images=samples.images.float().numpy(), **{k: v for k, v in known.items() if v is not None})
        atomic_write(out, buf.getvalue())
        return out
    pixels = ((samples.images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, image in enumerate(pixels):
        name = f"{i:05d}.png" if samples.labels is None else f"{class_names[int(samples.labels[i])]}/{i:05d}.png"
        (out / name).parent.mkdir(exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buf, format="png")
        atomic_write(out / name, buf.getvalue())
        rows.append({"file_name": name, "text": samples.captions[i] if samples.captions else ""})
    if samples.captions:
        atomic_write(out / "metadata.csv", csv_text(rows))
    return out
