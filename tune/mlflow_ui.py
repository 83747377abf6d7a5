"""Links into MLflow's UI that open a study the way its user wants to see it.

MLflow 3 opens an experiment in its GenAI view unless told otherwise (a fresh browser lands
on an "Overview" of traces; a trial's page sits under "Evaluations"), and its runs table
shows a study as one collapsed parent row with no parameter or metric column. What MLflow
lets a project choose, used here:

- the URL query `workflowType=machine_learning` opens the model-training view of any page
  (runs table, run page, compare page);
- the experiment tag `mlflow.experimentKind` = `custom_model_development` says what the
  experiment holds, so the UI neither guesses nor asks;
- a saved view: an experiment tag `mlflow.sharedViewState.<id>` whose value is the view's
  JSON (name, createdAt, state), opened by `?viewStateShareKey=<id>`. Its state carries the
  search filter (the study's trials, without their parent row, so none is hidden under a
  collapsed parent), the sort (best `val/f1` first) and the visible columns (the searched
  parameters, `val/f1`, its running best and the trial's state). It also appears in the
  runs page's "Views" menu, named after the study;
- the order of a run's metrics: the compare page's parallel-coordinates plot starts with the
  first metric every compared run has, in the order the server lists them, which is the order
  they were first logged (tune.mirror logs the objective first).

What MLflow does not let a project choose (3.17): the landing page of a bare experiment URL
for a browser that has not opened MLflow before (it follows the browser's remembered GenAI /
model-training switch, GenAI by default), whether the assistant side panel is open, the order
of the column groups (metrics before parameters), the columns' widths (a saved view's
`columnWidths` is not applied), whether a study's row is expanded (a saved view drops
`runsExpanded`; the view's filter leaves the parent row out instead), and the parameters the
compare page's parallel-coordinates plot starts with (the first three that differ between the
runs, in alphabetical order: batch_size, lora_rank, lr when all four are searched). The order
of metrics holds for the sqlite store (the server lists them in insertion order); other
databases may list them otherwise.

No heavy imports here: `tune.run`, `tune.mirror` and `analysis` all read it.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

from trainable.config import OBJECTIVE

BEST_METRIC = f"{OBJECTIVE.metric}_best"  # the running best tune.mirror logs (its BEST_METRIC)
MODEL_TRAINING = "workflowType=machine_learning"
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
LOCAL_UI = "http://127.0.0.1:5000"


def ui_base(tracking_uri: str) -> tuple[str, str | None]:
    """(base URL of the UI, the command that serves it, or None when the tracking server does)."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/"), None
    return LOCAL_UI, f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000"


def run_page(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """A run's page in the model-training view."""
    base, _ = ui_base(tracking_uri)
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{MODEL_TRAINING}"


def study_view_id(study: str) -> str:
    """The id of a study's saved view (an experiment-tag suffix and a URL value)."""
    return f"study-{study}"


def study_page(tracking_uri: str, experiment_id: str, study: str) -> str:
    """The runs table holding only the study's trials, best first, with their parameters."""
    base, _ = ui_base(tracking_uri)
    key = urllib.parse.quote(study_view_id(study), safe="")
    return (f"{base}/#/experiments/{experiment_id}/runs?viewStateShareKey={key}"
            f"&{MODEL_TRAINING}")


def compare_page(tracking_uri: str, experiment_id: str, run_ids: Sequence[str]) -> str:
    """MLflow's compare page for these runs (parameters, metrics, parallel coordinates)."""
    base, _ = ui_base(tracking_uri)
    runs = urllib.parse.quote(json.dumps(list(run_ids), separators=(",", ":")), safe="")
    experiments = urllib.parse.quote(json.dumps([experiment_id]), safe="")
    return f"{base}/#/compare-runs?runs={runs}&experiments={experiments}&{MODEL_TRAINING}"


def study_view_state(study: str, searched: Sequence[str]) -> dict[str, Any]:
    """The saved view's state: the study's trial runs, sorted by the best objective, with the
    searched parameters and the objective as visible columns."""
    def column(kind: str, key: str) -> str:
        return f"{kind}.`{key}`"  # MLflow's canonical column key

    return {
        "searchFilter": (f"tags.study = '{study}' and tags.run_type = 'trial' "
                         f"and tags.state != 'lost'"),
        "orderByKey": column("metrics", BEST_METRIC),
        "orderByAsc": OBJECTIVE.mode == "min",
        "selectedColumns": ([column("metrics", OBJECTIVE.metric), column("metrics", BEST_METRIC)]
                            + [column("params", p) for p in searched]
                            + [column("tags", "state"), column("tags", "epochs")]),
    }


def label_experiment(client: Any, experiment_id: str, study: str,
                     searched: Sequence[str]) -> None:
    """Tag the experiment as model training (unless its owner chose a kind) and save the
    study's view; idempotent."""
    tags = client.get_experiment(experiment_id).tags
    if KIND_TAG not in tags:
        client.set_experiment_tag(experiment_id, KIND_TAG, KIND)
    key = VIEW_TAG_PREFIX + study_view_id(study)
    state = study_view_state(study, searched)
    try:
        saved = json.loads(tags.get(key, "null")) or {}
    except ValueError:
        saved = {}
    if isinstance(saved, dict) and saved.get("state") == json.dumps(state):
        return
    view = {"name": f"study {study}: trials by {OBJECTIVE.metric}", "createdAt": int(time.time() * 1000),
            "state": json.dumps(state)}
    client.set_experiment_tag(experiment_id, key, json.dumps(view))


def study_links(tracking_uri: str, experiment_id: str, study: str, trial_run_ids: Sequence[str],
                best_run_id: str | None = None) -> list[tuple[str, str]]:
    """(label, URL) of the study's trials table, their comparison and the best trial's run."""
    links = [("trials", study_page(tracking_uri, experiment_id, study))]
    if len(trial_run_ids) > 1:
        links.append(("compare", compare_page(tracking_uri, experiment_id, trial_run_ids)))
    if best_run_id:
        links.append(("best trial", run_page(tracking_uri, experiment_id, best_run_id)))
    return links


def describe_links(tracking_uri: str, links: Sequence[tuple[str, str]], indent: str = "  "
                   ) -> list[str]:
    """Printable lines: how to serve the UI (for a local store), then one line per link."""
    _, serve = ui_base(tracking_uri)
    lines = [f"{indent}MLflow UI: run `{serve}`, then open:"] if serve else []
    width = max((len(label) for label, _ in links), default=0)
    lines += [f"{indent}{label + ':':<{width + 1}} {url}" for label, url in links]
    return lines
