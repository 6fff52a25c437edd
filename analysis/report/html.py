"""HTML building blocks for `report`: escaping, elements, tables, embedded PNGs, the page shell.

This is the only module that writes markup. Every piece of text and every attribute value goes
through `esc`; only `Raw` strings (HTML built here) pass through as they are, so page code composes
these helpers and never writes a tag itself (tests/test_structure.py checks that). Images are
embedded as data: URIs and the page carries its own CSS, so the file opens offline; a
Content-Security-Policy forbids the browser from loading anything that is not inline.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STATUSES = ("finished", "running", "interrupted", "diverged", "failed")  # the ones the CSS colours


class Raw(str):
    """HTML that is already safe (built by these helpers); `esc` leaves it untouched."""


def esc(value: Any) -> str:
    if isinstance(value, Raw):
        return value
    return html.escape(str(value), quote=True)


def join(parts: Iterable[Any]) -> Raw:
    """Several pieces side by side, each escaped unless Raw."""
    return Raw("".join(esc(p) for p in parts))


def attributes(cls: str | None = None, **attrs: Any) -> str:
    """' class="…" name="…"' with every value escaped and quoted; None leaves an attribute out.
    A trailing underscore allows Python keywords (for_=…); other underscores become hyphens."""
    pairs = {"class": cls, **attrs}
    return "".join(f' {k.rstrip("_").replace("_", "-")}="{esc(v)}"' for k, v in pairs.items() if v is not None)


def tag(name: str, *children: Any, cls: str | None = None, **attrs: Any) -> Raw:
    """<name …>children</name>; each child is escaped unless it is Raw."""
    return Raw(f"<{name}{attributes(cls, **attrs)}>{join(children)}</{name}>")


def void(name: str, cls: str | None = None, **attrs: Any) -> Raw:
    """An element without content or end tag (img, meta)."""
    return Raw(f"<{name}{attributes(cls, **attrs)}>")


def div(*children: Any, cls: str | None = None) -> Raw:
    return tag("div", *children, cls=cls)


def paragraph(*children: Any, cls: str | None = None) -> Raw:
    return tag("p", *children, cls=cls)


def heading(level: int, *children: Any) -> Raw:
    return tag(f"h{level}", *children)


def link(text: Any, href: str) -> Raw:
    return tag("a", text, href=href)


def code(text: Any) -> Raw:
    return tag("code", text)


def note(text: Any) -> Raw:
    """A highlighted remark: something missing, or how to get it."""
    return paragraph(text, cls="note")


def muted(*children: Any) -> Raw:
    """A quieter explanatory line."""
    return paragraph(*children, cls="muted")


def status_badge(status: str) -> Raw:
    """A run's status as a coloured pill (colours in CSS; an unknown word is grey)."""
    known = status if status in STATUSES else "unknown"
    return tag("span", status, cls=f"status status-{known}")


def signed(x: float) -> Raw:
    """A score with its sign, green above zero and red below (±0.0005 counts as zero)."""
    cls = "pos" if x > 0.0005 else "neg" if x < -0.0005 else None
    return tag("span", f"{x + 0.0:+.3f}", cls=cls)


def image_count(page_text: str) -> int:
    """How many images a page written by `page` embeds."""
    return page_text.count("<img ")


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure(data: bytes, alt: str, caption: Any = None, cls: str | None = None) -> Raw:
    """A PNG embedded in the page (data: URI), scaled down to the column width on small screens."""
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"not a PNG image: {alt}")
    img = void("img", src=png_uri(data), alt=alt, loading="eager")
    cap = tag("figcaption", caption) if caption else ""
    return tag("figure", img, cap, cls=cls)


def table(header: Sequence[Any], rows: Iterable[Sequence[Any]], num: Iterable[int] = (),
          cls: str | None = None, row_classes: Sequence[str | None] | None = None,
          caption: Any = None) -> Raw:
    """A plain table; columns listed in `num` are right-aligned with tabular digits."""
    num = set(num)

    def cells(name: str, values: Sequence[Any]) -> Raw:
        return join(tag(name, v, cls="num" if i in num else None) for i, v in enumerate(values))

    body = []
    for r, row in enumerate(rows):
        rc = row_classes[r] if row_classes is not None and r < len(row_classes) else None
        body.append(tag("tr", cells("td", row), cls=rc or None))
    cap = tag("caption", caption) if caption else ""
    return div(tag("table", cap, tag("thead", tag("tr", cells("th", header))), tag("tbody", join(body)), cls=cls),
               cls="scroll")


def key_values(pairs: Iterable[tuple[Any, Any]], caption: Any = None) -> Raw:
    """Two-column table: name, value (values may be Raw HTML)."""
    rows = join(tag("tr", tag("th", k, scope="row"), tag("td", v)) for k, v in pairs)
    cap = tag("caption", caption) if caption else ""
    return div(tag("table", cap, tag("tbody", rows), cls="kv"), cls="scroll")


def bar(fraction: float | None) -> Raw:
    """A small horizontal bar for a fraction in [0, 1] (inline style only: no scripts needed)."""
    if fraction is None:
        return Raw("")
    width = max(0.0, min(1.0, float(fraction))) * 100
    return tag("span", tag("span", style=f"width:{width:.1f}%"), cls="bar", aria_hidden="true")


@dataclass
class Section:
    id: str
    title: str
    body: Raw  # built with these helpers; anything else would be escaped on the page


@dataclass
class Document:
    """What a page shows: the header (title, heading, subtitle, key facts) and its sections, plus
    the notes on what could not be shown (the caller prints them)."""

    title: str
    heading: str
    subtitle: str
    facts: list[tuple[Any, Any]]
    sections: list[Section]
    notes: list[str] = field(default_factory=list)


CSS = """
:root { --fg:#1d2330; --muted:#5b6472; --line:#dfe3ea; --bg:#f6f7f9; --card:#fff; --accent:#2857b8;
        --ok:#1f7a3a; --warn:#9a6200; --bad:#b42318; --run:#2857b8; }
* { box-sizing: border-box; }
html { scroll-behavior: smooth; }
body { margin:0; background:var(--bg); color:var(--fg); line-height:1.45;
       font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", "DejaVu Sans", Arial, sans-serif; }
header.top { background:#1d2330; color:#fff; padding:22px 32px 18px; }
header.top h1 { margin:0 0 4px; font-size:24px; font-weight:600; word-break:break-all; }
header.top .sub { color:#c5cbd6; font-size:13px; margin:0 0 14px; word-break:break-all; }
.facts { display:flex; flex-wrap:wrap; gap:10px; }
.fact { background:rgba(255,255,255,.08); border:1px solid rgba(255,255,255,.14); border-radius:8px;
        padding:7px 12px; min-width:110px; }
.fact b { display:block; font-size:19px; font-weight:600; color:#fff; }
.fact span { font-size:12px; color:#c5cbd6; text-transform:uppercase; letter-spacing:.04em; }
.status { display:inline-block; padding:1px 9px; border-radius:10px; font-size:15px; font-weight:600; color:#fff; }
.status-finished { background:var(--ok); } .status-running { background:var(--run); }
.status-interrupted { background:var(--warn); } .status-diverged, .status-failed { background:var(--bad); }
.status-unknown { background:#6b7280; }
.layout { display:flex; align-items:flex-start; gap:24px; max-width:1500px; margin:0 auto; padding:20px 24px 40px; }
nav.toc { position:sticky; top:12px; flex:0 0 190px; background:var(--card); border:1px solid var(--line);
          border-radius:10px; padding:12px 14px; font-size:14px; }
nav.toc strong { display:block; margin-bottom:6px; }
nav.toc ol { margin:0; padding-left:20px; }
nav.toc li { margin:3px 0; }
a { color:var(--accent); text-decoration:none; } a:hover { text-decoration:underline; }
main { flex:1 1 auto; min-width:0; }
section { background:var(--card); border:1px solid var(--line); border-radius:10px; padding:6px 22px 18px;
          margin:0 0 20px; }
section h2 { font-size:19px; margin:14px 0 10px; padding-bottom:6px; border-bottom:1px solid var(--line); }
section h3 { font-size:16px; margin:18px 0 6px; }
p { margin:6px 0 10px; }
.muted, caption { color:var(--muted); font-size:13px; }
caption { text-align:left; padding:0 0 4px; caption-side:top; }
.note { background:#fff7e6; border-left:4px solid #e8a317; padding:7px 12px; border-radius:4px; font-size:14px; }
.grid { display:grid; grid-template-columns:repeat(auto-fill, minmax(290px, 1fr)); gap:6px 22px; }
.two { display:grid; grid-template-columns:repeat(auto-fit, minmax(420px, 1fr)); gap:6px 24px; align-items:start; }
.side { display:flex; flex-wrap:wrap; gap:0 36px; align-items:flex-start; }
.scroll { overflow-x:auto; }
table { border-collapse:collapse; margin:6px 0 12px; font-size:14px; }
th, td { padding:4px 10px; border-bottom:1px solid var(--line); text-align:left; vertical-align:top; }
thead th { background:#eef1f5; font-weight:600; white-space:nowrap; }
table.kv th { font-weight:500; color:var(--muted); white-space:nowrap; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
tr.best td { background:#eaf6ee; font-weight:600; }
tr.total td { font-weight:600; border-top:2px solid var(--line); }
code { font: 12.5px/1.4 ui-monospace, "SFMono-Regular", Menlo, Consolas, "DejaVu Sans Mono", monospace;
       background:#f0f2f5; padding:1px 4px; border-radius:4px; word-break:break-all; }
figure { margin:10px 0 16px; }
figure img { display:block; max-width:100%; height:auto; border:1px solid var(--line); border-radius:6px; background:#fff; }
figcaption { color:var(--muted); font-size:13px; margin-top:4px; }
.bar { display:inline-block; width:90px; height:9px; background:#e6e9ef; border-radius:5px;
       vertical-align:middle; margin-right:8px; overflow:hidden; }
.bar span { display:block; height:100%; background:var(--accent); }
.pos { color:var(--ok); } .neg { color:var(--bad); }
.card { border:1px solid var(--line); border-radius:8px; padding:4px 14px 8px; margin:10px 0; }
footer { max-width:1500px; margin:0 auto; padding:0 24px 30px; color:var(--muted); font-size:12.5px; word-break:break-all; }
@media (max-width: 900px) {
  .layout { display:block; padding:12px; }
  nav.toc { position:static; margin-bottom:16px; }
  header.top { padding:18px 16px; }
  section { padding:4px 12px 12px; }
  .two { grid-template-columns:1fr; }
}
@media print { nav.toc { display:none; } .layout { display:block; } section { break-inside:avoid-page; } }
"""

# Counts the images that decoded (complete, naturalWidth > 0) once the page has loaded and puts
# "ok/total" on <body data-images-ok>: visible in the DOM, so a headless browser can check it.
IMAGE_CHECK = """
window.addEventListener("load", function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
  document.body.dataset.imagesOk = ok + "/" + imgs.length;
});
"""

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def page(doc: Document, footer: Any) -> str:
    """The whole document: header with key facts, a table of contents, the sections, a footer."""
    fact_html = join(div(tag("b", v), tag("span", k), cls="fact") for k, v in doc.facts)
    toc = join(tag("li", link(s.title, f"#{s.id}")) for s in doc.sections)
    body = "\n".join(f'<section id="{esc(s.id)}">\n<h2>{esc(s.title)}</h2>\n{esc(s.body)}\n</section>'
                     for s in doc.sections)
    title, heading, subtitle = doc.title, doc.heading, doc.subtitle
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">
<meta name="referrer" content="no-referrer">
<title>{esc(title)}</title>
<style>{CSS}</style>
</head>
<body>
<header class="top">
<h1>{esc(heading)}</h1>
<p class="sub">{esc(subtitle)}</p>
<div class="facts">{fact_html}</div>
</header>
<div class="layout">
<nav class="toc" aria-label="Contents"><strong>Contents</strong><ol>{toc}</ol></nav>
<main>
{body}
</main>
</div>
<footer>{esc(footer)}</footer>
<script>{IMAGE_CHECK}</script>
</body>
</html>
"""
