"""Image datasets, all local: procedurally drawn shapes, scikit-learn's handwritten digits, stacked digits,
a user's image folder, and torchvision's MNIST / Fashion-MNIST / CIFAR-10 from a local root (download off).

Every loader returns an ImageData: images (N, C, H, W) float32 in [-1, 1], a mode label per image (what the judge
must recover and what mode counting counts), and a caption per image. Captions are drawn from a few templates so a
text encoder has to learn the words, not a fixed string per class. The per-image words live in `fields`, so fresh
captions (other templates) can be drawn for prompts.

Channels: shapes, stacked digits, CIFAR-10 and colour folders are RGB (C=3); digits, MNIST, Fashion-MNIST and
all-greyscale folders keep their single channel (C=1). Models read C from the data.
"""

import csv
import hashlib
import json
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.datasets as tvd
from PIL import Image, UnidentifiedImageError
from sklearn.datasets import load_digits as sklearn_digits

from bench import catalog
from bench.core.files import content_hash
from bench.errors import UserError


class DataError(UserError):
    """Bad user input (a missing folder, an unreadable image, an unknown dataset name). The message is one line."""


@dataclass
class ImageData:
    images: torch.Tensor  # (N, C, H, W) float32 in [-1, 1]
    labels: torch.Tensor  # (N,) long mode label in [0, num_modes)
    captions: list[str]  # N captions, each templates[k].format(**fields[i]) for some template k
    class_names: list[str]  # name of each mode label (num_modes entries)
    num_modes: int  # number of distinct modes (classes); 1 for a folder without class sub-folders
    channel_labels: torch.Tensor | None = None  # (N, 3) per-channel digit for stacked digits, else None
    templates: tuple[str, ...] = ("{caption}",)  # caption templates; fields[i] fills them
    fields: list[dict[str, str]] | None = None  # per image, the words the templates take
    channel_source: "ImageData | None" = None  # stacked digits: the single-channel digits each channel comes from
    split: dict | None = None  # from load_splits: which part ("train" / "test") and how it was drawn (split_record)
    # the generator's own factors of each image (shapes: position, size, background), known by construction: the
    # ground truth of within-class diversity (bench/data/encoder.py reads them back from images); None elsewhere
    factors: torch.Tensor | None = None  # (N, len(factor_names)) float32
    factor_names: tuple[str, ...] = ()

    def prompts(self, n: int, seed: int = 0) -> tuple[list[str], torch.Tensor]:
        """n prompts from the caption distribution: data indices drawn with a seeded generator, each given a freshly
        drawn template (not necessarily its training caption). Returns (captions, labels (n,) long)."""
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(self.captions), size=n)
        which = rng.integers(0, len(self.templates), size=n)
        fields = self.fields or [{"caption": c} for c in self.captions]
        captions = [self.templates[k].format(**fields[i]) for i, k in zip(idx, which)]
        return captions, self.labels[torch.from_numpy(idx)]


def _subset(data: ImageData, idx: torch.Tensor) -> ImageData:
    """The images at idx (a (M,) long tensor), with their labels, captions and fields."""
    keep = idx.tolist()
    return ImageData(
        images=data.images[idx],
        labels=data.labels[idx],
        captions=[data.captions[i] for i in keep],
        class_names=data.class_names,
        num_modes=data.num_modes,
        channel_labels=None if data.channel_labels is None else data.channel_labels[idx],
        templates=data.templates,
        fields=None if data.fields is None else [data.fields[i] for i in keep],
        channel_source=data.channel_source,
        split=data.split,
        factors=None if data.factors is None else data.factors[idx],
        factor_names=data.factor_names,
    )


def _with_captions(templates: tuple[str, ...], fields: list[dict[str, str]], rng: np.random.Generator) -> list[str]:
    which = rng.integers(0, len(templates), size=len(fields))
    return [templates[k].format(**f) for k, f in zip(which, fields)]


def _to_unit_range(x: torch.Tensor, max_value: float) -> torch.Tensor:
    """[0, max_value] -> [-1, 1] float32."""
    return (x.float() / max_value * 2 - 1).clamp(-1, 1)


def _resize(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """(N, C, h, w) -> (N, C, resolution, resolution); antialiased when shrinking, bilinear when growing."""
    if images.shape[-2:] == (resolution, resolution):
        return images
    out = [F.interpolate(chunk, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
           for chunk in images.split(4096)]
    return torch.cat(out).clamp(-1, 1)


# ------------------------------------------------------------------------------------------------ shapes

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {  # RGB in [0, 1]; a rainbow of everyday words, far apart in RGB so the judge is never unsure
    "red": (0.90, 0.12, 0.10),
    "orange": (1.00, 0.55, 0.00),
    "yellow": (0.95, 0.90, 0.15),
    "green": (0.15, 0.75, 0.20),
    "blue": (0.15, 0.35, 0.95),
    "purple": (0.60, 0.20, 0.85),
}
SIZES = {"small": 0.22, "large": 0.36}  # half-extent of the shape as a fraction of the image side
# the factors make_shapes draws within a class, in the units ImageData.factors holds them: the shape's centre and
# half-extent as fractions of the image side, the background's grey level in [0, 1]
SHAPE_FACTORS = ("x", "y", "size", "background")
SHAPE_TEMPLATES = (
    "a {size} {colour} {shape}",
    "a {colour} {shape}",
    "a {size} {shape} in {colour}",
    "one {colour} {shape}, {size}",
    "a picture of a {size} {colour} {shape}",
)


def _shape_sdf(shape: torch.Tensor, x: torch.Tensor, y: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Signed distance (pixels, negative inside) to each image's shape. shape: (B, 1, 1) index into SHAPES;
    x, y: (B, H, W) offsets from the shape's centre; r: (B, 1, 1) half-extent. Exact inside, a close
    under-estimate outside, which is all the one-pixel antialiasing ramp needs."""
    ax, ay = x.abs(), y.abs()
    circle = torch.sqrt(x**2 + y**2) - r
    square = torch.maximum(ax, ay) - 0.85 * r  # 0.85: about the circle's area, so size reads the same
    # isosceles triangle, apex up: vertices (0, -r), (-r, r), (r, r); three half-planes with unit normals
    s5 = 5**0.5
    triangle = torch.maximum(y - r, torch.maximum((-2 * x - y - r) / s5, (2 * x - y - r) / s5))
    arm = r / 3  # half-width of the cross's bars: >= 1 px even for a small shape at 16x16
    cross = torch.minimum(torch.maximum(ax - r, ay - arm), torch.maximum(ax - arm, ay - r))
    sdfs = torch.stack([circle, square, triangle, cross])  # (4, B, H, W)
    return sdfs.gather(0, shape[None].expand(1, *x.shape))[0]  # (B, H, W)


def _draw_shapes(shape: torch.Tensor, colour: torch.Tensor, radius: torch.Tensor, centre: torch.Tensor,
                 background: torch.Tensor, resolution: int) -> torch.Tensor:
    """Vectorised drawing of one shape per image. shape (B,) long; colour (B, 3); radius (B,); centre (B, 2)
    pixels; background (B, 3). Returns (B, 3, H, W) in [0, 1]."""
    grid = torch.arange(resolution, dtype=torch.float32) + 0.5  # pixel centres
    x = grid[None, None, :] - centre[:, 0, None, None]  # (B, 1, W)
    y = grid[None, :, None] - centre[:, 1, None, None]  # (B, H, 1)
    x, y = torch.broadcast_tensors(x, y)  # (B, H, W)
    sdf = _shape_sdf(shape[:, None, None], x, y, radius[:, None, None])
    alpha = (0.5 - sdf).clamp(0, 1)[:, None]  # (B, 1, H, W) pixel coverage: a one-pixel antialiased edge
    return background[:, :, None, None] * (1 - alpha) + colour[:, :, None, None] * alpha


def make_shapes(n: int, resolution: int = 32, seed: int = 0) -> ImageData:
    """n RGB images of one shape (SHAPES) in one colour (COLOURS) at one of two sizes, jittered position,
    background tint and colour. Mode label = shape_index * len(COLOURS) + colour_index (size is not a mode).
    Deterministic for a seed, and image i does not depend on n (one row of random numbers per image)."""
    if resolution < 16:
        raise DataError(f"shapes needs a resolution of at least 16 pixels, got {resolution}")
    rng = np.random.default_rng(seed)
    u = torch.from_numpy(rng.random((n, 11))).float()  # per image: shape, colour, size, x, y, bg(4), template, tint
    palette = torch.tensor(list(COLOURS.values()))  # (K, 3)
    shape = (u[:, 0] * len(SHAPES)).long()
    colour_idx = (u[:, 1] * len(COLOURS)).long()
    size_idx = (u[:, 2] * len(SIZES)).long()
    radius = torch.tensor(list(SIZES.values()))[size_idx] * resolution  # (n,) pixels
    margin = radius + 1  # keep the whole shape and a pixel of background inside the frame
    centre = margin[:, None] + u[:, 3:5] * (resolution - 2 * margin[:, None])  # (n, 2)
    # a dark background (grey level 0-0.3 with a slight tint), so every colour stands out from it
    background = (u[:, 5:6] * 0.3 + (u[:, 6:9] - 0.5) * 0.1).clamp(0, 1)  # (n, 3)
    colour = (palette[colour_idx] + (u[:, 10:11] - 0.5) * 0.08).clamp(0, 1)  # (n, 3) slight brightness jitter
    images = torch.cat([
        _draw_shapes(shape[i], colour[i], radius[i], centre[i], background[i], resolution)
        for i in torch.arange(n).split(1024)  # chunks keep the (4, B, H, W) distance stack small
    ]) if n else torch.zeros(0, 3, resolution, resolution)
    colour_names, size_names = list(COLOURS), list(SIZES)
    fields = [{"shape": SHAPES[s], "colour": colour_names[c], "size": size_names[z]}
              for s, c, z in zip(shape.tolist(), colour_idx.tolist(), size_idx.tolist())]
    which = (u[:, 9] * len(SHAPE_TEMPLATES)).long().tolist()
    return ImageData(
        images=images * 2 - 1,
        labels=shape * len(COLOURS) + colour_idx,
        captions=[SHAPE_TEMPLATES[k].format(**f) for k, f in zip(which, fields)],
        class_names=[f"{c} {s}" for s in SHAPES for c in COLOURS],
        num_modes=len(SHAPES) * len(COLOURS),
        templates=SHAPE_TEMPLATES,
        fields=fields,
        factors=torch.cat([centre / resolution, radius[:, None] / resolution, background.mean(1, keepdim=True)], 1),
        factor_names=SHAPE_FACTORS,
    )


# ------------------------------------------------------------------------------------------------ digits

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_TEMPLATES = (
    "a handwritten {digit}",
    "the digit {digit}",
    "a {digit}, written by hand",
    "a picture of the number {digit}",
)
STACKED_TEMPLATES = (
    "the digits {red}, {green} and {blue}",
    "red {red}, green {green}, blue {blue}",
    "{red} {green} {blue}",
)


def load_digits(resolution: int = 32) -> ImageData:
    """All 1,797 of scikit-learn's 8x8 handwritten digits (UCI, shipped with scikit-learn), one channel,
    upsampled bilinearly to resolution. Labels are the digits 0-9."""
    raw = sklearn_digits()
    pixels = torch.from_numpy(raw.images).float()[:, None]  # (1797, 1, 8, 8), ink intensity 0..16
    images = _resize(_to_unit_range(pixels, 16.0), resolution)
    labels = torch.from_numpy(raw.target).long()
    fields = [{"digit": DIGIT_WORDS[d]} for d in labels.tolist()]
    return ImageData(
        images=images.contiguous(),
        labels=labels,
        captions=_with_captions(DIGIT_TEMPLATES, fields, np.random.default_rng(0)),
        class_names=list(DIGIT_WORDS),
        num_modes=10,
        templates=DIGIT_TEMPLATES,
        fields=fields,
    )


def make_stacked_digits(n: int, resolution: int = 32, seed: int = 0) -> ImageData:
    """Stacked MNIST protocol (Metz et al. 2017; VEEGAN; PacGAN) on real handwriting: each of n images stacks
    three digits drawn uniformly from load_digits as its R, G and B channels, so there are 10^3 = 1000 modes.
    Mode label = 100 * d_red + 10 * d_green + d_blue; channel_labels holds (d_red, d_green, d_blue)."""
    return stack_digits(load_digits(resolution), n, seed)


def stack_digits(digits: ImageData, n: int, seed: int) -> ImageData:
    """n stacked-digit images whose channels are drawn uniformly (with replacement) from the given digits."""
    resolution = digits.images.shape[-1]
    rng = np.random.default_rng(seed)
    pick = torch.from_numpy(rng.integers(0, len(digits.labels), size=(n, 3)))  # (n, 3) indices into digits
    images = digits.images[pick.reshape(-1), 0].reshape(n, 3, resolution, resolution)  # channel c = digit pick[:, c]
    channel_labels = digits.labels[pick]  # (n, 3)
    labels = channel_labels @ torch.tensor([100, 10, 1])
    fields = [{"red": DIGIT_WORDS[r], "green": DIGIT_WORDS[g], "blue": DIGIT_WORDS[b]}
              for r, g, b in channel_labels.tolist()]
    return ImageData(
        images=images,
        labels=labels,
        captions=_with_captions(STACKED_TEMPLATES, fields, rng),
        class_names=[f"{r}-{g}-{b}" for r in range(10) for g in range(10) for b in range(10)],
        num_modes=1000,
        channel_labels=channel_labels,
        templates=STACKED_TEMPLATES,
        fields=fields,
        channel_source=digits,
    )


# ------------------------------------------------------------------------------------------------ folders

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's list
PHOTO_TEMPLATES = ("{a} {name}", "a photo of {a} {name}", "a picture showing {a} {name}")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def _one_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _name_fields(name: str) -> dict[str, str]:
    words = name.replace("_", " ").replace("-", " ").strip().lower()
    return {"name": words, "a": "an" if words[:1] in "aeiou" and words else "a"}


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _read_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read image {path}: {_one_line(err)}") from None


def _square(img: Image.Image, resolution: int) -> np.ndarray:
    """The centre square (side = the shorter side), resampled to resolution x resolution (bicubic). PIL resamples the
    box alone, so a long strip (1 x 300,000) costs the output's memory, not the whole strip scaled up. Returns
    (H, W) or (H, W, 3) uint8."""
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    return np.asarray(img.resize((resolution, resolution), Image.BICUBIC, box=(left, top, left + side, top + side)))


def _read_captions(captions_file: Path) -> dict[str, str]:
    """file_name -> caption, from a metadata.csv or metadata.jsonl (Hugging Face imagefolder convention: a
    `file_name` relative to the folder and a `text` column)."""
    try:
        if captions_file.suffix == ".jsonl":
            rows = [json.loads(line) for line in captions_file.read_text().splitlines() if line.strip()]
        else:
            with open(captions_file, newline="") as f:
                rows = list(csv.DictReader(f))
        return {str(Path(row["file_name"])): str(row["text"]) for row in rows}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"cannot read captions file {captions_file} (need file_name and text columns): "
                        f"{_one_line(err)}") from None


def load_folder(path: str, resolution: int = 32, captions_file: str | None = None) -> ImageData:
    """An image folder as torchvision's ImageFolder reads it: one sub-folder per class (sorted names = labels
    0..K-1), or images directly in the folder (then one mode, no classes). Each image's centre square is resampled
    (bicubic) to resolution x resolution; all-greyscale folders stay one channel, others become RGB.
    Captions come from the class names, or from captions_file / PATH/metadata.csv / PATH/metadata.jsonl."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"image folder {path} does not exist or is not a directory")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if class_dirs:
        files = []
        for label, d in enumerate(class_dirs):
            found = sorted(p for p in d.rglob("*") if _is_image(p))
            if not found:
                raise DataError(f"class folder {d} has no images ({', '.join(IMAGE_EXTENSIONS)})")
            files += [(p, label) for p in found]
        class_names = [d.name for d in class_dirs]
    else:
        files = [(p, 0) for p in sorted(root.iterdir()) if _is_image(p)]
        class_names = [root.resolve().name]
        if not files:
            raise DataError(f"image folder {path} has no images and no class sub-folders")

    pictures = [_read_image(p) for p, _ in files]
    mode = "L" if all(img.mode in GREY_MODES for img in pictures) else "RGB"
    arrays = np.stack([_square(img.convert(mode), resolution) for img in pictures])  # (N, H, W[, 3]) uint8
    pixels = torch.from_numpy(arrays)
    pixels = pixels[:, None] if mode == "L" else pixels.permute(0, 3, 1, 2)  # (N, C, H, W)
    labels = torch.tensor([label for _, label in files], dtype=torch.long)

    if captions_file is None:
        found = [root / n for n in ("metadata.csv", "metadata.jsonl") if (root / n).is_file()]
        captions_file = str(found[0]) if found else None
    if captions_file is not None:
        table = _read_captions(Path(captions_file))
        base = Path(captions_file).parent
        fields = []
        for p, _ in files:
            rel = str(p.relative_to(base)) if p.is_relative_to(base) else p.name
            if rel not in table:
                raise DataError(f"captions file {captions_file} has no caption for {rel}")
            fields.append({"caption": table[rel]})
        templates = ("{caption}",)
    else:
        fields = [_name_fields(class_names[label]) for label in labels.tolist()]
        templates = PHOTO_TEMPLATES
    return ImageData(
        images=_to_unit_range(pixels, 255.0),
        labels=labels,
        captions=_with_captions(templates, fields, np.random.default_rng(0)),
        class_names=class_names,
        num_modes=len(class_names),
        templates=templates,
        fields=fields,
    )


TORCHVISION_DATASETS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10"}
TORCHVISION_LAYOUT = {"mnist": "MNIST/raw", "fashion-mnist": "FashionMNIST/raw", "cifar10": "cifar-10-batches-py"}


def load_torchvision(name: str, root: str, resolution: int = 32, train: bool = True) -> ImageData:
    """torchvision's MNIST, Fashion-MNIST or CIFAR-10 from a local root, with download off (as torchvision lays
    them out: ROOT/MNIST/raw/..., ROOT/cifar-10-batches-py/...). MNIST stays one channel; CIFAR-10 is RGB."""
    if name not in TORCHVISION_DATASETS:
        raise DataError(f"unknown torchvision dataset {name!r}; choose from {', '.join(TORCHVISION_DATASETS)}")
    try:
        ds = getattr(tvd, TORCHVISION_DATASETS[name])(root=root, train=train, download=False)
    except (RuntimeError, OSError, ValueError):  # torchvision's message suggests download=True: not ours to offer
        raise DataError(f"{name} not found under {root}: expected torchvision's files in "
                        f"{root}/{TORCHVISION_LAYOUT[name]} (downloads are off)") from None
    pixels = torch.as_tensor(np.asarray(ds.data))  # MNIST (N, 28, 28); CIFAR-10 (N, 32, 32, 3); uint8
    pixels = pixels[:, None] if pixels.ndim == 3 else pixels.permute(0, 3, 1, 2)  # (N, C, h, w)
    images = _resize(_to_unit_range(pixels, 255.0), resolution)
    labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.long)
    if name == "mnist":
        class_names, templates = list(DIGIT_WORDS), DIGIT_TEMPLATES
        fields = [{"digit": DIGIT_WORDS[d]} for d in labels.tolist()]
    else:
        class_names, templates = [c.lower() for c in ds.classes], PHOTO_TEMPLATES
        by_class = [_name_fields(c) for c in class_names]
        fields = [by_class[d] for d in labels.tolist()]
    return ImageData(
        images=images.contiguous(),
        labels=labels,
        captions=_with_captions(templates, fields, np.random.default_rng(0)),
        class_names=class_names,
        num_modes=len(class_names),
        templates=templates,
        fields=fields,
    )


# ------------------------------------------------------------------------------------------------ dispatch

GENERATED = {"shapes": make_shapes, "stacked-digits": make_stacked_digits}  # (n, resolution, seed) -> ImageData
FIXED = {  # (where, resolution) -> every image of a fixed dataset (the training files of torchvision's)
    "digits": lambda where, resolution: load_digits(resolution),
    "folder": lambda where, resolution: load_folder(where, resolution),
    **{kind: partial(lambda kind, where, resolution: load_torchvision(kind, where, resolution), kind)
       for kind in TORCHVISION_DATASETS},
}


def parse_name(name: str) -> tuple[str, str]:
    """(kind, where) of an image dataset name ("shapes" -> ("shapes", ""), "folder:/x" -> ("folder", "/x")); a name
    the suite cannot load is a DataError naming the choices (bench/catalog.py)."""
    kind, _, where = name.partition(":")
    if not catalog.known(name, "image"):
        raise DataError(f"unknown image dataset {name!r}; choose from {', '.join(catalog.dataset_names('image'))}")
    return kind, where


def load_image_dataset(name: str, n: int, resolution: int, seed: int) -> ImageData:
    """A dataset by name, unsplit. Generated datasets (shapes, stacked-digits) draw n images from seed; fixed ones
    (digits, folder:, mnist:, ...) return all their images, or a seeded random subset of n when they have more."""
    kind, where = parse_name(name)
    if kind in GENERATED:
        return GENERATED[kind](n, resolution, seed)
    data = FIXED[kind](where, resolution)
    if 0 < n < len(data.labels):
        order = torch.from_numpy(np.random.default_rng(seed).permutation(len(data.labels))[:n])
        data = _subset(data, order)
    return data


# ------------------------------------------------------------------------------------------------ train / test

STACKED_TEST_DIGITS = 0.2  # stacked digits: fraction of the source digits kept for the test split's channels


def image_hashes(data: ImageData) -> list[str]:
    """sha256 of each image's float32 bytes: equal hashes = identical images."""
    x = data.images.detach().cpu().float().contiguous().numpy()
    return [hashlib.sha256(img.tobytes()).hexdigest() for img in x]


def split_hash(data: ImageData) -> str:
    """sha256 of a split's content: its images (float32) and labels (int64), in order (core/files.content_hash)."""
    return content_hash(data.images.float(), data.labels.long())


def _dedupe(data: ImageData) -> tuple[ImageData, int]:
    """data without exact duplicate images (first occurrence kept), and how many were dropped: an image present
    twice could otherwise land in both splits."""
    first = {}
    for i, key in enumerate(image_hashes(data)):
        first.setdefault(key, i)
    if len(first) == len(data.labels):
        return data, 0
    return _subset(data, torch.tensor(sorted(first.values()))), len(data.labels) - len(first)


TEST_SHARE = 0.2  # the largest share of a fixed dataset's images its test split takes


def _seeded_split(data: ImageData, n_train: int, n_test: int, seed: int) -> tuple[ImageData, ImageData]:
    """A fixed dataset split by a seeded permutation: the first n_test images (at most TEST_SHARE of them) are the
    test split, the next n_train (all the rest when n_train <= 0 or more than remain) the training split."""
    data, dropped = _dedupe(data)
    n_test = min(n_test, math.ceil(TEST_SHARE * len(data.labels)))
    if not 0 < n_test < len(data.labels):
        raise DataError(f"a test split of {n_test} images needs a dataset of more; this one has {len(data.labels)}")
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(data.labels)))
    rest = order[n_test:]
    train = _subset(data, rest if n_train <= 0 else rest[:n_train])
    test = _subset(data, order[:n_test])
    how = {"how": "seeded permutation of the deduplicated images", "seed": seed, "source_size": len(data.labels),
           "duplicates_dropped": dropped}
    return _mark(train, "train", how), _mark(test, "test", how)


def _mark(data: ImageData, part: str, how: dict) -> ImageData:
    data.split = {"part": part, **how}
    return data


def load_splits(name: str, n_train: int, n_test: int, resolution: int, seed: int = 0) -> tuple[ImageData, ImageData]:
    """The fixed train/test split of a dataset: (train, test), disjoint image for image.

    Generated datasets draw each split from its own seed (train 2 seed, test 2 seed + 1; seed 0 keeps the data
    load_image_dataset gave). Stacked digits first split the source digits (STACKED_TEST_DIGITS of them for test,
    seeded), then stack each split from its own digits. digits and folder: a seeded permutation of the
    deduplicated images (test first). mnist / fashion-mnist / cifar10: torchvision's own train and test files,
    seeded subsets of n_train / n_test, test images identical to a training image dropped."""
    kind, where = parse_name(name)
    if n_test < 1:
        raise DataError(f"the test split needs at least one image, got n_test={n_test}")
    if kind == "shapes":
        how = {"how": "separate generator seeds", "seed": seed, "train_seed": 2 * seed, "test_seed": 2 * seed + 1}
        return (_mark(make_shapes(n_train, resolution, 2 * seed), "train", how),
                _mark(make_shapes(n_test, resolution, 2 * seed + 1), "test", how))
    if kind == "stacked-digits":
        digits = load_digits(resolution)
        n_digits_test = round(STACKED_TEST_DIGITS * len(digits.labels))
        train_digits, test_digits = _seeded_split(digits, 0, n_digits_test, seed)
        how = {"how": "each split stacks its own digits (seeded digit split), separate generator seeds", "seed": seed,
               "digits": {"train": len(train_digits.labels), "test": len(test_digits.labels)}}
        return (_mark(stack_digits(train_digits, n_train, 2 * seed), "train", how),
                _mark(stack_digits(test_digits, n_test, 2 * seed + 1), "test", how))
    if kind in TORCHVISION_DATASETS:
        return _official_split(kind, where, n_train, n_test, resolution, seed)
    return _seeded_split(FIXED[kind](where, resolution), n_train, n_test, seed)


def _official_split(kind: str, root: str, n_train: int, n_test: int, resolution: int,
                    seed: int) -> tuple[ImageData, ImageData]:
    train, test = (load_torchvision(kind, root, resolution, train=t) for t in (True, False))
    seen = set(image_hashes(train))
    keep = [i for i, key in enumerate(image_hashes(test)) if key not in seen]
    dropped = len(test.labels) - len(keep)
    test = _subset(test, torch.tensor(keep, dtype=torch.long))
    rng = np.random.default_rng(seed)

    def pick(d: ImageData, n: int) -> ImageData:
        return d if n <= 0 or n >= len(d.labels) else _subset(d, torch.from_numpy(np.sort(rng.permutation(
            len(d.labels))[:n])))

    how = {"how": "torchvision's train and test files, seeded subsets", "seed": seed,
           "test_duplicates_of_train_dropped": dropped}
    return _mark(pick(train, n_train), "train", how), _mark(pick(test, n_test), "test", how)


def split_record(train: ImageData, test: ImageData) -> dict:
    """What results.json should record about a split: sizes, content hashes and how it was drawn."""
    return {part: {"size": len(d.labels), "hash": split_hash(d), **(d.split or {})}
            for part, d in (("train", train), ("test", test))}


def reference_set(test: ImageData, n: int, seed: int = 0) -> tuple[ImageData, dict, torch.Tensor]:
    """The real images a metric compares against: n distinct test images (a seeded draw, no repeats), or all of
    them when the test split has fewer. The record says how many were asked for and how many could be given, so a
    run with too small a test split says so in its entry instead of silently repeating images. Also returns the
    indices of the test images left out of it, in the draw's order (the held-out pool: validation reference,
    held-out real calibration row)."""
    given = min(n, len(test.labels))
    order = np.random.default_rng(seed).permutation(len(test.labels))
    ref = _subset(test, torch.from_numpy(np.sort(order[:given])))
    record = {"split": "test", "asked": n, "given": given, "short": given < n, "hash": split_hash(ref)}
    return ref, record, torch.from_numpy(order[given:].copy())
