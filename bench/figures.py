"""The one figure helper: a figure, its family colours, and an atomic PNG write.

Every figure of the report (bench/report.py, bench/report_throughput.py) draws the GAN in one colour and the diffusion
model in another, the same in every figure, from the Okabe-Ito palette (Okabe & Ito 2008, "Color Universal Design"),
which stays distinguishable under the common colour-vision deficiencies: GAN vermillion, diffusion blue; real data in
grey. A second line of the same family (another sampler, another loss) varies the line style and marker, never the hue.
"""

import io

import matplotlib

matplotlib.use("Agg")  # files only, no display: set once, before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402 -- must follow the backend choice

FAMILY_COLOURS = {"gan": "#D55E00", "diffusion": "#0072B2"}  # Okabe-Ito vermillion and blue
REAL_COLOUR = "#999999"  # the real data, behind the samples
LINE_STYLES = ("-", "--", ":", "-.")  # within one family: the k-th line of the same colour ...
MARKERS = ("o", "s", "^", "D", "v", "P")  # ... and its marker (a curve of one point has no line style to show)


def new_figure(panels: int = 1, width: float = 3.6, height: float = 3.2):
    """A figure with `panels` axes side by side, each width x height inches. Returns (fig, list of axes)."""
    fig, axes = plt.subplots(1, panels, figsize=(width * panels, height), squeeze=False)
    return fig, list(axes[0])


def png_bytes(fig, dpi: int = 100) -> bytes:
    """Lay the figure out, render it as PNG and close it (bench/rundir.py writes the bytes atomically)."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()
