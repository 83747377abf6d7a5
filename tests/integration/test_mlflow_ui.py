"""What a user sees: the links the driver, `analysis.compare` and `analysis.best` print, opened
in a real headless chromium against a real MLflow server holding a finished `--smoke` study.

Assertions are on the DOM the browser rendered: the model-training view (not the GenAI one),
the study's trial runs as rows, the searched parameters and `val/f1` as visible columns (the
runs table renders only the columns it shows), and `val/f1` on the compare page's
parallel-coordinates plot.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, cli_env, run_study_cli

SEARCHED = ("lr", "lora_rank", "max_length", "batch_size")
EXPERIMENT = "tests-ui"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [pytest.mark.integration, pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")]


def chromium_dom(url: str, profile: Path, timeout: float = 120) -> str:
    """The DOM a fresh headless chromium renders for `url` (a new profile: a first visit)."""
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--window-size=1600,1000",
         "--virtual-time-budget=20000", "--dump-dom", url],
        capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def links(text: str) -> dict[str, str]:
    """`label: URL` lines of a command's output."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^\s*([a-z ]+):\s+(http://\S+)$", text,
                                                         re.MULTILINE)}


@pytest.fixture(scope="module")
def smoke(tiny_model_dir, mlflow_server, tmp_path_factory):
    """The `--smoke` study (tiny model) mirrored into the server, then compared and evaluated."""
    work = tmp_path_factory.mktemp("ui-study")
    proc = run_study_cli("--smoke", "--model", tiny_model_dir, "--mlflow-uri",
                         mlflow_server.uri, "--experiment", EXPERIMENT, "--storage-path",
                         work / "runs", cwd=work, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    outputs = {"driver": proc.stdout}
    for module, extra in (("analysis.compare", ["smoke", "--out", work / "compare"]),
                          ("analysis.best", ["smoke", "--export-dir", work / "champion"])):
        done = subprocess.run(
            [sys.executable, "-m", module, *map(str, extra), "--mlflow-uri", mlflow_server.uri,
             "--experiment", EXPERIMENT], env=cli_env(), cwd=REPO_ROOT, capture_output=True,
            text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        outputs[module] = done.stdout
    # Every trial, run to the end or stopped early by ASHA, has its run in the views.
    trials = re.findall(r"trial (\S+) started:", proc.stdout)
    assert len(trials) == 3, proc.stdout
    return {"outputs": outputs, "trials": trials, "work": work}


def _assert_model_training_view(dom: str) -> None:
    # The GenAI view's sidebar lists "Evaluation runs" and its breadcrumb "Evaluations";
    # the model-training view's does neither.
    assert "Evaluation runs" not in dom and ">Evaluations<" not in dom
    assert "Model training" in dom


def test_the_printed_trials_link_shows_every_trial_with_its_parameters_and_val_f1(smoke,
                                                                                  tmp_path):
    printed = links(smoke["outputs"]["driver"])
    assert set(printed) == {"trials", "compare", "best trial"}, smoke["outputs"]["driver"]
    assert links(smoke["outputs"]["analysis.compare"])["trials"] == printed["trials"]
    assert links(smoke["outputs"]["analysis.best"])["trials"] == printed["trials"]
    dom = chromium_dom(printed["trials"], tmp_path / "profile")
    _assert_model_training_view(dom)
    for trial in smoke["trials"]:
        assert f"trial-{trial}" in dom, trial
    # ag-grid renders the columns it shows, each header and cell with its column id.
    for param in SEARCHED:
        assert f'col-id="params.`{param}`"' in dom, param
    assert 'col-id="metrics.`val/f1`"' in dom
    assert "You're viewing a shared view" in dom  # the study's saved view, not a stale one


def test_the_printed_compare_link_plots_val_f1_against_the_searched_parameters(smoke,
                                                                                tmp_path):
    url = links(smoke["outputs"]["driver"])["compare"]
    dom = chromium_dom(url, tmp_path / "profile")
    _assert_model_training_view(dom)
    assert "Comparing 3 Runs" in dom
    for trial in smoke["trials"]:
        assert f"trial-{trial}" in dom, trial
    axes = re.findall(r'class="axis-title"[^>]*data-unformatted="([^"]+)"', dom)
    assert "val/f1" in axes and "train/loss" not in axes, axes
    assert set(axes) & set(SEARCHED), axes


def test_the_printed_run_links_open_in_the_model_training_view(smoke, tmp_path):
    best_trial = links(smoke["outputs"]["driver"])["best trial"]
    dom = chromium_dom(best_trial, tmp_path / "trial")
    _assert_model_training_view(dom)
    best = re.search(r"best trial (\S+):", smoke["outputs"]["driver"]).group(1)
    assert f"trial-{best}" in dom and "lora_rank" in dom
    evaluation = links(smoke["outputs"]["analysis.best"])["evaluation"]
    dom = chromium_dom(evaluation, tmp_path / "evaluation")
    _assert_model_training_view(dom)
    assert "smoke-best" in dom and "test/f1" in dom
