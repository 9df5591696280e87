"""`aide-ray report RUN`: one self-contained HTML page; checked as HTML, and (slow) in headless Chromium."""

from __future__ import annotations

import base64
import re
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from aide_ray.cli.main import main
from aide_ray.eval.figures import overlay_figure
from aide_ray.eval.run_report import find_eval_dirs, is_run_folder, write_run_report
from aide_ray.runs.folder import CONFIG_FILE, HISTORY_FILE, REPORT_FILE, SAMPLES_FILE, SCORES_FILE

CHROMIUM = Path("/usr/bin/chromium")
CONFIG_TEXT = "method: aide\nepochs: 4\nmodel:\n  base_width: 8\nrun:\n  name: <demo & co>\n"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _fake_eval(folder: Path, disk) -> Path:
    """What `aide-ray evaluate --out` leaves: summary.csv, per_case.csv, index.md and one overlay."""
    folder.mkdir(parents=True)
    pd.DataFrame({"mean": [0.81, 3.2], "std": [0.05, float("nan")], "n": [4, 3], "n_excluded": [0, 1]},
                 index=pd.Index(["dice", "hd95"], name="metric")).to_csv(folder / "summary.csv")
    pd.DataFrame({"case_id": ["c1", "c2"], "dice": [0.8, 0.82]}).to_csv(folder / "per_case.csv", index=False)
    (folder / "index.md").write_text("# Evaluation\n")
    ref = disk(32, 32, 16, 16, 8)
    overlay_figure(np.random.default_rng(0).normal(size=(32, 32)), ref, np.roll(ref, 2, axis=1),
                   folder / "overlay_best_c2.png", title="best: c2")
    return folder


@pytest.fixture()
def run_folder(tmp_path, epoch_metrics, train_scores, correction_samples, disk) -> Path:
    """An AIDE run folder written by hand: metrics, train scores, correction samples, config, an eval folder."""
    run = tmp_path / "runs" / "demo"
    run.mkdir(parents=True)
    epoch_metrics().to_csv(run / HISTORY_FILE, index=False)
    train_scores().to_csv(run / SCORES_FILE, index=False)
    np.savez(run / SAMPLES_FILE, **correction_samples())
    (run / CONFIG_FILE).write_text(CONFIG_TEXT)
    (run / "best_checkpoint.txt").write_text("checkpoint_2026-01-01_00-00-00.000000\n")
    _fake_eval(run / "eval", disk)
    return run


def _images(page: str) -> list[str]:
    return re.findall(r'<img[^>]*\ssrc="([^"]*)"', page)


def _assert_self_contained(page: str) -> None:
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', page), "nothing may come from the network"
    assert "<script" not in page.lower() and "<link" not in page.lower() and "@import" not in page
    for src in _images(page):
        assert src.startswith("data:image/png;base64,"), src[:80]
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_SIGNATURE)


def test_report_embeds_figures_tables_config_and_eval_links(run_folder, capsys):
    assert main(["report", str(run_folder)]) == 0
    path = run_folder / REPORT_FILE
    assert f"Report page (3 figure(s), 1 evaluation folder(s)): {path}" in capsys.readouterr().out
    page = path.read_text(encoding="utf-8")
    _assert_self_contained(page)
    assert len(_images(page)) == 4  # curves, correction grid, Dice scatter, one overlay
    for title in ("Training curves", "Label correction", "Dice scatter", "Metrics per epoch", "Evaluation"):
        assert f"<h2>{title}</h2>" in page
    assert page.count("<table") == 2  # metrics.csv and the evaluation summary
    assert "<th>val_dice</th>" in page and "<th>slices_per_s</th>" in page
    assert "0.8100 ± 0.0500" in page and "3.2000" in page  # summary as mean ± std; no ± for an undefined std
    # The config as written, escaped, in a <pre>.
    assert "<pre>method: aide\nepochs: 4" in page and "name: &lt;demo &amp; co&gt;" in page
    # Evaluation files by relative links that resolve from the page's folder.
    hrefs = re.findall(r'href="([^"]*)"', page)
    assert {"eval/index.md", "eval/per_case.csv", "eval/summary.csv", "eval/overlay_best_c2.png"} <= set(hrefs)
    assert all((path.parent / h).is_file() for h in hrefs)
    assert "Left out" not in page
    assert not [p for p in run_folder.iterdir() if p.name.startswith(".")], "no temporary file left behind"


def test_supervised_run_without_panels_or_scores_is_noted_not_an_error(tmp_path, epoch_metrics):
    run = tmp_path / "sup"
    run.mkdir()
    epoch_metrics().to_csv(run / HISTORY_FILE, index=False)
    report = write_run_report(run)
    assert report.path == run / REPORT_FILE and report.figures == ["Training curves"] and report.evals == []
    assert any(f"{SAMPLES_FILE} not found" in n for n in report.skipped)
    assert any(f"{SCORES_FILE} not found" in n for n in report.skipped)
    assert any(f"{CONFIG_FILE} not found" in n for n in report.skipped)
    page = report.path.read_text(encoding="utf-8")
    _assert_self_contained(page)
    assert "<h2>Left out</h2>" in page and 'class="note"' in page and "No evaluation folder found" in page


def test_unusable_inputs_are_noted(tmp_path, correction_samples):
    run = tmp_path / "run"
    run.mkdir()
    samples = correction_samples()
    del samples["net2"]
    np.savez(run / SAMPLES_FILE, **samples)
    (run / HISTORY_FILE).write_text("epoch,notes\n0,x\n")  # nothing to plot
    (run / SCORES_FILE).write_bytes(b"")
    report = write_run_report(run, tmp_path / "elsewhere" / "page.html")
    assert report.figures == [] and report.path.is_file()
    assert any("lacks arrays ['net2']" in n for n in report.skipped)
    assert any("metrics have no column to plot" in n for n in report.skipped)
    assert any(SCORES_FILE in n and "unusable" in n for n in report.skipped)


def test_eval_option_and_out_elsewhere_give_relative_links(tmp_path, run_folder, disk):
    other = _fake_eval(tmp_path / "reports" / "aide_vs_sup", disk)
    pd.DataFrame({"mean_a": [0.8], "mean_b": [0.7], "t": [2.5], "p": [0.04], "n": [4]},
                 index=pd.Index(["dice"], name="metric")).to_csv(other / "comparison.csv")
    out = tmp_path / "pages" / "demo.html"
    assert main(["report", str(run_folder), "--out", str(out), "--eval", str(other), "--max-samples", "1"]) == 0
    page = out.read_text(encoding="utf-8")
    _assert_self_contained(page)
    assert 'href="../reports/aide_vs_sup/comparison.csv"' in page and "Paired two-tailed t-tests" in page
    assert "eval/index.md" not in page  # only the folder asked for
    assert not (run_folder / REPORT_FILE).exists()


def test_not_a_run_folder_is_one_line_error(tmp_path, capsys, run_folder):
    (tmp_path / "empty").mkdir()
    for bad in (tmp_path / "empty", tmp_path / "missing"):
        assert main(["report", str(bad)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(bad) in err and "run folder" in err
    assert not is_run_folder(tmp_path / "empty") and is_run_folder(run_folder)
    assert main(["report", str(run_folder), "--eval", str(tmp_path / "empty")]) == 2
    assert "summary.csv" in capsys.readouterr().err
    assert find_eval_dirs(run_folder) == [run_folder / "eval"]


# --- the page in a real browser -------------------------------------------------------------------------------

_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--hide-scrollbars", "--force-device-scale-factor=1", "--enable-logging=stderr", "--v=0"]


def _chromium(page: Path, screenshot: Path, profile: Path, size: str = "1400,1400") -> list[str]:
    """Open ``page`` in headless Chromium, save a screenshot; returns the console messages it logged."""
    profile.mkdir()
    done = subprocess.run([str(CHROMIUM), *_FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
                           f"--screenshot={screenshot}", page.resolve().as_uri()],
                          check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    # Chromium logs every console message and uncaught exception of the page as "...:CONSOLE:<line>] ..."
    # (older builds "CONSOLE(<line>)"); the report has no script, so any such line is an error.
    return [line for line in done.stderr.splitlines() if re.search(r"\bCONSOLE[:(]", line)]


def _near(rgb: np.ndarray, hex_colour: str, tol: int = 12) -> np.ndarray:
    target = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    return (np.abs(rgb.astype(int) - target) <= tol).all(axis=-1)


@pytest.mark.slow
def test_report_page_in_headless_chromium(tmp_path, run_folder):
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium package (`make test` does)")
    # The detector itself: a console error on a page is seen (else a silent Chromium would pass anything).
    probe = tmp_path / "probe.html"
    probe.write_text('<!doctype html><meta charset="utf-8"><script>console.error("probe-error")</script>')
    assert any("probe-error" in line for line in _chromium(probe, tmp_path / "probe.png", tmp_path / "p0"))

    report = write_run_report(run_folder).path
    shot = tmp_path / "report.png"
    console = _chromium(report, shot, tmp_path / "p1")
    assert console == [], "console messages:\n" + "\n".join(console)
    rgb = np.asarray(Image.open(shot).convert("RGB"))
    assert rgb.shape[:2] == (1400, 1400)
    assert (rgb.min(axis=-1) < 240).mean() > 0.05, "the screenshot is (nearly) blank"
    # The training curves sit under the header, in matplotlib's first line colours (C0 blue, C1 orange); the
    # tolerance is tight enough that the correction panels' blue and amber masks do not count.
    assert _near(rgb, "#1f77b4").sum() > 100 and _near(rgb, "#ff7f0e").sum() > 50, "no curves in the screenshot"
