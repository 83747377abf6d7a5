"""Train each configuration once per study: a searcher that answers a proposal it has seen
from the earlier trial instead of training it again.

On a space of choices Optuna's TPE re-proposes configurations it has already run (it
samples each choice from its fitted distribution; optuna#2021), and a trial is seeded, so a
repeat retrains the same curve: the default study of `bench.confirm` ran 10 distinct
configurations in 16 trials, and 19 of its 38 trial-epochs repeated epochs already known.
Neither Optuna nor Ray's OptunaSearch skips repeats. Ray's BayesOptSearch has
`skip_duplicate`, which drops the suggestion; an Optuna trial that was asked must be told,
so this tells it the earlier trial's result, as Optuna's FAQ does inside an objective ("How
can I ignore duplicated samples?"), but before any Ray trial starts.

A repeat of a trial that has ended is answered from that trial's last result (what the
searcher was told for it: ASHA's stop included) and the searcher is asked again; a repeat of
a trial still running waits for it (no trial starts meanwhile) and is then answered the
same way; a repeat of a failed trial trains, since a failure says nothing of the
configuration. When every configuration of a space of choices has been tried, the search
ends (`StudyConfig.trials_to_run`). A space with a range never repeats a configuration.
"""

from __future__ import annotations

import base64
import json
import logging
import numbers
import os
import tempfile
from typing import Any

from ray.tune.search import Searcher

log = logging.getLogger("tune")


def config_key(config: dict[str, Any]) -> str:
    """A configuration's identity: its sampled values (float choices compare exactly)."""
    return json.dumps(config, sort_keys=True, default=str)


_SKIP = object()
_ANSWERED = object()


def _plain(value: Any) -> Any:
    """A result value as JSON holds it (numpy numbers included); _SKIP for anything else."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return _SKIP


class SkipRepeats(Searcher):
    """Wraps a Searcher so that no configuration trains twice in one study (module docstring).

    `space_size`: how many distinct configurations the space holds when every searched
    dimension is a choice (the search ends once all were tried); None for a continuous space.
    `asks`: proposals taken per call before handing control back to Tune, which asks again
    (TPE gives every choice some probability, so an untried configuration comes).
    """

    def __init__(self, searcher: Searcher, space_size: int | None = None,
                 asks: int = 50) -> None:
        self.searcher = searcher
        self.space_size = space_size
        self.asks = asks
        self.tried: dict[str, str] = {}
        """Configuration key -> the trial that trains (or trained) it."""
        self.results: dict[str, dict[str, Any] | None] = {}
        """Configuration key -> the last result of its ended trial."""
        self.inner_ids: dict[str, str] = {}
        """Ray trial id -> the id the wrapped searcher knows the trial by."""
        self.keys: dict[str, str] = {}
        """Ray trial id -> configuration key, while the trial runs."""
        self.waiting: tuple[str, dict[str, Any], str] | None = None
        """(inner id, configuration, key) of a repeat proposed while its trial runs."""
        self.asked = 0
        self.answered = 0
        """Repeats answered from an earlier trial, without training."""
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    # -- what Tune calls ---------------------------------------------------------------------

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              **spec: Any) -> bool:
        done = self.searcher.set_search_properties(metric, mode, config, **spec)
        self._metric, self._mode = self.searcher.metric, self.searcher.mode
        return done

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        return self.searcher.set_max_concurrency(max_concurrent)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.waiting is not None:  # a repeat waited for its running trial: settle it first
            inner_id, config, key = self.waiting
            self.waiting = None
            if (placed := self._place(trial_id, inner_id, config, key)) is not _ANSWERED:
                return placed
        for _ in range(self.asks):
            if self.space_size is not None and len(self.tried) >= self.space_size:
                log.info("every one of the space's %d configurations has been tried; the search "
                         "ends (%d repeats answered without training)", self.space_size,
                         self.answered)
                return Searcher.FINISHED
            inner_id = trial_id if self.asked == 0 else f"{trial_id}-ask{self.asked}"
            self.asked += 1
            config = self.searcher.suggest(inner_id)
            if config is None or config == Searcher.FINISHED:
                return config
            if (placed := self._place(trial_id, inner_id, config,
                                      config_key(config))) is not _ANSWERED:
                return placed
        return None

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self.searcher.on_trial_result(self.inner_ids.get(trial_id, trial_id), result)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        self.searcher.on_trial_complete(self.inner_ids.get(trial_id, trial_id), result=result,
                                        error=error)
        key = self.keys.pop(trial_id, None)
        if key is None:
            return
        if error:
            self.tried.pop(key, None)
        else:  # what a searcher reads of a result: its plain values (kept as JSON on save)
            self.results[key] = None if result is None else {
                k: plain for k, v in result.items() if (plain := _plain(v)) is not _SKIP}

    # -- state, for a resumed study ----------------------------------------------------------

    STATE = ("tried", "results", "inner_ids", "keys", "waiting", "asked", "answered")

    def get_state(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.STATE}

    def set_state(self, state: dict[str, Any]) -> None:
        for k in self.STATE:
            setattr(self, k, state[k])
        if self.waiting is not None:
            self.waiting = tuple(self.waiting)

    def save(self, checkpoint_path: str) -> None:
        # One file, as Tune moves one file into place: this wrapper's state as JSON, with the
        # wrapped searcher's own checkpoint (Ray's format) inside it.
        with tempfile.TemporaryDirectory() as tmp:
            inner = os.path.join(tmp, "searcher")
            self.searcher.save(inner)
            with open(inner, "rb") as f:
                blob = base64.b64encode(f.read()).decode("ascii")
        with open(checkpoint_path, "w", encoding="utf-8") as f:
            json.dump({"state": self.get_state(), "searcher": blob}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, encoding="utf-8") as f:
            saved = json.load(f)
        with tempfile.TemporaryDirectory() as tmp:
            inner = os.path.join(tmp, "searcher")
            with open(inner, "wb") as f:
                f.write(base64.b64decode(saved["searcher"]))
            self.searcher.restore(inner)
        self.set_state(saved["state"])

    # -- helpers -----------------------------------------------------------------------------

    def _place(self, trial_id: str, inner_id: str, config: dict[str, Any],
               key: str) -> dict[str, Any] | object | None:
        """One proposal's fate: trained as `trial_id` if untried or its trial failed (returns
        the configuration), answered from its ended trial (_ANSWERED: ask again), or kept
        waiting while its trial runs (None: Tune asks again once a trial ends)."""
        if key not in self.tried:
            return self._start(trial_id, inner_id, config, key)
        if key not in self.results:
            self.waiting = (inner_id, config, key)
            return None
        self._answer(inner_id, key)
        return _ANSWERED

    def _start(self, trial_id: str, inner_id: str, config: dict[str, Any],
               key: str) -> dict[str, Any]:
        self.tried[key] = trial_id
        self.keys[trial_id] = key
        self.inner_ids[trial_id] = inner_id
        return config

    def _answer(self, inner_id: str, key: str) -> None:
        self.searcher.on_trial_complete(inner_id, result=self.results[key])
        self.answered += 1
        log.info("the searcher proposed %s again: answered from trial %s without training "
                 "(%d repeats so far)", key, self.tried[key], self.answered)
