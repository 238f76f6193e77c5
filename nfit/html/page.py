"""Pieces every page shares: the HTML shell with its inline style and script, pictures as
data URIs, SVG line charts, tables. Nothing here reaches outside the page: no web fonts,
no CDN, no external script, so a page opens from disk, offline, and can be mailed alone."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

#: the longest side a picture is embedded at; larger ones are shown at this size
MAX_SIDE = 4096


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def asset(name: str) -> str:
    """A file of nfit/html/static (the page's CSS and scripts)."""
    return resources.files("nfit.html").joinpath("static", name).read_text(encoding="utf-8")


def page(title: str, body: str, scripts: Sequence[str] = ("report.js",)) -> str:
    """A whole document: the shared style, ``body``, then the named scripts inline."""
    js = "\n".join(asset(s) for s in scripts)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            # the page may only show what it carries: no request leaves it
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            "img-src data: 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
            f"<title>{esc(title)}</title><style>{asset('report.css')}</style></head>\n"
            f"<body>\n{body}\n<script>{js}</script>\n</body></html>\n")


def to_uint8(values: np.ndarray) -> np.ndarray:
    """[0, 1] floats (H, W) or (H, W, C) as 8-bit, C 1 squeezed, C 2 (gray + alpha) kept."""
    arr = np.asarray(values)
    if arr.dtype != np.uint8:
        arr = (np.clip(np.nan_to_num(arr.astype(np.float32)), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    return arr


def png_uri(values: np.ndarray) -> str:
    """An image array as a PNG data URI (floats in [0, 1] or uint8)."""
    from PIL import Image

    arr = to_uint8(values)
    step = max(1, math.ceil(max(arr.shape[:2]) / MAX_SIDE))
    arr = np.ascontiguousarray(arr[::step, ::step])
    mode = {2: "L", 3: {2: "LA", 3: "RGB", 4: "RGBA"}.get(arr.shape[-1], "RGB")}[arr.ndim]
    if arr.ndim == 3 and arr.shape[-1] not in (2, 3, 4):
        arr, mode = arr.mean(axis=2).astype(np.uint8), "L"
    buffer = io.BytesIO()
    Image.fromarray(arr, mode).save(buffer, format="PNG", compress_level=3)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def file_uri(path: Path) -> str:
    """A picture file of the output folder as a data URI (its bytes as written)."""
    mime = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}
    return f"data:{mime.get(path.suffix.lower(), 'application/octet-stream')};base64," + \
        base64.b64encode(path.read_bytes()).decode("ascii")


def thumbnail_uri(path: Path, side: int = 120) -> str | None:
    """A small JPEG of a picture file (for a batch's index), or None when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as opened:
            if opened.mode.startswith("I"):  # 16-bit grayscale: its top byte
                img = opened.point(lambda v: v / 256).convert("L")
            else:
                img = opened.convert("RGB") if opened.mode not in ("RGB", "L") else opened.copy()
            img.thumbnail((side, side))
            buffer = io.BytesIO()
            img.save(buffer, format="JPEG", quality=80)
    except (OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def colormap(values: np.ndarray, vmax: float, name: str = "inferno") -> np.ndarray:
    """Non-negative values (H, W) as RGB uint8 through a matplotlib colour map, 0..vmax."""
    import matplotlib

    cmap = matplotlib.colormaps[name]
    scaled = np.clip(np.nan_to_num(values) / (vmax if vmax > 0 else 1.0), 0.0, 1.0)
    return (cmap(scaled)[..., :3] * 255.0 + 0.5).astype(np.uint8)


def fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.3e}"
        return f"{value:.4g}" if abs(value) < 100 else f"{value:.2f}"
    return str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class=\"{cls}\"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def key_values(items: Sequence[tuple[str, Any]]) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(fmt(v))}</td></tr>" for k, v in items)
    return f"<table class=\"kv\">{rows}</table>"


PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def svg_chart(x: Sequence[float], series: Mapping[str, Sequence[float | None]], title: str, xlabel: str,
              ylabel: str, log: bool = False, width: int = 520, height: int = 300) -> str:
    """A line chart as inline SVG (no script): one line per series, a legend, axis ticks."""
    pad_l, pad_r, pad_t, pad_b = 58, 12, 26, 40
    pts = {k: [(float(a), float(b)) for a, b in zip(x, v)
               if b is not None and math.isfinite(float(b)) and (not log or float(b) > 0)]
           for k, v in series.items()}
    pts = {k: v for k, v in pts.items() if v}
    if not pts:
        return ""
    xs = [p[0] for v in pts.values() for p in v]
    ys = [math.log10(p[1]) if log else p[1] for v in pts.values() for p in v]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    span = y1 - y0
    y0, y1 = y0 - 0.04 * span, y1 + 0.04 * span
    w, h = width - pad_l - pad_r, height - pad_t - pad_b

    def px(a: float) -> float:
        return pad_l + (a - x0) / (x1 - x0) * w

    def py(b: float) -> float:
        return pad_t + (1 - ((math.log10(b) if log else b) - y0) / (y1 - y0)) * h

    parts = [f"<svg class=\"chart\" viewBox=\"0 0 {width} {height}\" width=\"{width}\" height=\"{height}\" "
             f"role=\"img\" aria-label=\"{esc(title)}\">",
             f"<text x=\"{pad_l}\" y=\"16\" class=\"ct\">{esc(title)}</text>",
             f"<rect x=\"{pad_l}\" y=\"{pad_t}\" width=\"{w}\" height=\"{h}\" class=\"frame\"/>"]
    for i in range(5):
        yv = y0 + (y1 - y0) * i / 4
        yy = pad_t + (1 - i / 4) * h
        label = f"{10 ** yv:.2g}" if log else f"{yv:.3g}"
        parts.append(f"<line x1=\"{pad_l}\" x2=\"{pad_l + w}\" y1=\"{yy:.1f}\" y2=\"{yy:.1f}\" class=\"grid\"/>"
                     f"<text x=\"{pad_l - 4}\" y=\"{yy + 4:.1f}\" class=\"tick\" text-anchor=\"end\">{label}</text>")
        xv = x0 + (x1 - x0) * i / 4
        xx = pad_l + w * i / 4
        parts.append(f"<text x=\"{xx:.1f}\" y=\"{pad_t + h + 14}\" class=\"tick\" text-anchor=\"middle\">"
                     f"{xv:.4g}</text>")
    parts.append(f"<text x=\"{pad_l + w / 2}\" y=\"{height - 6}\" class=\"tick\" text-anchor=\"middle\">"
                 f"{esc(xlabel)}</text>")
    parts.append(f"<text x=\"12\" y=\"{pad_t + h / 2}\" class=\"tick\" text-anchor=\"middle\" "
                 f"transform=\"rotate(-90 12 {pad_t + h / 2})\">{esc(ylabel)}</text>")
    for i, (name, v) in enumerate(pts.items()):
        colour = PALETTE[i % len(PALETTE)]
        path = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in v)
        parts.append(f"<polyline points=\"{path}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.6\">"
                     f"<title>{esc(name)}: last {fmt(v[-1][1])}</title></polyline>")
        ly = pad_t + 12 + 14 * i
        parts.append(f"<line x1=\"{pad_l + w - 110}\" x2=\"{pad_l + w - 92}\" y1=\"{ly - 4}\" y2=\"{ly - 4}\" "
                     f"stroke=\"{colour}\" stroke-width=\"2\"/><text x=\"{pad_l + w - 88}\" y=\"{ly}\" "
                     f"class=\"tick\">{esc(name)}</text>")
    parts.append("</svg>")
    return "".join(parts)


def section(title: str, content: str, anchor: str = "") -> str:
    ident = f" id=\"{esc(anchor)}\"" if anchor else ""
    return f"<section{ident}><h2>{esc(title)}</h2>\n{content}\n</section>"
