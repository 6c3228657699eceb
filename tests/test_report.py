"""The report as a shareable file: report.html stands alone (every image a data URI that decodes), strings from data
are escaped in HTML and inert in Markdown, and `gvd report` rebuilds the same bytes."""

import base64
import html
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from PIL import Image

from bench.cli import main
from bench.core.results import SCHEMA, failed_entry
from bench.core.rundir import RunDir, save_grid
from bench.report.figures import grid_cells, upscale_nearest
from bench.report.render import md_escape

SCRIPT = "<script>alert(1)</script>"
ATTR = '"><img src=x onerror=alert(1)>'


def _entry(model, seed, fid, **extra):
    return {"dataset": "shapes", "model": model, "seed": seed, "status": "ok",
            "metrics": {"fid": fid, "recall": 0.5, "coverage": 0.4, "modes": 10, "cond_accuracy": 0.6,
                        "near_copy_share": 0.01, "num_samples": 64}, **extra}


@pytest.fixture
def run_dir(tmp_path):
    """A small image run folder: results.json, grids and prompts as bench/imagebench.py writes them, plus a failed
    entry and prompts that carry markup."""
    root = tmp_path / "run"
    rd = RunDir(root)
    g = torch.Generator().manual_seed(0)
    for part in ("real", "gan", "diffusion"):
        rd.save_grid("shapes", 0, part, torch.rand(64, 3, 16, 16, generator=g) * 2 - 1)
    rd.write_prompts("shapes", 0, [SCRIPT, ATTR] + [f"a small red circle {i}" for i in range(62)])
    runs = [_entry("gan", 0, 30.0), _entry("diffusion", 0, 20.0),
            failed_entry("shapes", "gan", 1, f"boom {SCRIPT} | {ATTR}")]
    results = {"schema": SCHEMA, "suite": f"suite {SCRIPT}", "created": "2026-11-27", "device": "cpu",
               "versions": {"torch": "2.14.1"}, "config": {"seeds": [0, 1]}, "runs": runs}
    rd.write_results(results)
    return root


def _report(root):
    assert main(["report", str(root)]) == 0
    return (root / "report.html").read_text(), (root / "report.md").read_text()


class _Tags(HTMLParser):
    """Every tag and its attributes, as a browser's tokenizer sees them."""

    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _tags(page):
    parser = _Tags()
    parser.feed(page)
    return parser.tags


def test_every_embedded_image_decodes_and_nothing_is_linked(run_dir):
    page, _ = _report(run_dir)
    tags = _tags(page)
    sources = [attrs["src"] for tag, attrs in tags if tag == "img"]
    assert len(sources) >= 2  # at least the two sample figures built from the grids
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        image.load()
        assert image.size[0] > 0
    assert not [t for t, _ in tags if t in ("script", "iframe", "object", "embed", "link")]
    assert not [a for _, attrs in tags for a in attrs if a.startswith("on")]  # no event handlers


def test_strings_from_data_are_escaped(run_dir):
    page, markdown = _report(run_dir)
    for bad in (SCRIPT, ATTR):
        assert bad not in page and bad not in markdown
    assert html.escape(SCRIPT) in page and html.escape(ATTR) in page
    assert "&lt;script>alert(1)&lt;/script>" in markdown  # inert in Markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| shapes | gan | 1 |"))
    assert row.count(" | ") == 4  # the error's '|' stayed inside its cell


def test_md_escape_by_hand():
    assert md_escape("a|b<c>&d\ne") == "a\\|b&lt;c>&amp;d e"


def test_report_rebuilds_identical_files(run_dir):
    first = _report(run_dir)
    figures = {p.name: p.read_bytes() for p in (run_dir / "figures").glob("*.png")}
    assert _report(run_dir) == first
    assert {p.name: p.read_bytes() for p in (run_dir / "figures").glob("*.png")} == figures
    assert json.loads((run_dir / "results.json").read_text())["runs"][0]["model"] == "gan"


def test_grid_cells_invert_save_grid(tmp_path):
    """grid_cells recovers every image that save_grid tiled (up to the PNG's 8-bit rounding)."""
    images = torch.rand(20, 3, 5, 7, generator=torch.Generator().manual_seed(1)) * 2 - 1
    path = save_grid(tmp_path / "g.png", images, nrow=8)
    cells = grid_cells(np.asarray(Image.open(path).convert("RGB")), 20)
    assert len(cells) == 20
    for cell, image in zip(cells, images):
        expected = ((image + 1) / 2 * 255).permute(1, 2, 0).numpy()
        assert cell.shape == (5, 7, 3)
        assert np.abs(cell.astype(float) - expected).max() <= 1.0


def test_upscale_nearest_repeats_pixels():
    image = np.arange(12, dtype=np.uint8).reshape(2, 3, 2)
    big = upscale_nearest(image, 512)
    assert big.shape == (2 * 171, 3 * 171, 2)  # 171 = ceil(512 / 3)
    assert (big[::171, ::171] == image).all() and (big[170, 170] == image[0, 0]).all()


def test_report_draws_the_grids_at_least_512_pixels_wide(run_dir):
    _, markdown = _report(run_dir)
    for name in ("shapes_prompts.png", "shapes_grids.png"):
        assert f"(figures/{name})" in markdown
        with Image.open(run_dir / "figures" / name) as im:
            assert im.size[0] >= 512


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_report_html_renders_alone_in_headless_chromium(run_dir, tmp_path):
    _report(run_dir)
    alone = tmp_path / "mailed" / "report.html"  # the page without its run folder, as when mailed
    alone.parent.mkdir()
    alone.write_bytes((run_dir / "report.html").read_bytes())
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1200,3000", alone.as_uri()], check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    # the grids' coloured pixels arrived: the real shapes are saturated, the page around them grey or white
    saturation = pixels.max(axis=2).astype(int) - pixels.min(axis=2)
    assert (saturation > 100).sum() > 1000


# ---------------------------------------------------------------- what a reader sees (issue 35)


def test_code_spans_render_as_code_and_stay_escaped():
    """Markdown backticks showed literally in the HTML ("`gvd run --resume RUN_DIR --seeds ...`"): a code span is
    <code> in HTML and stays a code span in Markdown; text inside it is escaped first."""
    from bench.report.render import to_html, to_markdown

    blocks = [("p", "run `gvd run --resume RUN_DIR` again"), ("p", f"data `{SCRIPT}`"),
              ("table", ["a", "b"], [["`--threads 1`", "x"]])]
    page = to_html(blocks)
    assert "<code>gvd run --resume RUN_DIR</code>" in page and "<td><code>--threads 1</code></td>" in page
    assert "`" not in page.split("<body>")[1] and "<script>" not in page
    assert "<code>&lt;script&gt;alert(1)&lt;/script&gt;</code>" in page
    assert "run `gvd run --resume RUN_DIR` again" in to_markdown(blocks)


def test_a_smoke_run_says_its_numbers_mean_nothing(run_dir):
    """A smoke report read like a result (a full verdict on models trained a few steps): its report and its verdict
    open with a banner; any other preset's do not."""
    page, markdown = _report(run_dir)
    assert "plumbing check" not in page + markdown
    results = json.loads((run_dir / "results.json").read_text())
    RunDir(run_dir).write_results({**results, "suite": "smoke"})
    page, markdown = _report(run_dir)
    banner = "A plumbing check: these numbers mean nothing."
    assert markdown.count(f"> **{banner}") == 2 and page.count("<p class='banner'>" + banner) == 2
    head, verdict = markdown.split("\n## Verdict\n")
    assert banner in head and verdict.lstrip().startswith(f"> **{banner}")


def test_the_wide_image_table_is_split_by_aspect(run_dir):
    """The per-family table had ~20 columns, cut at 1,100 px: it is one table per aspect, each with the family,
    setting and runs-ok columns, every metric column in exactly one of them."""
    from bench.report.tables import LEAD_COLUMNS, image_table, image_tables

    results = json.loads((run_dir / "results.json").read_text())
    header, rows, shown = image_table(results, [r for r in results["runs"] if r["dataset"] == "shapes"])
    tables = image_tables(header, rows, shown)
    assert list(tables) == ["quality", "diversity", "prompt adherence"]  # the fixture's metrics
    seen = [h for head, _ in tables.values() for h in head[LEAD_COLUMNS:]]
    assert sorted(seen) == sorted(header[LEAD_COLUMNS:])
    for head, part in tables.values():
        assert head[:LEAD_COLUMNS] == header[:LEAD_COLUMNS] and len(head) <= 12
        assert [r[:LEAD_COLUMNS] for r in part] == [r[:LEAD_COLUMNS] for r in rows]
    assert tables["diversity"][0][LEAD_COLUMNS:] == ["modes"] and "FID interval" in tables["quality"][0]
    _, markdown = _report(run_dir)
    assert "#### shapes: quality" in markdown and "#### shapes: diversity" in markdown


def test_a_dataset_with_no_finished_run_says_so_instead_of_an_empty_table(run_dir):
    """Every entry of a dataset interrupted: no header-only table and no "0/0 converged ... n/a" verdict, one line
    each naming what happened and the command that goes on."""
    results = json.loads((run_dir / "results.json").read_text())
    stopped = [{"dataset": "digits", "model": m, "seed": 0, "status": "interrupted", "metrics": {}}
               for m in ("gan", "diffusion")]
    RunDir(run_dir).write_results({**results, "runs": results["runs"] + stopped})
    _, markdown = _report(run_dir)
    digits = markdown.split("### Verdict: digits")[1].split("\n#")[0]
    assert "Nothing to compare yet: all 2 entries were interrupted" in digits and "|" not in digits
    assert "0/0 converged" not in markdown
    section = markdown.split("\n### digits\n")[1].split("\n#")[0]
    assert section.strip() == ("No run of digits finished (interrupted 2): nothing to score yet. `gvd run --resume "
                               "RUN_DIR` runs what is left.")


def test_the_sweeps_paragraph_says_what_its_table_shows():
    """The paragraph claimed recall falls with guidance while its own table showed it rising (0.633 -> 0.75): each
    family's sentence is read from the sweep's own points, neutral setting to the farthest, at the table's
    precision."""
    from bench.report.build import sweep_sentences

    families = {"gan": {"label": "GAN", "knob": {"neutral": 1.0}},
                "diffusion": {"label": "diffusion", "knob": {"neutral": 1.0}}}
    summaries = {
        "gan": ("truncation psi", [{"value": v, "precision_lf": (p, 0.0), "recall_lf": (r, 0.0)}
                                   for v, p, r in ((0.5, 0.9, 0.2), (1.0, 0.7, 0.5))]),
        "diffusion": ("guidance scale", [{"value": v, "precision_lf": (p, 0.0), "recall_lf": (r, 0.0)}
                                         for v, p, r in ((1.0, 0.8, 0.633), (3.0, 0.7, 0.7), (5.0, 0.6, 0.75))])}
    text = sweep_sentences(summaries, families, "_lf")
    assert ("GAN, truncation psi 1 -> 0.5: precision 0.7 -> 0.9 (up), recall 0.5 -> 0.2 (down): the intended "
            "trade.") in text
    assert ("Diffusion, guidance scale 1 -> 5: precision 0.8 -> 0.6 (down), recall 0.633 -> 0.75 (up): the opposite "
            "of the intended trade.") in text


def test_the_text_encoder_has_one_parameter_count():
    """The report gave the text encoder 418,048 parameters in the recipes and 423,552 under throughput (the speed
    stage builds it with a placeholder vocabulary): the throughput section gives the trained one's and says why the
    timed one differs."""
    from bench.report.speed import throughput_blocks

    result = {"batch": 64, "train_batch": 128, "rows": [], "matmul_peak": {"dtype": "float32", "n": 1024,
                                                                           "tflops": 0.1},
              "versions": {}, "load_average": {"start": 1.0, "end": 1.0}, "device": "cpu", "threads": 2,
              "dtype": {"sample": "float32", "train": "float32"}, "timer": "perf_counter",
              "sampler_overhead": {"sampler": "ddim", "batch": 64},
              "models": {"text": {"params": 423552}, "gan": {"params": {"G": 1}}}}
    text = " ".join(b[1] for b in throughput_blocks(result, text_params=418048) if b[0] == "p")
    assert "shared text encoder 418,048" in text and "placeholder vocabulary (423,552 parameters)" in text
    assert "shared text encoder 423,552" not in text
