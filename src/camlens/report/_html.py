"""The report as one HTML file: inline CSS, images as ``data:`` URIs, one tiny inline script
(a filter box), and a Content-Security-Policy that lets the page load nothing from anywhere.

Every text that comes from outside (file names, class names, layer names, reasons, the title)
goes through :func:`html.escape`; element ids are numbers, never names.
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
from datetime import datetime, timezone

import numpy as np

from ..explanation import score_text
from ._collect import RAW_PREDICTIONS, ImageResult, Report, best_methods

__all__ = ["render_html"]

_CSS = """
:root{--fg:#1d2330;--muted:#5b6475;--line:#d9dde5;--bg:#f6f7f9;--card:#fff;--accent:#2456c7;--best:#e6f4ea}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header,nav,main>section,.block{max-width:1200px;margin:0 auto 14px;padding:14px 18px;background:var(--card);border:1px solid var(--line);border-radius:8px}
header{margin-top:14px}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:0 0 8px}
.muted{color:var(--muted)}
a{color:var(--accent);text-decoration:none}a:hover{text-decoration:underline}
.legend{display:inline-block;width:120px;height:10px;border:1px solid var(--line);vertical-align:middle;margin:0 4px}
nav ol{columns:4 220px;margin:6px 0 0;padding-left:2.4em}
nav li{break-inside:avoid;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
nav li.failed a{color:#b3261e}
input[type=search]{width:260px;padding:4px 8px;border:1px solid var(--line);border-radius:4px;font:inherit}
main>section{content-visibility:auto;contain-intrinsic-size:auto 520px}
.row{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
figure{margin:0;text-align:center}
figcaption{font-size:12px;color:var(--muted);max-width:360px;overflow-wrap:anywhere}
img{width:160px;height:auto;border-radius:3px;background:#eee}
img.small{image-rendering:pixelated}
.pair{display:flex;gap:4px}
.grid{display:flex;flex-wrap:wrap;gap:14px;margin-top:12px}
table{border-collapse:collapse;font-size:13px}
th,td{padding:3px 8px;border-bottom:1px solid var(--line);text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.best{background:var(--best);font-weight:600}
.bar{display:inline-block;height:8px;background:var(--accent);border-radius:2px;vertical-align:middle}
details{margin-top:8px}summary{cursor:pointer}
.error{color:#b3261e}
a.up{font-size:12px;font-weight:normal;margin-left:6px}
"""

# The only script: filter the contents and the sections by name or class. Its hash goes into
# the Content-Security-Policy, so no other script (an escaping bug, say) could ever run.
_JS = (
    'document.getElementById("filter").addEventListener("input",function(e){'
    "var q=e.target.value.trim().toLowerCase();"
    'document.querySelectorAll("[data-key]").forEach(function(el){'
    "el.hidden=q!==\"\"&&el.getAttribute(\"data-key\").indexOf(q)<0;});});"
)


_UP = ' <a class="up" href="#toc" title="back to the contents">&uarr;</a>'


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _img(uri: tuple[str, int, int], alt: str) -> str:
    src, w, h = uri
    small = ' class="small"' if max(w, h) < 96 else ""
    return f'<img src="{src}" width="{w}" height="{h}" alt="{_e(alt)}" loading="lazy" decoding="async"{small}>'


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return str(v)
    return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"


def _gradient(cmap: str) -> str:
    from ..viz import colorize

    stops = colorize(np.linspace(0.0, 1.0, 9), cmap)
    return "linear-gradient(to right," + ",".join(f"#{r:02x}{g:02x}{b:02x}" for r, g, b in stops) + ")"


def _metric_table(
    rows: dict[str, dict[str, float]], methods: list[str], names: list[str], higher: dict[str, bool], caption: str
) -> str:
    best = {n: best_methods({m: rows.get(m, {}).get(n, math.nan) for m in methods}, higher[n]) for n in names}
    head = "".join(
        f'<th title="{"higher" if higher[n] else "lower"} is better">{_e(n)} {"&uarr;" if higher[n] else "&darr;"}</th>'
        for n in names
    )
    body = []
    for m in methods:
        cells = []
        for n in names:
            v = rows.get(m, {}).get(n)
            if v is None:
                cells.append('<td class="num">&ndash;</td>')
            elif m in best[n]:
                cells.append(f'<td class="num best" title="best">{_fmt(v)} &#9733;</td>')
            else:
                cells.append(f'<td class="num">{_fmt(v)}</td>')
        body.append(f"<tr><th>{_e(m)}</th>{''.join(cells)}</tr>")
    return f'<table class="metrics"><caption class="muted">{_e(caption)}</caption><tr><th>method</th>{head}</tr>{"".join(body)}</table>'


def _summary(report: Report) -> str:
    ok = [r for r in report.images if r.error is None]
    if not report.metric_names or not ok:
        return ""
    means: dict[str, dict[str, float]] = {}
    for m in report.methods:
        for n in report.metric_names:
            vals = [r.metrics.get(m, {}).get(n) for r in ok]
            finite = [v for v in vals if v is not None and math.isfinite(v)]
            if finite:
                means.setdefault(m, {})[n] = float(np.mean(finite))
    table = _metric_table(
        means, report.methods, report.metric_names, report.higher_is_better,
        f"mean over {len(ok)} image(s); \u2605 best per metric",
    )
    return f'<section class="block" id="summary"><h2>Faithfulness</h2>{table}</section>'


def _section(pos: int, r: ImageResult, report: Report) -> str:
    sid = f"img-{pos}"
    top1 = r.predictions[0][1] if r.predictions else ""
    key = _e(f"{r.name} {top1}".lower())
    if r.error is not None:
        return (
            f'<section id="{sid}" data-key="{key}"><h2>{pos}. {_e(r.name)}{_UP}</h2>'
            f'<p class="error">could not be used: {_e(r.error)}</p></section>'
        )
    parts = [f'<section id="{sid}" data-key="{key}"><h2>{pos}. {_e(r.name)}{_UP}</h2><div class="row">']
    if r.image is not None:
        parts.append(f"<figure>{_img(r.image, r.name)}<figcaption>input</figcaption></figure>")
    if r.predictions:
        rows = "".join(
            f'<tr><td>{_e(label)}</td><td class="num muted">{idx}</td>'
            f'<td><span class="bar" style="width:{max(1, round(80 * min(max(v, 0.0), 1.0)))}px"></span></td>'
            f'<td class="num">{_fmt(v)}</td></tr>'
            if report.prediction_kind != RAW_PREDICTIONS
            else f'<tr><td>{_e(label)}</td><td class="num muted">{idx}</td><td></td><td class="num">{_fmt(v)}</td></tr>'
            for idx, label, v in r.predictions
        )
        parts.append(
            f'<table class="preds"><caption class="muted">top {len(r.predictions)} '
            f"({_e(report.prediction_kind)})</caption>{rows}</table>"
        )
    if r.explained is not None:
        cls, label, score = r.explained
        what = report.target if cls is None else label if label == f"class {cls}" else f"{label} ({cls})"
        parts.append(f'<p class="muted">explained: {_e(what)}<br>target score '
                     f'{_e(score_text(score, r.score_space or "raw"))}</p>')
    parts.append('</div><div class="grid">')
    for p in r.panels:
        caption = f"<b>{_e(p.method)}</b> @ {_e(p.site)}"
        parts.append(
            f'<figure><div class="pair">{_img(p.overlay, f"{p.method} overlay")}'
            f'{_img(p.heatmap, f"{p.method} map")}</div><figcaption>{caption}</figcaption></figure>'
        )
    parts.append("</div>")
    if r.layers:
        items = "".join(
            f"<li><b>{_e(m)}</b>: {_e(r.layers[m])} &mdash; {_e(report.reasons.get(m, ''))}</li>"
            for m in report.methods if m in r.layers
        )
        parts.append(f"<details><summary>layers and why</summary><ul>{items}</ul></details>")
    if r.metrics and report.metric_names:
        parts.append(_metric_table(
            r.metrics, report.methods, report.metric_names, report.higher_is_better,
            "faithfulness; \u2605 best per metric",
        ))
    parts.append("</section>")
    return "".join(parts)


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page (a ``str``; write it as UTF-8)."""
    from .. import __version__

    digest = base64.b64encode(hashlib.sha256(_JS.encode("utf-8")).digest()).decode("ascii")
    csp = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{digest}'"
    n_ok = sum(r.error is None for r in report.images)
    failed = report.failed
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    toc = []
    for pos, r in enumerate(report.images, 1):
        top1 = r.predictions[0][1] if r.predictions else ""
        key = _e(f"{r.name} {top1}".lower())
        extra = f' <span class="muted">{_e(top1)}</span>' if top1 else ""
        if r.error is not None:
            toc.append(f'<li class="failed" data-key="{key}"><a href="#img-{pos}">{_e(r.name)}</a> <span class="muted">failed</span></li>')
        else:
            toc.append(f'<li data-key="{key}"><a href="#img-{pos}">{_e(r.name)}</a>{extra}</li>')

    layers = "".join(
        f"<li><b>{_e(m)}</b>: {_e(report.reasons[m])}</li>" for m in report.methods if m in report.reasons
    )
    fail_note = (
        f' &middot; <a class="error" href="#failed">{len(failed)} could not be read</a>' if failed else ""
    )
    fail_block = ""
    if failed:
        items = "".join(f"<li>{_e(r.name)}: {_e(r.error)}</li>" for r in failed)
        fail_block = f'<section class="block" id="failed"><h2>Failed</h2><ul class="error">{items}</ul></section>'

    head = (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>camlens report: {_e(report.title)}</title><style>{_CSS}</style></head><body>"
    )
    header = (
        f"<header><h1>camlens report: {_e(report.title)}</h1>"
        f'<p class="muted">{n_ok} image(s){fail_note} &middot; methods: {_e(", ".join(report.methods))}'
        f" &middot; target: {_e(report.target or '-')} &middot; {_e(stamp)} &middot; camlens {_e(__version__)}</p>"
        f'<p class="muted">maps: {_e(report.cmap)} <span class="legend" style="background:{_gradient(report.cmap)}"></span>'
        f" low &rarr; high; overlays at opacity {report.alpha:g}</p>"
        + (f"<details><summary>layers and why</summary><ul>{layers}</ul></details>" if layers else "")
        + "</header>"
    )
    nav = (
        '<nav id="toc"><h2>Contents</h2>'
        '<input type="search" id="filter" placeholder="filter by name or class" aria-label="filter">'
        f"<ol>{''.join(toc)}</ol></nav>"
    )
    sections = "".join(_section(pos, r, report) for pos, r in enumerate(report.images, 1))
    return (
        f"{head}{header}{_summary(report)}{nav}{fail_block}<main>{sections}</main>"
        f"<script>{_JS}</script></body></html>\n"
    )
