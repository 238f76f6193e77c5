"""``index.html`` of a batch: every job as a row (thumbnail linking to its report.html),
sortable and filterable, failed jobs with their one-line error, the Table 1 layout (mean
± std per configuration) and its chart. Rebuilt with the tables, so ``nfit table`` on a
running batch refreshes it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nfit.html.page import esc, file_uri, fmt, page, section, thumbnail_uri
from nfit.io import atomic_write_text

INDEX_FILE = "index.html"
#: the picture of a finished job its row shows, in order of preference
THUMBNAILS = ("recon.png", "preview.png", "slices.png", "sweep.png", "curve.png")


def _thumbnail(job_dir: Path) -> str | None:
    for name in THUMBNAILS:
        if (job_dir / name).is_file():
            return thumbnail_uri(job_dir / name)
    return None


def write_batch_index(out: Path, jobs: dict[str, Any], rows: list[dict[str, Any]], metrics: list[str],
                      chosen: list[str], shown: list[str], summary: list[dict[str, Any]],
                      executor: str = "") -> Path:
    """Write ``out/index.html`` from a batch's tables (``nfit.batch.write_tables``): jobs by
    name (their ``out`` folders), one row per job, its metric and choice columns, and the
    summary per configuration with the metrics it shows."""
    out = Path(out)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1

    header = ["", "job", "signal", "config", "seed", "status", *chosen, *metrics, "wall time (s)", "error"]
    body = []
    for row in rows:
        job = jobs.get(row["job"])
        job_dir = job.out if job is not None else out / row["job"]
        if not job_dir.is_absolute() and not job_dir.exists():
            job_dir = out / row["job"]
        link = job_dir / "report.html"
        href = os.path.relpath(link, out) if link.is_file() else None
        thumb = _thumbnail(job_dir) if row["status"] in ("done", "skipped") else None
        cell = f"<img src=\"{thumb}\" alt=\"{esc(row['job'])}\">" if thumb else ""
        if href:
            cell = f"<a href=\"{esc(href)}\">{cell or 'report'}</a>"
        name = f"<a href=\"{esc(href)}\">{esc(row['job'])}</a>" if href else esc(row["job"])
        cells = [f"<td class=\"thumb\">{cell}</td>", f"<td>{name}</td>", f"<td>{esc(row['signal'])}</td>",
                 f"<td>{esc(row['config'])}</td>", f"<td>{esc(fmt(row.get('seed')))}</td>",
                 f"<td class=\"status-{esc(row['status'])}\">{esc(row['status'])}</td>"]
        for key in [*chosen, *metrics, "wall_time_s"]:
            value = row.get(key)
            sort = f" data-v=\"{value}\"" if isinstance(value, int | float) else ""
            cells.append(f"<td{sort}>{esc(fmt(value))}</td>")
        error = str(row.get("error") or "").strip().splitlines()
        cells.append(f"<td class=\"err\">{esc(error[0] if error else '')}</td>")
        cls = " class=\"failed\"" if row["status"] == "failed" else ""
        body.append(f"<tr data-status=\"{esc(row['status'])}\"{cls}>{''.join(cells)}</tr>")
    head = "".join(f"<th>{esc(h.replace('_', ' '))}</th>" for h in header)
    options = "".join(f"<option value=\"{esc(s)}\">{esc(s)} ({n})</option>" for s, n in sorted(counts.items()))
    jobs_html = (f"<div class=\"filters\" data-filter=\"jobs\"><input type=\"search\" placeholder=\"filter: "
                 f"words in any column (kodim05 gauss)\" aria-label=\"filter\"><label>status <select>"
                 f"<option value=\"\">any</option>{options}</select></label><span data-count></span></div>"
                 f"<div class=\"scroll\"><table id=\"jobs\" class=\"sortable jobs\"><thead><tr>{head}</tr></thead>"
                 f"<tbody>{''.join(body)}</tbody></table></div>"
                 "<p class=\"note\">Click a column's name to sort; a thumbnail or a job's name opens its report.</p>")

    summary_html = _summary_table(shown, summary)
    chart = ""
    if (out / "table.png").is_file():
        chart = (f"<figure><img class=\"fig\" src=\"{file_uri(out / 'table.png')}\" alt=\"table.png\">"
                 f"<figcaption>mean ± std per configuration, per signal and over all (table.png)</figcaption></figure>")
    states = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    title = f"batch {out.name}"
    body_html = (f"<header><h1>{esc(title)}</h1><p class=\"sub\">{len(rows)} jobs ({esc(states)}) · "
                 f"executor {esc(executor)}</p><nav><a href=\"#table1\">table</a>"
                 f"<a href=\"#jobs-section\">jobs</a></nav></header><main>"
                 + section("Mean ± std per configuration (over signals and seeds)", summary_html + chart, "table1")
                 + section("Jobs", jobs_html, "jobs-section")
                 + "</main><footer>nfit batch index · rebuilt by <code>nfit table</code> · this page makes no "
                 "request</footer>")
    target = out / INDEX_FILE
    atomic_write_text(target, page(title, body_html))
    return target


def _summary_table(metrics: list[str], summary: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{esc(h.replace('_', ' '))}</th>" for h in ["configuration", *metrics, "jobs"])
    body = []
    for entry in summary:
        cells = [f"<td>{esc(entry['config'])}</td>"]
        for m in metrics:
            if m in entry:
                cells.append(f"<td data-v=\"{entry[m]}\">{entry[m]:.2f} ± {entry[f'{m}_std']:.2f}</td>")
            else:
                cells.append("<td>-</td>")
        jobs = f"{entry['done']}/{entry['jobs']}" + (f" ({entry['failed']} failed)" if entry["failed"] else "")
        cells.append(f"<td>{esc(jobs)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (f"<table class=\"sortable table1\"><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            "<p class=\"note\">As table.md: each metric's mean and sample standard deviation over the finished "
            "jobs of a configuration.</p>")
