"""The dashboard and the report as a person sees them: headless Chromium (Debian's `chromium`, driven by
Playwright) on `nasopt dashboard` serving a study with sampled and gradient trials and their pictures.
A trial page shows the architecture large (in the trial's note), stays the width of the screen and
lists each artifact once; the report draws pictures at their own size (a wide one scrolls).

Skipped only where Chromium is absent (`apt-get install -y chromium`; `.ci/run` installs it). With
NASOPT_SCREENSHOTS=1 the screenshots also go to docs/ (the README shows them).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import nasopt
from nasopt.artifacts._inherit import artifact_store_for
from nasopt.artifacts._pictures import draw_missing
from nasopt.cli.main import main
from nasopt.data import load_task
from nasopt.oneshot import DARTS
from nasopt.search_spaces.darts_cell import DartsCellSpace
from nasopt.search_spaces.nano import NanoSpace
from nasopt.space import random_arch

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                                 "(apt-get install -y chromium; .ci/run installs it)"),
              pytest.mark.usefixtures("one_thread")]

ROOT = Path(__file__).parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
DOCS = ROOT / "docs" if os.environ.get("NASOPT_SCREENSHOTS") else None


class Untold(optuna.samplers.RandomSampler):
    """Takes the study's limits and ignores them (`use_limits`, see nasopt.samplers.with_limits): it proposes
    networks over the limit, whose rejection before training is what is tested."""

    def use_limits(self, limits: object) -> None:
        pass


@pytest.fixture(scope="module")
def mixed_study(tmp_path_factory):
    """Six sampled trials (two over the params limit) and one DARTS trial, with architecture pictures."""
    path = tmp_path_factory.mktemp("browser")
    url = f"sqlite:///{path / 'nasopt.db'}"
    space = NanoSpace(C=8)
    common = dict(name="mixed", space=space, dataset="digits", constraints={"params": 2000},
                  objectives={"accuracy": "maximize", "params": "minimize"},
                  train=nasopt.TrainConfig(epochs=2, batch_size=64), measure=nasopt.MeasureConfig(warmup=1, repeats=3))
    nasopt.run(nasopt.StudySpec(**common, n_trials=6, sampler=Untold(seed=0)),
               storage=url, progress=False)
    nasopt.run(nasopt.StudySpec(**common, strategy=DARTS(epochs=2, batch_size=32)), storage=url, progress=False)
    study = optuna.load_study(study_name="mixed", storage=url)
    draw_missing(study, artifact_store_for(url), space, task=load_task("digits", seed=0))  # where runs drew none
    return path, url, study


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def dashboard(mixed_study):
    path, url, _ = mixed_study
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "nasopt.cli", "dashboard", "--storage", url, "--port", str(port)],
                            cwd=path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90  # imports torch (and botorch when installed): slow on a busy machine
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{base}/api/studies", timeout=2) as response:
                    json.load(response)
                break
            except OSError:
                time.sleep(0.3)
        else:
            pytest.fail(f"the dashboard did not answer; exit code {proc.poll()}: {proc.stderr.read()[-2000:]}")
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield chromium
        chromium.close()


def _shot(page, tmp_path: Path, name: str, **options) -> None:
    page.screenshot(path=str(tmp_path / name), **options)
    if DOCS is not None:
        DOCS.mkdir(exist_ok=True)
        shutil.copy(tmp_path / name, DOCS / name)


def _picture_loaded(page) -> bool:
    return page.evaluate("""() => [...document.querySelectorAll('img[src^="/artifacts/"]')]
                             .some(img => img.complete && img.naturalWidth > 0)""")


# the architecture shown large: an image drawn at its own size (not a ~130 px thumbnail), taller than 300 px
_LARGE_PICTURE = """() => [...document.querySelectorAll('img[src^="/artifacts/"]')].some(img => img.complete
    && img.naturalWidth > 0 && Math.abs(img.getBoundingClientRect().width - img.naturalWidth) < 1
    && img.getBoundingClientRect().height > 300)"""
# the names in the trial's artifact list (each card's title)
_ARTIFACT_NAMES = """() => [...document.querySelectorAll('*')].filter(e => e.children.length === 0
    && /^trial[0-9]+_[a-z]+[.][a-z]+$/.test(e.textContent)).map(e => e.textContent)"""


def test_the_dashboard_shows_trials_pareto_front_and_pictures(mixed_study, dashboard, browser, tmp_path):
    _, _, study = mixed_study
    trials = study.get_trials()
    gradient = [t for t in trials if isinstance(t.user_attrs.get("strategy"), dict)]
    infeasible = [t for t in trials if any(v > 0 for v in t.constraints.values())]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(gradient) == 1 and len(trials) == 7 and infeasible and complete  # what the pages must show
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    # the study page: the Pareto-front plot, drawn with a point per complete trial
    page.goto(f"{dashboard}/dashboard/studies/{study._study_id}")
    page.get_by_text("Pareto Front", exact=True).wait_for(timeout=30_000)
    page.wait_for_selector("#graph-pareto-front .main-svg", timeout=30_000)
    page.wait_for_function("document.querySelectorAll('#graph-pareto-front path.point').length > 0", timeout=30_000)
    assert page.locator("#graph-pareto-front path.point").count() == len(complete)
    _shot(page, tmp_path, "dashboard.png")

    # the trial list: every trial, sampled and gradient; a trial's page shows its architecture picture
    page.goto(f"{dashboard}/dashboard/studies/{study._study_id}/trials")
    page.get_by_text(f"{len(trials)} Trials").wait_for(timeout=30_000)
    for t in trials:
        assert page.get_by_text(f"Trial {t.number}", exact=True).count() >= 1
    for t in (gradient[0], complete[0], infeasible[0]):
        page.get_by_text(f"Trial {t.number}", exact=True).first.click()
        page.get_by_text(f"trial{t.number}_architecture.svg").first.wait_for(timeout=30_000)
        page.wait_for_function("""() => [...document.querySelectorAll('img[src^="/artifacts/"]')]
                                  .some(img => img.complete && img.naturalWidth > 0)""", timeout=30_000)
        assert _picture_loaded(page)
        page.wait_for_function(_LARGE_PICTURE, timeout=30_000)  # the note's picture, readable on the page
        # the page is as wide as the screen: no user attr (alphas, curve, latency) is one endless line
        assert page.evaluate("document.documentElement.scrollWidth") <= 1400
        names = page.evaluate(_ARTIFACT_NAMES)
        assert f"trial{t.number}_architecture.svg" in names and len(names) == len(set(names)), names
        if t is gradient[0]:
            assert names.count(f"trial{t.number}_checkpoint.pt") == 1 and page.get_by_text("alphas.pos0.op").count()
        if t is infeasible[0]:  # feasibility, which the dashboard would not show from Optuna 5's constraints
            assert page.get_by_text("feasible no: params=", exact=False).count() >= 1
    page.get_by_text(f"Trial {gradient[0].number}", exact=True).first.click()
    page.wait_for_function(_LARGE_PICTURE, timeout=30_000)
    page.wait_for_timeout(500)
    _shot(page, tmp_path, "dashboard_trial.png")
    # the picture itself, as the dashboard serves it (an SVG, drawn without any plotting library)
    src = page.locator('img[src^="/artifacts/"]').first.get_attribute("src")
    with urllib.request.urlopen(dashboard + src, timeout=10) as response:
        assert response.headers["Content-Type"] == "image/svg+xml"
        assert f"trial {gradient[0].number}: {gradient[0].user_attrs['arch']}" in response.read().decode()
    picture = browser.new_page(viewport={"width": 900, "height": 700}, device_scale_factor=1.5)
    picture.set_content(f'<body style="margin:0"><img id="p" src="{dashboard + src}"></body>')
    picture.wait_for_function("document.getElementById('p').naturalWidth > 0", timeout=30_000)
    picture.locator("#p").screenshot(path=str(tmp_path / "dashboard_picture.png"))
    if DOCS is not None:
        shutil.copy(tmp_path / "dashboard_picture.png", DOCS / "dashboard_picture.png")
    assert not errors, errors


def test_the_report_renders_offline(mixed_study, browser, tmp_path):
    _, url, _ = mixed_study
    out = tmp_path / "report.html"
    assert main(["report", "mixed", "--storage", url, "-o", str(out)]) == 0
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    requests: list[str] = []

    def offline(route):  # anything but the file itself would need a network
        requests.append(route.request.url)
        route.continue_() if route.request.url.startswith("file:") else route.abort()

    page.route("**/*", offline)
    page.goto(out.as_uri())
    expected = out.read_text().count('class="plotly-graph-div"')
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {expected}",
                           timeout=60_000)
    assert expected >= 12 and page.locator(".js-plotly-plot").count() == expected
    assert page.locator("figure svg").count() >= 1  # the Pareto set's architecture pictures
    assert requests == [out.as_uri()] and not errors, (requests, errors)
    _shot(page, tmp_path, "report.png")
    page.locator("#pareto").scroll_into_view_if_needed()
    _shot(page, tmp_path, "report_pareto.png")


def test_report_pictures_keep_their_size_and_scroll(mixed_study, browser, tmp_path):
    """A DARTS cell pair is wider than the page: drawn at its own size inside a figure that scrolls."""
    _, url, _ = mixed_study
    space = DartsCellSpace()
    study = optuna.create_study(study_name="cells", storage=url, directions=["maximize", "minimize"])
    for seed in range(3):
        study.add_trial(optuna.trial.create_trial(params=random_arch(space, seed), distributions=space.distributions(),
                                                  values=[0.5 + 0.1 * seed, 1000.0 * (1 + seed)],
                                                  user_attrs={"arch": space.describe(random_arch(space, seed))}))
    out = tmp_path / "cells.html"
    assert main(["report", "cells", "--storage", url, "-o", str(out)]) == 0
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    page.goto(out.as_uri())
    page.locator("#pareto-set figure svg").first.wait_for(timeout=30_000)
    figures = page.evaluate("""() => [...document.querySelectorAll('#pareto-set figure')].map(f => {
        const svg = f.querySelector('svg');
        return {drawn: svg.getBoundingClientRect().width, own: Number(svg.getAttribute('width')),
                box: f.clientWidth, scroll: f.scrollWidth, right: f.getBoundingClientRect().right}; })""")
    assert len(figures) == 3
    for f in figures:
        assert abs(f["drawn"] - f["own"]) < 1, f  # not shrunk: the text stays at its size
        assert f["right"] <= 1300 and (f["scroll"] > f["box"]) == (f["own"] > f["box"]), f  # wider: it scrolls
    assert any(f["own"] > f["box"] for f in figures)  # the case this test is for
    assert page.evaluate("document.documentElement.scrollWidth") <= 1300  # the page itself does not
    page.locator("#pareto-set").scroll_into_view_if_needed()
    _shot(page, tmp_path, "report_pictures.png")
