"""report.html beside every report.json and a batch's index.html: written for complete jobs
only, off with --no-html, and opened in a real browser (headless Chromium) the way a person
would check them: every picture loads, the split slider moves the split, the 3D viewer draws,
no console error, no request outside the page's folder.

Set NFIT_SCREENSHOTS=DIR to keep a screenshot of each page."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from nfit.api import run
from nfit.cli import app
from nfit.formats.images import read_image, write_image
from nfit.html import write_html_report
from nfit.spec import FitSpec, KernelSpec, SweepSpec

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TINY = {"width": 32, "depth": 2, "features": 32, "lr": 1e-2, "eval_every": 10, "steps": 40}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NFIT_TEST_THREADS": "1"}


def _small_image(source: Path, dest: Path, width: int) -> Path:
    from PIL import Image

    with Image.open(source) as img:
        img.convert("RGB").resize((width, width * img.height // img.width), Image.LANCZOS).save(dest)
    return dest


def _waves(dest: Path, i: int = 0) -> Path:
    y, x = np.mgrid[0:48, 0:64] / 48.0
    img = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * (i + 1) * x), 0.5 + 0.4 * np.cos(3 * np.pi * y),
                    0.5 + 0.3 * np.sin(2 * np.pi * (x + y))], axis=-1)
    write_image(dest, img)
    return dest


def _volume(dest: Path, step: int) -> Path:
    """The shared MNI brain, strided down (or smooth blobs where the data is absent)."""
    if (SHARED / "volumes" / "mni152-t1-96.npy").is_file():
        data = np.load(SHARED / "volumes" / "mni152-t1-96.npy")[::step, ::step, ::step]
    else:
        z, y, x = np.mgrid[0:32, 0:32, 0:32] / 32.0
        data = (255 * np.exp(-((x - .5) ** 2 + (y - .45) ** 2 + (z - .5) ** 2) / 0.05)).astype(np.uint8)
    np.save(dest, np.ascontiguousarray(data))
    return dest


def _mesh(dest: Path) -> Path:
    if (SHARED / "meshes" / "spot.obj").is_file():
        return SHARED / "meshes" / "spot.obj"
    import trimesh

    trimesh.creation.torus(0.6, 0.25).export(dest)
    return dest


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One tiny job of each kind, each with its report.html."""
    from nfit.phantoms import perturbed_shepp_logan

    base = tmp_path_factory.mktemp("html")
    kodak = ROOT / "samples" / "kodim23.png"
    image = _small_image(kodak, base / "kodim23-small.png", 128)
    phantom = base / "shepp.png"
    write_image(phantom, perturbed_shepp_logan(1, 64, seed=0)[0], 16)
    out = {}
    out["image"] = Path(run(FitSpec(kind="image", input=str(image), options={**TINY, "split": "paper"},
                                    out=str(base / "image")))["out"])
    out["volume"] = Path(run(FitSpec(kind="volume", input=str(_volume(base / "brain.npy", 2)),
                                     options={**TINY, "steps": 150, "sigma": 3.0, "batch": "4096"},
                                     out=str(base / "volume")))["out"])
    out["mesh"] = Path(run(FitSpec(kind="sdf", input=str(_mesh(base / "torus.obj")), options={
        **TINY, "steps": 300, "lr": 5e-3, "sigma": 1.0, "batch": "4096", "resolution": 48, "pool": 20000,
        "eval_points": 2000, "metric_points": 5000}, out=str(base / "mesh")))["out"])
    out["ct"] = Path(run(FitSpec(kind="ct", input=str(phantom), out=str(base / "ct"),
                                 options={**TINY, "steps": 200, "views": 20, "sigma": 3.0}))["out"])
    out["mri"] = Path(run(FitSpec(kind="mri", input=str(_volume(base / "brain3.npy", 3)),
                                  options={**TINY, "sigma": 3.0}, out=str(base / "mri")))["out"])
    out["sweep"] = Path(run(SweepSpec(kind="image", input=str(image), options={**TINY, "steps": 30},
                                      encodings="gauss,posenc", sigmas="3,10", out=str(base / "sweep")))["out"])
    out["kernel"] = Path(run(KernelSpec(kind="image", input=str(image), encodings="basic,gauss", points=128,
                                        test_points=64, steps=20, out=str(base / "kernel")))["out"])
    return out


@pytest.fixture(scope="module")
def batch_dir(tmp_path_factory) -> Path:
    """The four shared Kodak images (small copies) x the paper's four encodings, and a broken file."""
    base = tmp_path_factory.mktemp("batch")
    signals = base / "signals"
    signals.mkdir()
    kodak = sorted((SHARED / "images").glob("kodim*.png"))
    if kodak:
        paths = [_small_image(p, signals / p.name, 64) for p in kodak]
    else:
        paths = [_waves(signals / f"wave{i}.png", i) for i in range(2)]
    broken = signals / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    out = base / "table1"
    done = subprocess.run([sys.executable, "-m", "nfit", "batch", *map(str, paths), str(broken),
                           "--encoding", "none,basic,posenc,gauss", "--sigma", "10", "--steps", "60", "--lr", "1e-2",
                           "--width", "32", "--depth", "2", "--features", "32", "--eval-every", "10",
                           "--out", str(out), "--quiet"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 1, done.stderr  # the broken file's jobs fail; the rest finish
    return out


# ------------------------------------------------------------------------------- the files


@pytest.mark.parametrize("kind", ["image", "volume", "mesh", "ct", "mri", "sweep", "kernel"])
def test_every_job_writes_a_self_contained_page(runs, kind):
    folder = runs[kind]
    page = (folder / "report.html").read_text()
    marker = "sweep.json" if kind == "sweep" else "report.json"
    assert "report.html" in json.loads((folder / marker).read_text())["files"]
    # nothing is fetched: pictures are data URIs, no script or style comes from elsewhere
    for needle in ("src=\"http", "src=\"//", "href=\"http", "url(http", "<link ", "@import", "src=\"/"):
        assert needle not in page, needle
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert "nfit " in page and "Rerun" in page


def test_the_rerun_command_gives_the_same_fit(runs, tmp_path):
    report = json.loads((runs["image"] / "report.json").read_text())
    page = (runs["image"] / "report.html").read_text()
    line = page.split("<pre class=\"cmd\" data-copy>")[1].split("</pre>")[0]
    import html

    words = shlex.split(html.unescape(line))
    assert words[:2] == ["nfit", "image"] and "--force" in words
    words[words.index("--out") + 1] = str(tmp_path / "again")
    result = CliRunner().invoke(app, [*words[1:], "--json"])
    assert result.exit_code == 0, result.output
    again = json.loads(result.stdout)
    assert again["test"]["psnr"] == pytest.approx(report["test"]["psnr"], abs=1e-6)
    assert again["config"] == report["config"]


def test_no_html_writes_no_page(tiny_rgb, tmp_path):
    result = CliRunner().invoke(app, ["image", str(tiny_rgb), "--steps", "5", "--width", "16", "--features", "8",
                                      "--no-html", "--out", str(tmp_path / "o"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "report.json").is_file() and not (tmp_path / "o" / "report.html").exists()
    assert "report.html" not in json.loads((tmp_path / "o" / "report.json").read_text())["files"]


def test_no_page_for_a_job_whose_outputs_are_missing(runs, tmp_path):
    folder = tmp_path / "partial"
    shutil.copytree(runs["image"], folder)
    assert write_html_report(folder) == folder / "report.html"  # rebuilt from the folder alone
    (folder / "recon.png").unlink()
    assert write_html_report(folder) is None
    assert not (folder / "report.html").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_html_report(empty) is None and not (empty / "report.html").exists()


def test_batch_index_lists_every_job_and_the_table(batch_dir):
    page = (batch_dir / "index.html").read_text()
    rows = (batch_dir / "batch.csv").read_text().splitlines()[1:]
    assert page.count("<tr data-status=") == len(rows)
    assert page.count("data-status=\"failed\"") == 4  # the broken file x four encodings
    assert "broken.png" in page and "src=\"http" not in page
    configs = {row.split(",")[2] for row in rows}
    assert len(configs) == 4 and {c.split("-")[0] for c in configs} == {"none", "basic", "posenc", "gauss"}
    for config in configs:
        assert f"<td>{config}</td>" in page
    before = (batch_dir / "index.html").stat().st_mtime_ns
    (batch_dir / "index.html").unlink()
    result = CliRunner().invoke(app, ["table", str(batch_dir)])
    assert result.exit_code == 0, result.output
    assert (batch_dir / "index.html").stat().st_mtime_ns > before


def test_table_on_a_folder_that_is_not_a_batch_says_so_in_one_line(tmp_path):
    result = CliRunner().invoke(app, ["table", str(tmp_path)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "not a batch directory" in lines[0]


# ------------------------------------------------------------------------------- in a browser


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    executable = _chromium()
    if executable is None:
        pytest.skip("no Chromium to run the pages in: install Debian's chromium package (apt-get install chromium)")
    with sync_playwright() as pw:
        # SwiftShader gives WebGL without a GPU, as on a headless CI machine
        chromium = pw.chromium.launch(executable_path=executable, headless=True, args=[
            "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist"])
        yield chromium
        chromium.close()


def _open(browser, path: Path):
    """The page at ``path`` loaded, with its console errors and its requests outside the folder."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    outside: list[str] = []
    folder = path.parent.resolve().as_uri() + "/"
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: outside.append(r.url)
            if not (r.url.startswith("data:") or r.url.startswith(folder)) else None)
    page.goto(path.resolve().as_uri())
    page.wait_for_load_state("load")
    page.wait_for_function("Array.from(document.images).every(i => i.complete)")
    return page, errors, outside


def _check_page(page) -> None:
    images = page.evaluate("Array.from(document.images).map(i => [i.alt, i.naturalWidth, i.naturalHeight])")
    assert images, "the page shows no picture"
    assert all(w > 0 and h > 0 for _, w, h in images), [i for i in images if i[1] == 0]
    if page.query_selector("[data-split]"):
        before = page.eval_on_selector("[data-handle]", "h => h.style.left")
        page.eval_on_selector("[data-split]", "s => { s.value = 20; s.dispatchEvent(new Event('input')); }")
        assert before == "50%"
        assert page.eval_on_selector("[data-handle]", "h => h.style.left") == "20%"
        assert "80%" in page.eval_on_selector("img[data-side=left]", "i => i.style.clipPath")
        # dragging on the picture moves it too
        box = page.query_selector("[data-compare]").bounding_box()
        page.mouse.click(box["x"] + box["width"] * 0.75, box["y"] + box["height"] / 2)
        assert page.eval_on_selector("[data-handle]", "h => parseFloat(h.style.left)") == pytest.approx(75, abs=2)
        page.click("button[data-zoom='2']")
        width = page.eval_on_selector("img[data-side=right]", "i => [i.getBoundingClientRect().width, i.naturalWidth]")
        assert width[0] == pytest.approx(2 * width[1], abs=1)
        page.click("button[data-zoom='0']")
    if page.query_selector("[data-z]"):
        src = page.eval_on_selector("img[data-side=right]", "i => i.src")
        page.eval_on_selector("[data-z]", "s => { s.value = 1; s.dispatchEvent(new Event('input')); }")
        assert page.eval_on_selector("img[data-side=right]", "i => i.src") != src
        page.eval_on_selector("[data-z]", "s => { s.value = Math.floor(s.max / 2); "
                                          "s.dispatchEvent(new Event('input')); }")


def _drawn_fraction(page, selector: str) -> float:
    """The fraction of a canvas's pixels that differ from its background."""
    return page.eval_on_selector(selector, """c => {
        const t = document.createElement('canvas'); t.width = c.width; t.height = c.height;
        const g = t.getContext('2d'); g.drawImage(c, 0, 0);
        const d = g.getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 0; i < d.length; i += 4)
            if (Math.abs(d[i] - 244) + Math.abs(d[i+1] - 245) + Math.abs(d[i+2] - 247) > 24) n++;
        return n / (c.width * c.height); }""")


def _screenshot(page, name: str) -> None:
    folder = os.environ.get("NFIT_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


@pytest.mark.parametrize("kind", ["image", "volume", "mesh", "ct", "mri", "sweep", "kernel"])
def test_report_in_a_browser(browser, runs, kind):
    page, errors, outside = _open(browser, runs[kind] / "report.html")
    try:
        _check_page(page)
        if kind == "mesh":
            canvases = page.query_selector_all("canvas[data-mesh]")
            assert len(canvases) == 2, "the reconstruction and the ground truth"
            for role in ("recon", "truth"):
                assert _drawn_fraction(page, f"canvas[data-mesh={role}]") > 0.02, role
            box = canvases[0].bounding_box()
            before = page.eval_on_selector("canvas[data-mesh=truth]", "c => c.toDataURL()")
            page.mouse.move(box["x"] + 100, box["y"] + 100)
            page.mouse.down()
            page.mouse.move(box["x"] + 180, box["y"] + 130)
            page.mouse.up()
            assert page.eval_on_selector("canvas[data-mesh=truth]", "c => c.toDataURL()") != before, \
                "turning one view turns the other"
        _screenshot(page, kind)
        assert errors == [], errors
        assert outside == [], outside
    finally:
        page.close()


def test_batch_index_in_a_browser(browser, batch_dir):
    page, errors, outside = _open(browser, batch_dir / "index.html")
    try:
        _check_page(page)
        rows = page.query_selector_all("#jobs tbody tr")
        assert len(rows) == len((batch_dir / "batch.csv").read_text().splitlines()) - 1
        page.fill("[data-filter] input[type=search]", "gauss")
        shown = page.eval_on_selector_all("#jobs tbody tr:not([hidden])", "rs => rs.map(r => r.cells[3].textContent)")
        assert shown and all("gauss" in c for c in shown)
        page.fill("[data-filter] input[type=search]", "")
        page.select_option("[data-filter] select", "failed")
        failed = page.eval_on_selector_all("#jobs tbody tr:not([hidden])", "rs => rs.map(r => r.textContent)")
        assert len(failed) == 4 and all("broken.png" in t for t in failed)
        page.select_option("[data-filter] select", "")
        headers = page.eval_on_selector_all("#jobs thead th", "hs => hs.map(h => h.textContent)")
        col = headers.index("test psnr")
        page.click(f"#jobs thead th:nth-child({col + 1})")
        page.click(f"#jobs thead th:nth-child({col + 1})")  # descending: the best first
        values = page.eval_on_selector_all("#jobs tbody tr", f"rs => rs.map(r => r.cells[{col}].dataset.v)")
        numbers = [float(v) for v in values if v is not None]
        assert numbers == sorted(numbers, reverse=True) and len(numbers) == len(values) - 4
        # a thumbnail opens the job's report, which lies in the batch's folder
        link = page.eval_on_selector("#jobs tbody tr td.thumb a", "a => a.getAttribute('href')")
        assert (batch_dir / link).is_file() and not link.startswith(("/", ".."))
        _screenshot(page, "batch-index")
        assert errors == [], errors
        assert outside == [], outside
    finally:
        page.close()


def test_image_report_shows_the_fit_at_full_resolution(runs):
    """The reconstruction on the page is the recon.png the fit wrote, pixel for pixel (8-bit)."""
    import base64
    import io

    from PIL import Image

    page = (runs["image"] / "report.html").read_text()
    data = json.loads(page.split("<script type=\"application/json\" data-slices>")[1].split("</script>")[0])
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(data["roles"]["recon"][0].split(",", 1)[1]))))
    recon, _ = read_image(runs["image"] / "recon.png")
    assert shown.shape == recon.shape
    assert np.abs(shown / 255.0 - recon).max() <= 0.5 / 255 + 1e-6
