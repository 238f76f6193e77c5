"""``report.html``: one page per fit, sweep or kernel study, beside its report.json.

The page is built only from what the job wrote into its folder (and the source signal,
for the ground truth), so it can be rebuilt at any time with ``write_html_report(out_dir)``.
It is written last and only for a complete job: when a file the report lists is missing,
no page is written (and an old one is removed), so a page always describes a whole job.
"""

from __future__ import annotations

import csv
import json
import shlex
from pathlib import Path
from typing import Any

from nfit.html.page import esc, file_uri, fmt, key_values, page, section, svg_chart, table
from nfit.io import atomic_write_text

HTML_FILE = "report.html"
#: the files a job writes after (or as) its page: never required to exist before it
MARKERS = frozenset({"report.json", "sweep.json", HTML_FILE})
#: pictures a kind writes that its page shows in the figures section
FIGURE_TITLES = {"curve.png": "training curve (as plotted by the fit)", "error.png": "error map",
                 "slices.png": "orthogonal mid-slices", "preview.png": "rendered views (zero level)",
                 "sinogram.png": "sinograms: measured, predicted", "kspace.png": "k-space",
                 "sweep.png": "sweep", "spectrum.png": "kernel spectrum", "kernel_row.png": "kernel rows",
                 "prediction.png": "kernel-regression prediction", "fbp.png": "filtered back-projection"}


def missing_outputs(out_dir: Path, report: dict[str, Any]) -> list[str]:
    """Files the report lists that are not in ``out_dir`` (the markers aside)."""
    return [f for f in report.get("files", []) if f not in MARKERS and not (out_dir / f).is_file()]


def _load_report(out_dir: Path) -> dict[str, Any] | None:
    for name in ("sweep.json", "report.json"):
        try:
            return json.loads((out_dir / name).read_text())
        except (OSError, ValueError):
            continue
    return None


def job_kind(out_dir: Path, report: dict[str, Any]) -> str:
    """sweep, kernel, or the fit's signal kind (image, volume, sdf, ct, mri)."""
    if "chosen" in report and "configs" in report:
        return "sweep"
    if "encodings" in report and "points" in report:
        return "kernel"
    return str(report.get("kind", ""))


def write_html_report(out_dir: Path, report: dict[str, Any] | None = None) -> Path | None:
    """Write ``out_dir/report.html`` for the job whose ``report`` (default: the folder's
    sweep.json or report.json) is given; returns its path, or None when the job's outputs
    are incomplete or its spec asked for no page (``html: false``, ``--no-html``).

    ``report.html`` joins ``report["files"]``, so a report.json written after it lists it."""
    out_dir = Path(out_dir)
    target = out_dir / HTML_FILE
    report = report if report is not None else _load_report(out_dir)
    if report is None or not (report.get("job") or {}).get("spec", {}).get("html", True):
        return None
    if missing_outputs(out_dir, report):
        target.unlink(missing_ok=True)  # never a page for a job that is not all there
        return None
    atomic_write_text(target, render_report(out_dir, report))
    files = report.get("files")
    if isinstance(files, list) and HTML_FILE not in files:
        report["files"] = sorted([*files, HTML_FILE])  # a new list: the caller's may be shared
    return target


def render_report(out_dir: Path, report: dict[str, Any]) -> str:
    from nfit.html import views

    kind = job_kind(out_dir, report)
    fit = report
    if kind == "sweep":
        # the chosen member's outputs are the folder's fit outputs
        try:
            fit = json.loads((out_dir / "report.json").read_text())
        except (OSError, ValueError):
            fit = {"kind": report.get("kind"), "signal": report.get("signal"), "files": report.get("files", [])}
    fit_kind = str(fit.get("kind", kind))
    source = (report.get("signal") or {}).get("source", "")
    title = f"{kind if kind in ('sweep', 'kernel') else fit_kind}: {Path(str(source)).name or out_dir.name}"
    sections = []
    viewers = {"image": (views.image_view, "Ground truth, reconstruction, error"),
               "ct": (views.ct_view, "Ground truth, field, baseline, error"),
               "volume": (views.volume_view, "Slices"), "mri": (views.volume_view, "Slices"),
               "sdf": (views.mesh_view, "Meshes")}
    scripts = ["report.js"]
    if kind != "kernel" and fit_kind in viewers:
        view, heading = viewers[fit_kind]
        sections.append(section(heading, view(out_dir, fit), "result"))
        if fit_kind == "sdf":
            scripts.append("mesh.js")
    sections.append(section("Metrics", _metrics(report if kind != "sweep" else fit, kind), "metrics"))
    if kind == "sweep":
        sections.append(section("Sweep", _sweep(report), "sweep"))
    if kind == "kernel":
        sections.append(section("Kernel study", _kernel(report), "kernel"))
    curves = _curves(out_dir, fit)
    if curves:
        sections.append(section("Training curves", curves, "curves"))
    sections.append(section("Figures", _figures(out_dir, report), "figures"))
    sections.append(section("Configuration", _configuration(report, fit), "config"))
    sections.append(section("Rerun", _rerun(report, kind), "rerun"))
    sections.append(section("Files", _files(out_dir, report), "files"))
    headline = _headline(report if kind != "sweep" else fit, kind)
    nav = "".join(f"<a href=\"#{a}\">{t}</a>" for a, t in (
        ("result", "result"), ("metrics", "metrics"), ("curves", "curves"), ("figures", "figures"),
        ("config", "configuration"), ("rerun", "rerun")))
    body = (f"<header><h1>{esc(title)}</h1><p class=\"sub\">{esc(out_dir.name)} · {esc(headline)}</p>"
            f"<nav>{nav}</nav></header><main>{''.join(sections)}</main>"
            f"<footer>nfit {esc((report.get('versions') or {}).get('nfit', ''))} · this page carries "
            f"everything it shows and makes no request</footer>")
    return page(title, body, scripts)


def _headline(report: dict[str, Any], kind: str) -> str:
    parts = []
    for role in ("test", "val"):
        for key, value in (report.get(role) or {}).items():
            if key != "loss" and isinstance(value, int | float):
                parts.append(f"{role} {key} {fmt(value)}{' dB' if key == 'psnr' else ''}")
        if parts:
            break
    if report.get("steps"):
        parts.append(f"{report['steps']} steps")
    if report.get("wall_time_s") is not None:
        parts.append(f"{fmt(float(report['wall_time_s']))} s")
    if report.get("device"):
        parts.append(f"{report['device']} ({report.get('precision', '')})")
    return " · ".join(parts) or kind


def _metrics(report: dict[str, Any], kind: str) -> str:
    roles = [r for r in ("train", "val", "test") if isinstance(report.get(r), dict)]
    keys: list[str] = []
    for r in roles:
        keys += [k for k in report[r] if k not in keys]
    out = ""
    if roles:
        out += table(["set", *keys], [[r, *[report[r].get(k) for k in keys]] for r in roles], "metrics")
    baseline = report.get("baseline")
    if isinstance(baseline, dict):
        out += "<h3>Classical baseline</h3>" + key_values(list(baseline.items()))
    run = [(label, report.get(key)) for label, key in (
        ("steps", "steps"), ("wall time (s)", "wall_time_s"), ("steps/s", "steps_per_s"),
        ("parameters", "parameters"), ("device", "device"), ("precision", "precision"))
        if report.get(key) is not None]
    checkpoint = report.get("checkpoint") or {}
    run += [(f"checkpoint {k.replace('_', ' ')}", v) for k, v in checkpoint.items()]
    for key in ("stopped", "ssim_on", "psnr_on", "warning", "channels"):
        if report.get(key) is not None:
            value = report[key]
            run.append((key.replace("_", " "), json.dumps(value) if isinstance(value, dict | list) else value))
    if isinstance(report.get("surface"), dict):
        run += [(f"surface {k.replace('_', ' ')}", v) for k, v in report["surface"].items()]
    if run:
        out += "<h3>Run</h3>" + key_values(run)
    return out or "<p>No metrics in the report.</p>"


def _sweep(report: dict[str, Any]) -> str:
    metric = report.get("metric", "psnr")
    rows = []
    for row in report.get("configs", []):
        rows.append(["*" if row.get("best") else "", row.get("encoding"), row.get("sigma"), row.get("seeds"),
                     row.get(f"train_{metric}"), row.get(f"val_{metric}"), row.get(f"test_{metric}")])
    chosen = report.get("chosen") or {}
    return (f"<p>Chosen on validation: <b>{esc(chosen.get('encoding'))}</b> sigma {esc(fmt(chosen.get('sigma')))}"
            f" (the test score is reported, not used to choose). The pictures above are the chosen member's.</p>"
            + table(["", "encoding", "sigma", "seeds", f"train {metric}", f"val {metric}", f"test {metric}"],
                    rows, "sortable"))


def _kernel(report: dict[str, Any]) -> str:
    rows = []
    for name, s in (report.get("encodings") or {}).items():
        pred, meas = s.get("predicted") or {}, s.get("measured") or {}
        regions = s.get("activation_regions") or {}
        rows.append([name, s.get("generalization_delta"), pred.get("test_psnr"), meas.get("test_psnr"),
                     s.get("kernel_drift"), f"{regions.get('before', '-')} / {regions.get('after', '-')}"])
    return (f"<p>{esc(report.get('kernel', ''))}; {esc(report.get('points'))} training points, "
            f"{esc(report.get('test_points'))} held out.</p>"
            + table(["encoding", "generalization delta", "test PSNR predicted", "test PSNR measured",
                     "kernel drift", "activation regions before / after"], rows, "sortable"))


def _read_curve(path: Path) -> tuple[list[str], list[dict[str, float]]]:
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            rows: list[dict[str, float]] = []
            for row in reader:
                parsed: dict[str, float] = {}
                for k, v in row.items():
                    try:
                        parsed[k] = float(v)
                    except (TypeError, ValueError):
                        continue
                rows.append(parsed)
            return list(reader.fieldnames or []), rows
    except OSError:
        return [], []


def _curves(out_dir: Path, report: dict[str, Any]) -> str:
    """The metric and the losses against steps, from curve.csv (the fit's own history)."""
    columns, rows = _read_curve(out_dir / "curve.csv")
    if not rows or "step" not in columns:
        return ""
    steps = [r.get("step", 0.0) for r in rows]
    roles = ("train_", "val_", "test_")
    names = list(dict.fromkeys(c.split("_", 1)[1] for c in columns if c.startswith(roles) and not c.endswith("_loss")))
    loss_cols = [c for c in columns if c.endswith("_loss")]
    charts = []
    for name in names:  # one chart per metric: PSNR in dB and an IoU share no axis
        lines = {c.split("_")[0]: [r.get(c) for r in rows] for c in columns
                 if c.startswith(roles) and c.split("_", 1)[1] == name}
        unit = " (dB)" if name == "psnr" else ""
        charts.append(svg_chart(steps, lines, f"{name.upper()} against steps", "step", name.upper() + unit))
    if loss_cols:
        charts.append(svg_chart(steps, {c.replace("_", " "): [r.get(c) for r in rows] for c in loss_cols},
                                "loss against steps (log scale)", "step", "loss", log=True))
    if "time" in columns and rows:
        charts.append(f"<p class=\"note\">{len(rows)} evaluations; the last at step {fmt(int(steps[-1]))}, "
                      f"{fmt(rows[-1].get('time', 0.0))} s into training. Data: curve.csv.</p>")
    return "<div class=\"charts\">" + "".join(charts) + "</div>"


def _figures(out_dir: Path, report: dict[str, Any]) -> str:
    shown = []
    for name in sorted(set(report.get("files", [])) | {"curve.png"}):
        if name in FIGURE_TITLES and (out_dir / name).is_file() and name != "fbp.png":
            shown.append(f"<figure><img class=\"fig\" src=\"{file_uri(out_dir / name)}\" alt=\"{esc(name)}\">"
                         f"<figcaption>{esc(FIGURE_TITLES[name])} ({esc(name)})</figcaption></figure>")
    return "<div class=\"figures\">" + "".join(shown) + "</div>" if shown else "<p>No figures.</p>"


def _configuration(report: dict[str, Any], fit: dict[str, Any]) -> str:
    config = report.get("config") or fit.get("config") or {}
    given = ((report.get("job") or {}).get("spec") or {}).get("options") or {}
    rows = [[k, v if not isinstance(v, list) else json.dumps(v), "given" if k in given else ""]
            for k, v in config.items() if v is not None]
    out = ("<p>Every option as the fit resolved it; <i>given</i> marks the ones its command set.</p>"
           + table(["option", "value", ""], rows, "config"))
    for key, title in (("architecture", "Architecture (the field as built)"), ("objective", "Objective"),
                       ("signal", "Signal"), ("versions", "Versions")):
        value = fit.get(key) if key != "signal" else report.get("signal")
        if value:
            out += (f"<details><summary>{esc(title)}</summary><pre>{esc(json.dumps(value, indent=2, default=str))}"
                    f"</pre></details>")
    return out


def _flag_value(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def rerun_command(spec: dict[str, Any]) -> str:
    """The nfit command line that runs ``spec`` (a JobSpec's ``to_dict``) again."""
    command = spec.get("command", "fit")
    words = ["nfit"]
    if command == "fit":
        words += [str(spec.get("kind")), str(spec.get("input"))]
    else:
        words += [command, str(spec.get("kind")), str(spec.get("input"))]
    for key, value in (spec.get("options") or {}).items():
        if value is None:
            continue
        if isinstance(value, list):
            continue  # not a flag: see the spec below (nfit run)
        words += ["--" + key.replace("_", "-"), _flag_value(value)]
    skip = {"command", "kind", "input", "options", "force", "resume", "html"}
    names = {"encodings": "--encoding", "sigmas": "--sigma"}
    for key, value in spec.items():
        if key in skip or value is None or value is False:
            continue
        flag = names.get(key, "--" + key.replace("_", "-"))
        if value is True:
            words.append(flag)
        elif not (key == "checkpoint_every" and value == 0):
            words += [flag, _flag_value(value)]
    words.append("--force")
    return shlex.join(words)


def _rerun(report: dict[str, Any], kind: str) -> str:
    spec = (report.get("job") or {}).get("spec")
    if kind == "kernel" and not spec:
        config = report.get("config") or {}
        words = ["nfit", "kernel", str(report.get("kind")), str((report.get("signal") or {}).get("source", "")),
                 "--encoding", ",".join(report.get("encodings") or {})]
        for key, value in (report.get("options") or {}).items():
            if value is not None:
                words += ["--" + key.replace("_", "-"), _flag_value(value)]
        words += ["--seed", str(config.get("seed", 0))]
        return f"<pre class=\"cmd\" data-copy>{esc(shlex.join(words))}</pre>"
    if not spec:
        return "<p>The report does not record its job.</p>"
    has_lists = any(isinstance(v, list) for v in (spec.get("options") or {}).values())
    spec_json = json.dumps(spec, indent=2)
    return (f"<pre class=\"cmd\" data-copy>{esc(rerun_command(spec))}</pre>"
            f"<button type=\"button\" data-copy-button>copy</button>"
            f"<p class=\"note\">--force replaces this folder's results; give another --out to keep them."
            f"{' Options that are lists have no flag: run the spec below.' if has_lists else ''}</p>"
            f"<details><summary>the job's spec (save as job.json, then <code>nfit run job.json</code>; "
            f"spec hash {esc((report.get('job') or {}).get('hash', ''))})</summary>"
            f"<pre>{esc(spec_json)}</pre></details>")


def _files(out_dir: Path, report: dict[str, Any]) -> str:
    items = []
    for name in sorted(set(report.get("files", [])) | {HTML_FILE}):
        path = out_dir / name
        size = path.stat().st_size if path.is_file() else None
        items.append(f"<li><a href=\"{esc(name)}\">{esc(name)}</a> {esc(fmt(size) + ' bytes' if size else '')}</li>")
    return f"<ul class=\"files\">{''.join(items)}</ul>"
