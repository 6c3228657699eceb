"""Every figure of the report goes through bench/figures.py: the GAN in one colour and the diffusion model in another,
the same in every figure, both from the Okabe-Ito colour-blind-safe palette (real data grey), a label on every axis,
PNGs written atomically."""

import ast
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.colors import to_hex

from bench.core.rundir import RunDir
from bench.report import build as report
from bench.report import figures
from bench.report.build import build_blocks
from bench.report.figures import FAMILY_COLOURS, REAL_COLOUR

# Okabe & Ito (2008), "Color Universal Design": the eight colours as published
OKABE_ITO = {"black": "#000000", "orange": "#e69f00", "sky blue": "#56b4e9", "bluish green": "#009e73",
             "yellow": "#f0e442", "blue": "#0072b2", "vermillion": "#d55e00", "reddish purple": "#cc79a7"}


def test_family_colours_are_okabe_ito_vermillion_and_blue():
    assert to_hex(FAMILY_COLOURS["gan"]) == OKABE_ITO["vermillion"]
    assert to_hex(FAMILY_COLOURS["diffusion"]) == OKABE_ITO["blue"]
    grey = np.array([int(to_hex(REAL_COLOUR)[i : i + 2], 16) for i in (1, 3, 5)])
    assert grey.min() == grey.max() and 0x60 < grey[0] < 0xd0  # a mid grey, behind both families


def test_save_figure_writes_a_png_atomically(tmp_path):
    fig, (ax,) = figures.new_figure()
    ax.plot([0, 1], [1, 0])
    assert figures.save_figure(RunDir(tmp_path), fig, "x") == "figures/x.png"
    assert (tmp_path / "figures" / "x.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in (tmp_path / "figures").iterdir()] == ["x.png"]  # no temporary file left behind


def test_only_the_figure_helper_imports_matplotlib():
    bench = Path(report.__file__).parent
    users = []
    for path in sorted(bench.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] == "matplotlib" for n in names):
                users.append(path.name)
    assert sorted(set(users)) == ["figures.py"]


# ---------------------------------------------------------------- every figure of a whole report


def _mixture_runs(run_dir: Path) -> list[dict]:
    """ring8, seed 0: both models with samples, histories, curves; diffusion with two samplers."""
    rng = np.random.default_rng(0)
    (run_dir / "samples").mkdir(parents=True)
    scores = {"modes": 6, "hq_fraction": 0.9, "reverse_kl": 0.2, "num_samples": 50}
    runs = []
    for model, samplers in (("gan", [None]), ("diffusion", ["ddim:5", "dpmpp2m:10"])):
        for label in samplers:
            RunDir(run_dir).save_points("ring8", 0, model, label, rng.normal(size=(50, 2)))
        steps = np.arange(60)
        rows = ([{"step": s, "d_loss": 1.3, "g_loss": 0.7 + s / 100, "d_real": 0.6, "d_fake": 0.4} for s in steps]
                if model == "gan" else [{"step": s, "loss": 1.0 / (s + 1)} for s in steps])
        RunDir(run_dir).write_history("ring8", 0, model, rows)
        run = {"dataset": "ring8", "model": model, "seed": 0, "status": "ok", "metrics": dict(scores),
               "train": {"steps": 60, "seconds": 2.0, "examples_seen": 60 * 64, "params_total": 10},
               "curve": [{"step": 30, **scores}, {"step": 60, **scores}]}
        if model == "gan":
            run["throughput"] = {"nfe": 1, "samples_per_s": 1000.0}
        else:
            run["sampler"] = "ddim:5"
            run["by_sampler"] = {s: {**scores, "nfe": int(s.split(":")[1]), "sample_seconds": 0.1} for s in samplers}
        runs.append(run)
    return runs


def _image_run(model: str) -> dict:
    knob = ("truncation psi", [0.5, 1.0]) if model == "gan" else ("guidance scale", [1.0, 3.0])
    fid = 10.0 if model == "gan" else 5.0
    return {"dataset": "shapes", "model": model, "seed": 0, "status": "ok",
            "metrics": {"fid": fid, "precision": 0.5, "recall": 0.4, "modes": 9, "cond_accuracy": 0.6,
                        "num_samples": 64},
            "train": {"steps": 10, "examples_seen": 100, "seconds": 5.0, "params": {"net": 1}},
            "throughput": {"nfe": 1 if model == "gan" else 20, "sample_seconds": 1.0, "samples_per_s": 64.0},
            "curve": [{"step": 5, "fid": 2 * fid, "modes": 5, "cond_accuracy": 0.2, "recall": 0.1, "num_samples": 32},
                      {"step": 10, "fid": fid, "modes": 9, "cond_accuracy": 0.6, "recall": 0.4, "num_samples": 32}],
            "sweep": {"knob": knob[0], "points": [{"value": v, "fid": fid * v, "precision": 0.5, "recall": 0.4,
                                                  "cond_accuracy": 0.6, "num_samples": 32} for v in knob[1]]}}


def _colours(artist) -> list[str]:
    """The colours an artist draws its data in (lines, markers, scatter points, error bars), as hex."""
    if hasattr(artist, "get_facecolor") and not hasattr(artist, "get_xydata"):  # a collection: one row per item
        rgba = np.atleast_2d(artist.get_facecolor() if len(artist.get_facecolor()) else artist.get_edgecolor())
        return [to_hex(c, keep_alpha=False) for c in rgba]
    return [to_hex(artist.get_color(), keep_alpha=False)]


CAPTIONS: dict[str, str] = {}  # figure file name -> its caption in the report, filled by `drawn`


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """{figure file name: the figure as drawn}, every figure of a report with 2D and image runs of both families."""
    run_dir = tmp_path_factory.mktemp("report")
    results = {"suite": "test", "created": "now", "device": "cpu", "versions": {}, "runs": [],
               "config": {"seeds": [0], "mixtures": {"num_samples": 50}}}
    results["runs"] = _mixture_runs(run_dir) + [_image_run("gan"), _image_run("diffusion")]
    seen, drawing = {}, []

    def render(fig, dpi=100):  # keeps the figure to inspect; writing PNGs is tested above
        drawing.append(fig)
        return b""

    def record(self, name, png):
        seen[f"{name}.png"] = drawing.pop()
        return f"figures/{name}.png"

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(figures, "png_bytes", render)
        mp.setattr(RunDir, "write_figure", record)
        blocks = build_blocks(run_dir, results)
    linked = {Path(b[1]).name for b in blocks if b[0] == "img"}
    assert linked == set(seen)  # the report links every figure it drew
    CAPTIONS.update({Path(b[1]).name: b[2] for b in blocks if b[0] == "img"})
    yield seen
    for fig in seen.values():
        plt.close(fig)


def test_the_report_draws_every_figure(drawn):
    assert set(drawn) == {"ring8_samples.png", "ring8_training.png", "ring8_curve.png", "shapes_curve.png",
                          "shapes_sweeps.png", "ring8_quality_vs_sampling.png", "ring8_quality_vs_training_time.png",
                          "shapes_quality_vs_sampling.png", "shapes_quality_vs_training_time.png"}


def test_every_figure_draws_each_family_in_its_colour(drawn):
    allowed = {to_hex(FAMILY_COLOURS["gan"]), to_hex(FAMILY_COLOURS["diffusion"]), to_hex(REAL_COLOUR)}
    for name, fig in drawn.items():
        used = set()
        for ax in fig.axes:
            panel = ax.get_title().lower()
            for artist in ax.lines + ax.collections:
                colours = set(_colours(artist))
                used |= colours
                label = str(artist.get_label()).lower()
                family = next((f for f in FAMILY_COLOURS if label.startswith(f) or (
                    label == "samples" and panel.startswith(f))), None)
                if family:
                    assert colours == {to_hex(FAMILY_COLOURS[family])}, (name, label, colours)
        assert used <= allowed, (name, used - allowed)
        assert {to_hex(c) for c in FAMILY_COLOURS.values()} <= used, (name, "both families drawn")


def test_every_axis_with_data_says_what_it_shows(drawn):
    for name, fig in drawn.items():
        for ax in fig.axes:
            if not ax.has_data():
                continue
            assert ax.get_xlabel(), (name, ax.get_title(), "x")
            twins = [o for o in fig.axes if o is not ax and ax.get_shared_y_axes().joined(ax, o)]
            assert ax.get_ylabel() or any(o.get_ylabel() for o in twins), (name, ax.get_title(), "y")


# ---------------------------------------------------------------- what a reader sees (issue 35)


def test_every_caption_says_what_its_figure_shows(drawn):
    """Captions were file names ("figures/ring8_curve.png"): each names its dataset and says what is drawn."""
    assert set(CAPTIONS) == set(drawn)
    for name, caption in CAPTIONS.items():
        assert not caption.endswith(".png") and "figures/" not in caption, (name, caption)
        assert caption.startswith(name.split("_")[0]) and len(caption.split()) >= 8, (name, caption)


def test_a_curve_breaks_where_a_snapshot_has_no_value(drawn):
    """A snapshot without the metric is a gap (NaN) in its line, never a straight line drawn across it."""
    from bench.report.charts import curve_figure

    runs = [{"dataset": "shapes", "model": "gan", "seed": 0, "status": "ok",
             "curve": [{"step": 1, "fid": 3.0}, {"step": 2}, {"step": 3, "fid": 1.0}]}]
    seen = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(figures, "png_bytes", lambda fig, dpi=100: seen.setdefault("fig", fig) and b"")
        mp.setattr(RunDir, "write_figure", lambda self, name, png: f"figures/{name}.png")
        curve_figure(Path("."), {"runs": runs}, "shapes", [("fid", "FID", 1), ("recall", "recall", 1)])
    fig = seen["fig"]
    assert [ax.get_title() for ax in fig.axes] == ["FID"]  # a metric no snapshot scored gets no empty panel
    y = fig.axes[0].lines[0].get_ydata()
    assert y[0] == 3.0 and np.isnan(y[1]) and y[2] == 1.0
    plt.close(fig)


def test_nothing_drawn_outside_the_canvas_is_cut(tmp_path):
    """Axis labels clipped at the bottom (ring8's samples) and a title cut on both sides (the trajectory): the PNG is
    the figure's tight box, so text a layout left outside the canvas is in it; a long title wraps to the width."""
    from PIL import Image

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.set_xlabel("x1 (data units)")
    fig.subplots_adjust(bottom=0.0)  # the x label below the canvas, as the ring8 samples' was
    with Image.open(__import__("io").BytesIO(figures.png_bytes(fig, dpi=100))) as im:
        assert im.size[1] > 2 * 100 * 0.9  # the label's height was added below, not cut
    fig = plt.figure(figsize=(4, 2))
    title = "shapes, seed 0: a diffusion sample as it is made (guidance s = 1, NFE 20 per sampler) " * 2
    figures.suptitle(fig, title, 8)
    fig.canvas.draw()
    box = fig._suptitle.get_window_extent()
    assert box.width <= fig.bbox.width and fig._suptitle.get_text().count("\n") >= 1
    assert fig._suptitle.get_text().replace("\n", " ").strip() == title.strip()
    plt.close(fig)


def test_whole_grids_are_drawn_two_to_a_row():
    """Seven 512-pixel grids side by side shrank each 16-pixel image to ~19 screen pixels on a 1,100 px page: two to a
    row keeps them at one figure pixel per image pixel within the page."""
    grid = np.zeros((69, 137, 3), dtype=np.uint8)  # 32 images of 16 px in rows of 8, as save_grid tiles them
    fig = figures.grids_figure([(f"panel {i}", grid) for i in range(7)], "seven grids")
    rows = {round(ax.get_position().y0, 3) for ax in fig.axes if ax.images}
    assert len(fig.axes) == 8 and len(rows) == 4  # 7 grids + one blank cell, 4 rows of 2
    assert fig.get_figwidth() * 100 < 1100 * 1.04 + 1  # two 512-px grids fit the page's width at 100 dpi
    plt.close(fig)
