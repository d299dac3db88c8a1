"""Pages as a list of blocks, rendered once as Markdown and once as self-contained HTML.

A page is built once (headings, paragraphs, lists, :class:`Table` objects, preformatted text,
figures) and then written by :func:`page_markdown` or :func:`page_html`, so both formats show
the same content. Figures (inline SVG) exist only in HTML; a figure may carry a table that
Markdown shows instead. The HTML has inline CSS and SVG only: no scripts, no external
references.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Sequence, Union

from mbdefense.reporting.render import md_text, table_html, table_markdown
from mbdefense.reporting.table import Table

CSS = """
body { font-family: Helvetica, Arial, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; vertical-align: top; text-align: left; }
th { background: #f3f3f3; }
.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
th.reference, td.reference { background: #eef6ee; font-weight: bold; }
th.highlight, td.highlight { background: #fdeeee; }
th.highlight { font-weight: bold; }
td.text { white-space: pre-wrap; max-width: 40em; }
.swatch { display: inline-block; width: 0.8em; height: 0.8em; margin-right: 0.4em;
          border-radius: 2px; vertical-align: baseline; }
.charts { display: flex; flex-wrap: wrap; gap: 1em; margin-bottom: 1em; align-items: flex-start; }
.charts figure { margin: 0; overflow-x: auto; max-width: 100%; }
figcaption { font-size: 13px; font-weight: bold; margin-bottom: 0.3em; }
details { margin: 0.3em 0; }
summary { cursor: pointer; }
pre { background: #f7f7f7; padding: 0.5em; overflow-x: auto; font-size: 12px; }
.note { color: #555; font-size: 13px; }
.header { list-style: none; padding-left: 0; }
"""


@dataclass(frozen=True)
class Code:
    """Inline code within a paragraph or a list item."""

    text: str


Inline = Union[str, Code]


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    parts: Sequence[Inline]
    note: bool = False


@dataclass
class Items:
    """A bulleted list; each item a sequence of text and inline code."""

    items: Sequence[Sequence[Inline]]


@dataclass
class TableBlock:
    """A table under its title (a heading of ``level``; HTML: a collapsed section)."""

    table: Table
    level: int = 3
    collapsed: bool = False


@dataclass
class Preformatted:
    title: str
    text: str
    level: int = 3
    collapsed: bool = False


@dataclass
class Figure:
    """An inline SVG (HTML); Markdown shows ``fallback`` instead, or nothing."""

    svg: str
    fallback: Table | None = None


@dataclass
class Figures:
    """Figures and tables side by side (HTML); Markdown shows the tables one after another."""

    items: Sequence[Union[Figure, Table]]
    title: str = ""
    level: int = 3


Block = Union[Heading, Paragraph, Items, TableBlock, Preformatted, Figures]


# ----------------------------------------------------------------------------- Markdown


def _md_inline(parts: Sequence[Inline]) -> str:
    return "".join(f"`{md_text(p.text)}`" if isinstance(p, Code) else md_text(p) for p in parts)


def _fence(text: str) -> str:
    """A code fence longer than any run of backticks in ``text``."""
    longest, run = 0, 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    return "`" * max(3, longest + 1)


def _md_titled(title: str, level: int, body: str) -> list[str]:
    head = [f"{'#' * level} {md_text(title)}", ""] if title else []
    return head + ([body, ""] if body else [])


def _md_figures(block: Figures) -> list[str]:
    tables = [item if isinstance(item, Table) else item.fallback for item in block.items]
    bodies = [(t.title, table_markdown(t)) for t in tables if t is not None]
    if not bodies:
        return []
    lines = [f"{'#' * block.level} {md_text(block.title)}", ""] if block.title else []
    for title, body in bodies:
        lines += ([f"**{md_text(title)}**", ""] if title else []) + [body, ""]
    return lines


def _md_block(block: Block) -> list[str]:
    if isinstance(block, Heading):
        return [f"{'#' * block.level} {md_text(block.text)}", ""]
    if isinstance(block, Paragraph):
        return [_md_inline(block.parts), ""]
    if isinstance(block, Items):
        return [f"- {_md_inline(item)}" for item in block.items] + [""] if block.items else []
    if isinstance(block, TableBlock):
        return _md_titled(block.table.title, block.level, table_markdown(block.table))
    if isinstance(block, Preformatted):
        fence = _fence(block.text)
        return _md_titled(block.title, block.level, f"{fence}\n{block.text}\n{fence}")
    return _md_figures(block)


def page_markdown(blocks: Sequence[Block]) -> str:
    """The blocks as one Markdown document."""
    lines: list[str] = []
    for block in blocks:
        lines += _md_block(block)
    return "\n".join(lines)


# ----------------------------------------------------------------------------- HTML


def _html_inline(parts: Sequence[Inline]) -> str:
    return "".join(f"<code>{escape(p.text)}</code>" if isinstance(p, Code) else escape(p)
                   for p in parts)


def _html_titled(title: str, level: int, collapsed: bool, body: str) -> str:
    if collapsed:
        return f"<details><summary>{escape(title)}</summary>{body}</details>"
    return (f"<h{level}>{escape(title)}</h{level}>" if title else "") + body


def _html_figures(block: Figures) -> str:
    figures = []
    for item in block.items:
        if isinstance(item, Table):
            caption = f"<figcaption>{escape(item.title)}</figcaption>" if item.title else ""
            figures.append(f"<figure>{caption}{table_html(item)}</figure>")
        else:
            figures.append(f"<figure>{item.svg}</figure>")
    if not figures:
        return ""
    head = f"<h{block.level}>{escape(block.title)}</h{block.level}>" if block.title else ""
    return head + '<div class="charts">' + "\n".join(figures) + "</div>"


def _html_block(block: Block) -> str:
    if isinstance(block, Heading):
        return f"<h{block.level}>{escape(block.text)}</h{block.level}>"
    if isinstance(block, Paragraph):
        cls = ' class="note"' if block.note else ""
        return f"<p{cls}>{_html_inline(block.parts)}</p>"
    if isinstance(block, Items):
        if not block.items:
            return ""
        return "<ul>" + "".join(f"<li>{_html_inline(item)}</li>" for item in block.items) + "</ul>"
    if isinstance(block, TableBlock):
        return _html_titled(block.table.title, block.level, block.collapsed,
                            table_html(block.table))
    if isinstance(block, Preformatted):
        return _html_titled(block.title, block.level, block.collapsed,
                            f"<pre>{escape(block.text)}</pre>")
    return _html_figures(block)


def page_html(title: str, blocks: Sequence[Block], css: str = CSS) -> str:
    """The blocks as one self-contained HTML page titled ``title``."""
    body = [html for html in (_html_block(b) for b in blocks) if html]
    return "\n".join(["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
                      f"<title>{escape(title)}</title>", f"<style>{css}</style>", "</head>",
                      "<body>", *body, "</body>", "</html>", ""])


__all__ = ["Block", "CSS", "Code", "Figure", "Figures", "Heading", "Items", "Paragraph",
           "Preformatted", "TableBlock", "page_html", "page_markdown"]
