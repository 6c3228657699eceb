"""The report's two renderings of one list of blocks: Markdown (report.md, figures linked) and one self-contained
HTML page (report.html, figures embedded as data URIs, no JavaScript, every string escaped), so the two never disagree
and the page can be mailed alone.

Blocks: ("h1" | "h2" | "h3" | "h4", text), ("p", text), ("banner", text: a warning that stands out, above what it warns
about), ("table", header, rows), ("img", path relative to the run folder, caption: what the figure shows). A table cell
is a string, or a Cell: a string with the per-seed values behind it (after the text in Markdown, a hover title in
HTML). Text in `backticks` (a command, a file) is code: a code span in Markdown, <code> in HTML.
"""

import base64
import html
import re
import urllib.parse
from pathlib import Path


class Cell(str):
    """A table cell's text with what stands behind it (the per-seed values of a mean over a few seeds): written after
    the text in Markdown, a hover title in HTML. It compares and prints as its text."""

    detail: str

    def __new__(cls, text: str, detail: str = ""):
        cell = super().__new__(cls, text)
        cell.detail = detail
        return cell


def md_escape(text: str) -> str:
    """Text from data or config made inert in Markdown: '<' cannot open an HTML tag, '|' cannot end a table cell, a
    line break cannot end a table row, '](' cannot make a link or an image (a dataset folder named like one)."""
    return (str(text).replace("&", "&amp;").replace("<", "&lt;").replace("|", "\\|").replace("\n", " ")
            .replace("](", "]\\("))


def _md_link(path: str) -> str:
    """A relative path as a Markdown link target: percent-encoded, so spaces and parentheses cannot end it."""
    return urllib.parse.quote(path, safe="/-_.~")


def to_markdown(blocks: list) -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3", "h4"):
            out.append("#" * int(kind[1]) + " " + md_escape(block[1]))
        elif kind == "p":
            out.append(md_escape(block[1]))
        elif kind == "banner":
            out.append("> **" + md_escape(block[1]) + "**")
        elif kind == "table":
            header, rows = block[1], block[2]
            out.append("\n".join(["| " + " | ".join(map(md_escape, header)) + " |", "|" + "---|" * len(header)]
                                 + ["| " + " | ".join(map(_md_cell, row)) + " |" for row in rows]))
        elif kind == "img":
            alt = md_escape(block[2]).replace("[", "\\[").replace("]", "\\]")
            out.append(f"![{alt}]({_md_link(block[1])})")
    return "\n\n".join(out) + "\n"


def _md_cell(cell: str) -> str:
    detail = getattr(cell, "detail", "")
    return md_escape(cell) + (f"; {md_escape(detail)}" if detail else "")


_CODE = re.compile(r"`([^`]+)`")


def html_text(text: str) -> str:
    """Text escaped for HTML, its `code spans` as <code> (escaped first, so a backtick in data cannot open a tag)."""
    return _CODE.sub(r"<code>\1</code>", html.escape(str(text)))


def _cells(row: list[str], tag: str) -> str:
    """One HTML table row's cells; the Markdown emphasis stars of the published rows dropped; a Cell's detail as the
    cell's hover title."""
    def one(c: str) -> str:
        detail = getattr(c, "detail", "")
        title = f' title="{html.escape(detail)}"' if detail else ""
        return f"<{tag}{title}>{html_text(str(c).replace('*', ''))}</{tag}>"

    return "".join(one(c) for c in row)


def _data_uri(root: Path | None, rel: str) -> str | None:
    """The image file root/rel as a data URI (the page then travels alone), or None when it is not there."""
    path = (root / rel) if root is not None else None
    if path is None or not path.is_file():
        return None
    kind = "png" if path.suffix.lower() == ".png" else path.suffix.lower().lstrip(".")
    return f"data:image/{kind};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _html_image(block: tuple, root: Path | None) -> str:
    uri = _data_uri(root, block[1])
    if uri is None:
        return f"<p class='missing'>figure not found: {html.escape(block[1])}</p>"
    return (f'<figure><img src="{uri}" alt="{html.escape(block[2])}">'
            f"<figcaption>{html_text(block[2])}</figcaption></figure>")


# No scripts, no outside requests: images come only as data URIs, styles only from the page itself.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def to_html(blocks: list, root: Path | None = None) -> str:
    """One self-contained page: every image block read from `root` (the run folder) and embedded as a data URI;
    every string escaped."""
    body = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3", "h4"):
            body.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{html_text(block[1])}</p>")
        elif kind == "banner":
            body.append(f"<p class='banner'>{html_text(block[1])}</p>")
        elif kind == "table":
            body.append("<table><tr>" + _cells(block[1], "th") + "</tr>"
                        + "".join("<tr>" + _cells(r, "td") + "</tr>" for r in block[2]) + "</table>")
        elif kind == "img":
            body.append(_html_image(block, root))
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:14px;display:block;overflow-x:auto;max-width:100%}"
             "td,th{border:1px solid #ccc;padding:4px 8px;"
             "text-align:right}th{background:#f3f3f3}td:first-child,td:nth-child(2),th:first-child,th:nth-child(2)"
             "{text-align:left}code{font-size:90%;background:#f3f3f3;padding:0 2px}"
             ".banner{background:#fff3cd;border:2px solid #d39e00;padding:.6em 1em;font-weight:bold}"
             "td[title]{text-decoration:underline dotted #999;cursor:help}"
             "h4{margin:1.2em 0 .2em}img{max-width:100%}figure{margin:1em 0}figcaption{font-size:13px;color:#444}"
             ".missing{color:#a00}")
    return ("<!doctype html>\n<html><head><meta charset='utf-8'>"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            "<title>gan-vs-diffusion report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


