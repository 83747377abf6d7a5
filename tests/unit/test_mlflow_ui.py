"""Links into MLflow's UI, the study's saved view, and the order of a run's metrics."""

from __future__ import annotations

import json
import urllib.parse

import pytest

from tune import mlflow_ui

pytestmark = pytest.mark.unit

SEARCHED = ("lr", "lora_rank", "max_length", "batch_size")


def _query(url: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(url.split("#", 1)[1].split("?", 1)[1]))


def test_every_link_opens_the_model_training_view():
    uri = "http://10.0.0.5:5000/"
    for url in (mlflow_ui.run_page(uri, "7", "abc"), mlflow_ui.study_page(uri, "7", "smoke"),
                mlflow_ui.compare_page(uri, "7", ["a", "b"])):
        assert url.startswith("http://10.0.0.5:5000/#/"), url
        assert _query(url)["workflowType"] == "machine_learning", url


def test_the_compare_link_names_the_runs_and_the_experiment_as_json_lists():
    query = _query(mlflow_ui.compare_page("http://h:1", "3", ["r1", "r2", "r3"]))
    assert json.loads(query["runs"]) == ["r1", "r2", "r3"]
    assert json.loads(query["experiments"]) == ["3"]


def test_the_study_link_opens_the_study_saved_view():
    url = mlflow_ui.study_page("http://h:1", "3", "show3")
    assert url.split("?")[0] == "http://h:1/#/experiments/3/runs"
    assert _query(url)["viewStateShareKey"] == mlflow_ui.study_view_id("show3")


def test_the_saved_view_shows_the_study_trials_best_first_with_the_searched_columns():
    state = mlflow_ui.study_view_state("show3", SEARCHED)
    assert state["searchFilter"] == ("tags.study = 'show3' and tags.run_type = 'trial' "
                                     "and tags.state != 'lost'")
    assert state["orderByKey"] == "metrics.`val/f1_best`" and state["orderByAsc"] is False
    assert state["selectedColumns"][:2] == ["metrics.`val/f1`", "metrics.`val/f1_best`"]
    assert {f"params.`{p}`" for p in SEARCHED} <= set(state["selectedColumns"])


def test_the_best_metric_is_the_one_the_mirror_logs():
    from tune.mirror import BEST_METRIC

    assert mlflow_ui.BEST_METRIC == BEST_METRIC


def test_a_local_store_gets_the_command_that_serves_its_ui():
    lines = mlflow_ui.describe_links("sqlite:////x/mlflow.db", [("trials", "http://u")])
    assert lines[0] == ("  MLflow UI: run `mlflow ui --backend-store-uri sqlite:////x/mlflow.db "
                        "--host 127.0.0.1 --port 5000`, then open:")
    assert lines[1] == "  trials: http://u"
    assert mlflow_ui.describe_links("http://h:1", [("trials", "http://u")]) == [
        "  trials: http://u"]


def test_the_objective_is_logged_first():
    from tune.mirror import BEST_METRIC, _metrics

    keys = [m.key for m in _metrics({"train/loss": 1, "val/f1": 0.5, BEST_METRIC: 0.5,
                                     "val/accuracy": 0.9}, step=1, timestamp=0)]
    assert keys == ["val/f1", BEST_METRIC, "train/loss", "val/accuracy"]
