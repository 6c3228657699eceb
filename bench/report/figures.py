"""The one figure helper: a figure, its family colours, and an atomic PNG write.

Every figure of the report (bench/report.py, bench/report_throughput.py) draws the GAN in one colour and the diffusion
model in another, the same in every figure, from the Okabe-Ito palette (Okabe & Ito 2008, "Color Universal Design"),
which stays distinguishable under the common colour-vision deficiencies: GAN vermillion, diffusion blue; real data in
grey. A second line of the same family (another sampler, another loss) varies the line style and marker, never the hue.
"""

import io
import math
import textwrap

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only, no display: set once, before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402 -- must follow the backend choice
from matplotlib.layout_engine import PlaceHolderLayoutEngine  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

FAMILY_COLOURS = {"gan": "#D55E00", "diffusion": "#0072B2"}  # Okabe-Ito vermillion and blue
REAL_COLOUR = "#999999"  # the real data, behind the samples
CALIBRATION_COLOURS = {"held-out-real": "#999999", "copier": "#000000"}  # grey as the data; black
OTHER_COLOURS = ("#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442")  # Okabe-Ito, for a user's families


def family_colour(name: str, index: int = 0, role: str = "model") -> str:
    """A family's colour, the same in every figure: the built-in families' own, calibration rows grey or black, any
    other family the next unused Okabe-Ito colour by its place in the run's family table."""
    if name in FAMILY_COLOURS:
        return FAMILY_COLOURS[name]
    if role == "calibration":
        return CALIBRATION_COLOURS.get(name, "#555555")
    return OTHER_COLOURS[index % len(OTHER_COLOURS)]
MIN_GRID_PX = 512  # a sample grid is shown at least this many pixels wide (nearest-neighbour upscaling)
LINE_STYLES = ("-", "--", ":", "-.")  # within one family: the k-th line of the same colour ...
MARKERS = ("o", "s", "^", "D", "v", "P")  # ... and its marker (a curve of one point has no line style to show)


def joined(lines: list) -> tuple[list, list]:
    """Many lines as one (xs, ys) with a NaN between lines: one artist per family however many seeds a run has (a
    10,000-entry run drew 1,000 artists per family and panel, and its legend searched them all)."""
    xs, ys = [], []
    for pts in lines:
        if xs:
            xs.append(np.nan)
            ys.append(np.nan)
        xs += [p[0] for p in pts]
        ys += [p[1] for p in pts]
    return xs, ys


def new_figure(panels: int = 1, width: float = 3.6, height: float = 3.2):
    """A figure with `panels` axes side by side, each width x height inches. Returns (fig, list of axes)."""
    fig, axes = plt.subplots(1, panels, figsize=(width * panels, height), squeeze=False)
    return fig, list(axes[0])


def placed_by_hand(fig):
    """Mark a figure laid out by its own subplots_adjust / gridspec margins: png_bytes leaves it as it is."""
    fig.set_layout_engine(PlaceHolderLayoutEngine(adjust_compatible=True, colorbar_gridspec=True))
    return fig


def wrap_title(text: str, width_in: float, fontsize: float) -> list[str]:
    """A title's lines at a figure width in inches (~0.6 em per character of DejaVu Sans)."""
    return textwrap.wrap(text, max(20, int(width_in * 72 / (fontsize * 0.6))))


def suptitle(fig, text: str, fontsize: float = 9) -> None:
    """The figure's title, wrapped to the figure's width (a title wider than its figure is cut on both sides)."""
    fig.suptitle("\n".join(wrap_title(text, fig.get_figwidth(), fontsize)), fontsize=fontsize)


def log_axis(ax, which: str = "x") -> None:
    """A log-scale axis labelled in plain numbers at 1, 2, 5 x 10^k (only 10^k beyond two decades), no minor labels:
    matplotlib's default labels the minor ticks of a short range as 2 x 10^0, 3 x 10^0, ..., which overprint on a
    narrow panel. A range under half a decade stays linear (a log scale would label one tick, or none). Call it after
    the data are drawn (it reads the axis' range)."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    scale = ax.set_xscale if which == "x" else ax.set_yscale
    scale("log")
    ax.autoscale_view()  # the range on the log scale (a range set by hand stays)
    lo, hi = sorted(abs(v) for v in axis.get_view_interval())
    if not (lo > 0 and math.log10(hi / lo) >= 0.5):
        scale("linear")
        ax.autoscale_view()
        return
    axis.set_major_locator(LogLocator(10, subs=(1.0,) if math.log10(hi / lo) > 2 else (1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def png_bytes(fig, dpi: int = 100) -> bytes:
    """Lay the figure out, render it as PNG and close it (bench/rundir.py writes the bytes atomically). The PNG is the
    figure's tight bounding box: a tick label, axis label or title that a layout left outside the canvas is in it,
    never cut."""
    if fig.get_layout_engine() is None:  # the sample figures lay themselves out (constrained)
        fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.08)
    plt.close(fig)
    return buf.getvalue()


def save_figure(run, fig, name: str, dpi: int = 100) -> str:
    """A figure as figures/<name>.png of a run folder (a bench.core.rundir.RunDir); returns the path the report
    links."""
    return run.write_figure(name, png_bytes(fig, dpi))


# ---------------------------------------------------------------- sample grids


def grid_cells(grid: np.ndarray, n: int, nrow: int = 8, padding: int = 1) -> list[np.ndarray]:
    """The n images of a grid PNG (H, W, C) as torchvision's make_grid tiles them (nrow per row, `padding` pixels
    around each), row-major: the inverse of bench/rundir.py save_grid."""
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    w = (grid.shape[1] - padding) // cols - padding
    h = (grid.shape[0] - padding) // rows - padding
    if w < 1 or h < 1:
        raise ValueError(f"a {grid.shape[1]}x{grid.shape[0]} grid cannot hold {n} images in rows of {cols}")
    return [grid[padding + r * (h + padding): padding + r * (h + padding) + h,
                 padding + c * (w + padding): padding + c * (w + padding) + w]
            for r, c in (divmod(i, cols) for i in range(n))]


def upscale_nearest(image: np.ndarray, min_width: int = MIN_GRID_PX) -> np.ndarray:
    """Each pixel repeated k x k times (nearest-neighbour), k the smallest integer making it min_width wide."""
    k = max(1, math.ceil(min_width / image.shape[1]))
    return np.repeat(np.repeat(image, k, axis=0), k, axis=1)


def _column_colour(label: str) -> str:
    return next((c for fam, c in FAMILY_COLOURS.items() if label.lower().startswith(fam)), REAL_COLOUR)


def prompt_groups_figure(groups: list[tuple[str, list[tuple[str, np.ndarray]]]], title: str, per_row: int = 4,
                         cell_in: float = 1.15):
    """One column group per prompt: [(prompt, [(column label, image)])], the prompt written above its group and each
    column labelled in its family's colour. Images are drawn nearest-neighbour, never smoothed."""
    rows = math.ceil(len(groups) / per_row)
    cols = max(len(g[1]) for g in groups)
    fig = plt.figure(figsize=(per_row * cols * cell_in, rows * (cell_in + 0.75)), layout="constrained")
    subfigs = np.atleast_1d(fig.subfigures(rows, per_row, wspace=0.04)).ravel()
    for sub, (prompt, columns) in zip(subfigs, groups):
        sub.suptitle(textwrap.fill(prompt, 30), fontsize=8)
        for ax, (label, image) in zip(sub.subplots(1, cols, squeeze=False)[0], columns):
            ax.imshow(upscale_nearest(image, 64), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(label, fontsize=8, color=_column_colour(label))
    for sub in subfigs[len(groups):]:
        sub.set_visible(False)
    suptitle(fig, title, 9)
    return fig


GRIDS_PER_ROW = 2  # whole grids side by side: two at MIN_GRID_PX fit a 1,100 px page at one pixel per pixel


def grids_figure(panels: list[tuple[str, np.ndarray]], title: str, dpi: int = 100, per_row: int = GRIDS_PER_ROW):
    """Whole sample grids, `per_row` side by side, each upscaled nearest-neighbour to at least MIN_GRID_PX pixels wide
    and drawn at one figure pixel per image pixel (at `dpi`), titled in its family's colour. Seven grids side by side
    would shrink each 16-pixel image to a few screen pixels on a page."""
    big = [(label, upscale_nearest(image)) for label, image in panels]
    cols = min(per_row, len(big))
    rows = math.ceil(len(big) / cols)
    width = cols * max(im.shape[1] for _, im in big) / dpi
    height = rows * (max(im.shape[0] for _, im in big) / dpi + 0.35)
    fig = plt.figure(figsize=(width * 1.04, height + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (label, image) in zip(axes, big):
        ax.imshow(image, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(label, fontsize=10, color=_column_colour(label))
    for ax in axes[len(big):]:
        ax.set_axis_off()
    suptitle(fig, title, 10)
    return fig
