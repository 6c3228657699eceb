"""The run folder: every path of a run and every read and write of its files, in one place.

    reports/<run>/config.json       the resolved config
                  results.json      results (bench/core/results.py: schema, entries)
                  metrics.csv       one flat row per run entry
                  history/<id>_<part>.csv          per-step training logs
                  checkpoints/<id>_<part>.safetensors  weights, with the config that rebuilds them as metadata
                  state/<id>_<part>.safetensors        an unfinished training's resumable state (2D models)
                  state/config.json                    the config those states were saved under
                  samples/<id>_<part>.png | .npy | _prompts.txt   sample grids, 2D samples, the grids' prompts
                  process/<id>_<family>.npz          arrays of the process figures (bench/evaluate/process.py)
                  figures/<name>.png                 report figures
                  report.md, report.html

One naming scheme for every run: <id> = "<dataset slug>_seed<seed>", <part> = the model ("gan", "diffusion") or the
stage ("text", "vae") a file belongs to, with a sampler label for 2D samples ("diffusion_ddpm-1000"). Writes are atomic
(a temporary file in the same folder, then a rename), so a reader never sees half a file and an interrupted run keeps
what it finished. The report and the CLI ask a RunDir for paths; they never format file names or glob themselves.
"""

import csv
import hashlib
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from torchvision.utils import make_grid, save_image

from bench.core import distributed
from bench.core.files import atomic_write, csv_text, json_text, save_tensors

# The <part>s of a run's file names that are no family's: the real images' grid, the shared text encoder's history,
# the grids' prompts. No family may be named like one (bench/families RESERVED).
FILE_PARTS = ("real", "text", "prompts")


def slug(dataset: str) -> str:
    """A file-name-safe, unique form of a dataset name: built-in names as they are; a name with a path gets its last
    component and a short hash of the whole name ('folder:/data/cats' -> 'folder-cats-3f2a9c'), so two folders
    called 'cats' in different places never share files."""
    kind, _, where = dataset.partition(":")
    if not where:
        return kind
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(where).name or "root").strip("-") or "root"
    return f"{kind}-{name}-{hashlib.sha256(dataset.encode()).hexdigest()[:6]}"


def _write(path: Path, data: str | bytes) -> None:
    """atomic_write, by rank 0 alone under torchrun (the other ranks hold the same results) [ddp]."""
    if distributed.is_main():
        atomic_write(path, data)


def save_checkpoint(path: Path, modules: dict, config: dict) -> None:
    """safetensors file with every module's state under '<name>.<key>' and the config as JSON metadata, so the
    networks can be rebuilt from the checkpoint alone (no pickle). [ddp] Rank 0 alone writes."""
    if not distributed.is_main():
        return
    tensors = {f"{name}.{k}": v.detach().cpu().contiguous()
               for name, m in modules.items() for k, v in m.state_dict().items()}
    save_tensors(path, tensors, metadata={"config": json.dumps(config)})


def checkpoint_config(path: Path) -> dict:
    """The config stored with a checkpoint (reads the header only). ValueError names a damaged file."""
    try:
        with safe_open(str(path), "pt") as f:
            config = json.loads((f.metadata() or {})["config"])
        if not isinstance(config, dict):
            raise TypeError("its config is not a JSON object")
        return config
    except (SafetensorError, OSError, KeyError, TypeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{path}: not a readable gan-vs-diffusion checkpoint ({type(exc).__name__})") from None


def load_checkpoint(path: Path) -> tuple[dict, dict]:
    """The inverse of save_checkpoint: ({module name: state dict}, config)."""
    config = checkpoint_config(path)
    states: dict[str, dict] = {}
    with safe_open(str(path), "pt") as f:
        for key in f.keys():  # noqa: SIM118 -- a safetensors handle, not a dict
            name, _, param = key.partition(".")
            states.setdefault(name, {})[param] = f.get_tensor(key)
    return states, config


class RunDir:
    """The files of one run folder. Paths are methods; so are the reads and writes."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    # --- paths
    def run_id(self, dataset: str, seed: int) -> str:
        return f"{slug(dataset)}_seed{seed}"

    def history_path(self, dataset: str, seed: int, part: str) -> Path:
        return self.root / "history" / f"{self.run_id(dataset, seed)}_{part}.csv"

    def checkpoint_path(self, dataset: str, seed: int, part: str) -> Path:
        return self.root / "checkpoints" / f"{self.run_id(dataset, seed)}_{part}.safetensors"

    def state_path(self, dataset: str, seed: int, part: str) -> Path:
        """A training's resumable state (bench/train/state.py); removed once its entry is in results.json."""
        return self.root / "state" / f"{self.run_id(dataset, seed)}_{part}.safetensors"

    def state_files(self, dataset: str, seed: int, family: str) -> list[Path]:
        """The saved states of a family's trainings (bench/train/state.py StateFiles: "<family>" and
        "<family>-<part>") that are there."""
        folder = self.root / "state"
        parts = sorted(folder.glob(f"{self.run_id(dataset, seed)}_{family}-*.safetensors")) if folder.is_dir() else []
        return [p for p in [self.state_path(dataset, seed, family), *parts] if p.is_file()]

    def remove_states(self, dataset: str, seed: int, family: str) -> None:
        """The states of a family's trainings once results.json holds its entry as finished. [ddp] Rank 0 owns the
        files."""
        if not distributed.is_main():
            return
        for path in self.state_files(dataset, seed, family):
            path.unlink(missing_ok=True)

    def grid_path(self, dataset: str, seed: int, part: str) -> Path:
        return self.root / "samples" / f"{self.run_id(dataset, seed)}_{part}.png"

    def prompts_path(self, dataset: str, seed: int) -> Path:
        return self.root / "samples" / f"{self.run_id(dataset, seed)}_prompts.txt"

    def points_path(self, dataset: str, seed: int, model: str, label: str | None = None) -> Path:
        part = model if label is None else f"{model}_{label.replace(':', '-')}"
        return self.root / "samples" / f"{self.run_id(dataset, seed)}_{part}.npy"

    def process_path(self, dataset: str, seed: int, family: str) -> Path:
        """The arrays of a family's process figures (bench/evaluate/process.py), drawn by the report."""
        return self.root / "process" / f"{self.run_id(dataset, seed)}_{family}.npz"

    def figure_path(self, name: str) -> Path:
        return self.root / "figures" / f"{name}.png"

    @property
    def results_path(self) -> Path:
        return self.root / "results.json"

    def relative(self, path: Path) -> str:
        """A path as the report links it (relative to the run folder, forward slashes)."""
        return Path(path).relative_to(self.root).as_posix()

    # --- reads and writes
    def files(self, folder: str = "", taken: dict | None = None) -> dict[str, bytes]:
        """Every file under the run folder (or under one of its folders) as bytes, by its path relative to the root
        (forward slashes); the temporary files of writes under way left out. taken: {path: (size, mtime)} of files
        read before, left out while unchanged (updated with what is read now)."""
        out = {}
        base = self.root / folder
        for path in sorted(base.rglob("*")) if base.is_dir() else []:
            if not path.is_file() or path.name.startswith("."):
                continue
            name, stat = self.relative(path), path.stat()
            if taken is not None and taken.get(name) == (stat.st_size, stat.st_mtime_ns):
                continue
            out[name] = path.read_bytes()
            if taken is not None:
                taken[name] = (stat.st_size, stat.st_mtime_ns)
        return out

    def write_file(self, relative: str, data: bytes) -> None:
        """A file that a job made in a folder of its own (a Ray task's, on another machine), written at the same
        place in this run folder."""
        if Path(relative).is_absolute() or ".." in Path(relative).parts:
            raise ValueError(f"{relative!r} is not a path inside the run folder")
        _write(self.root / relative, data)

    def write_config(self, config: dict) -> None:
        """config.json, and the same beside the training states (state/config.json): the config the states are
        saved under, which a resume checks config.json against before any entry (and its results.json) exists."""
        _write(self.root / "config.json", json_text(config))
        _write(self.state_config_path, json_text(config))

    @property
    def state_config_path(self) -> Path:
        return self.root / "state" / "config.json"

    def write_results(self, results: dict) -> None:
        _write(self.results_path, json_text(results))

    def read_results_text(self) -> str:
        return self.results_path.read_text()

    def write_metrics(self, rows: list[dict]) -> None:
        _write(self.root / "metrics.csv", csv_text(rows))

    def write_history(self, dataset: str, seed: int, part: str, rows: list[dict]) -> None:
        _write(self.history_path(dataset, seed, part), csv_text(rows))

    def read_history(self, dataset: str, seed: int, part: str) -> list[dict] | None:
        """The per-step rows of one training (numbers as floats), or None when the file is not there."""
        path = self.history_path(dataset, seed, part)
        if not path.is_file():
            return None
        with path.open(newline="") as f:
            return [{k: float(v) if v not in ("", None) else math.nan for k, v in row.items()}
                    for row in csv.DictReader(f)]

    def save_checkpoint(self, dataset: str, seed: int, part: str, modules: dict, config: dict) -> Path:
        path = self.checkpoint_path(dataset, seed, part)
        save_checkpoint(path, modules, config)
        return path

    def checkpoints(self) -> list[tuple[Path, dict]]:
        """Every checkpoint of the run with its stored config, in file-name order."""
        folder = self.root / "checkpoints"
        return [(p, checkpoint_config(p)) for p in sorted(folder.glob("*.safetensors"))] if folder.is_dir() else []

    def save_grid(self, dataset: str, seed: int, part: str, images: torch.Tensor, nrow: int = 8) -> Path:
        path = self.grid_path(dataset, seed, part)
        _write(path, grid_png(images, nrow))
        return path

    def write_prompts(self, dataset: str, seed: int, prompts: list[str]) -> None:
        _write(self.prompts_path(dataset, seed), "\n".join(prompts) + "\n")

    def read_prompts(self, dataset: str, seed: int) -> list[str] | None:
        path = self.prompts_path(dataset, seed)
        return path.read_text().splitlines() if path.is_file() else None

    def save_points(self, dataset: str, seed: int, model: str, label: str | None, x: np.ndarray) -> None:
        buf = io.BytesIO()
        np.save(buf, x)
        _write(self.points_path(dataset, seed, model, label), buf.getvalue())

    def load_points(self, dataset: str, seed: int, model: str, label: str | None = None) -> np.ndarray | None:
        path = self.points_path(dataset, seed, model, label)
        return np.load(path) if path.is_file() else None

    def save_process(self, dataset: str, seed: int, family: str, arrays: dict) -> None:
        """Tensors, numbers, strings and dicts (as JSON) of a family's process figures, one .npz; images (3 or more
        dimensions) in float16."""
        buf = io.BytesIO()
        np.savez_compressed(buf, **{k: _plain(v) for k, v in arrays.items()})
        _write(self.process_path(dataset, seed, family), buf.getvalue())

    def load_process(self, dataset: str, seed: int, family: str) -> dict | None:
        """What save_process wrote (dicts back from JSON), or None when there is no readable file."""
        try:
            with np.load(self.process_path(dataset, seed, family), allow_pickle=False) as f:
                out = {k: f[k] for k in f.files}
        except (OSError, ValueError):
            return None
        return {k: json.loads(str(v)) if v.dtype.kind == "U" and str(v).startswith("{") else v
                for k, v in out.items()}

    def write_figure(self, name: str, png: bytes) -> str:
        """A figure's PNG bytes as figures/<name>.png; returns the path the report links."""
        path = self.figure_path(name)
        _write(path, png)
        return self.relative(path)

    def write_report(self, markdown: str, html_text: str) -> None:
        _write(self.root / "report.md", markdown)
        _write(self.root / "report.html", html_text)


def _plain(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return value.numpy().astype(np.float16 if value.dim() >= 3 else np.float32) if value.is_floating_point() \
            else value.numpy()
    return np.asarray(json.dumps(value) if isinstance(value, dict) else value)


def grid_png(images: torch.Tensor, nrow: int = 8, min_side: int = 0) -> bytes:
    """The first nrow x nrow images of (N, C, H, W) in [-1, 1] as the bytes of one PNG grid; with min_side, every
    pixel of the grid repeated k x k times (nearest neighbour, the smallest whole k that makes its shorter side at
    least min_side pixels), so small images are seen as the model drew them, without interpolation. The run's own
    grids stay at 1:1: the report cuts them back into images (figures.grid_cells)."""
    buf = io.BytesIO()
    grid = make_grid((images[: nrow * nrow].float() + 1) / 2, nrow=nrow, padding=1)  # (C, H, W) in [0, 1]
    k = max(1, math.ceil(min_side / min(grid.shape[1:])))
    save_image(grid.repeat_interleave(k, 1).repeat_interleave(k, 2), buf, format="png")
    return buf.getvalue()


def save_grid(path: Path, images: torch.Tensor, nrow: int = 8, min_side: int = 0) -> Path:
    """grid_png written to path (atomic)."""
    atomic_write(path, grid_png(images, nrow, min_side))
    return Path(path)
