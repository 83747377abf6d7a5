"""Ray Tune's OptunaSearch for studies that resume after their driver was killed.

Ray snapshots a study every 10 s or more; Optuna's sqlite study (`tune.driver`) records each
trial's end at once. A trial that ended after the last snapshot is run again when the study
resumes, and Optuna refuses its results (UpdateFinishedTrialError), which would end the
study. It already holds that trial's outcome, so the repeat is not told again.
"""

from __future__ import annotations

import logging
from typing import Any

from optuna.exceptions import UpdateFinishedTrialError
from ray.tune.search.optuna import OptunaSearch

log = logging.getLogger("tune.optuna_search")


class ResumableOptunaSearch(OptunaSearch):
    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        try:
            super().on_trial_result(trial_id, result)
        except UpdateFinishedTrialError:
            _keep_first(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        try:
            super().on_trial_complete(trial_id, result=result, error=error)
        except UpdateFinishedTrialError:
            _keep_first(trial_id)


def _keep_first(trial_id: str) -> None:
    log.info("trial %s ended before the study was resumed; Optuna keeps its first outcome",
             trial_id)
