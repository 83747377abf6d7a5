"""Catch MLflow up with a study from Ray's durable results: `python -m tune.sync --help`.

    python -m tune.sync --name qlora-unfair-tos --storage-path runs [--mlflow-uri URI]

Safe to run any number of times, during or after a study: runs, params and metric steps
already in MLflow are left alone, what is missing is added.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from trainable.cli import ArgumentParser, command
from trainable.errors import UserError
from tune.study import StudyConfig


def sync(study: StudyConfig) -> tuple[int, str]:
    """Mirror every trial of the study into MLflow; return (trials mirrored, parent run id).

    Runs get the trials' own start and end times; the study's run is closed at its last
    trial's end once no trial runs (left open while one does: the study may be going on).
    A progress bar shows the catch-up on a terminal.
    """
    from trainable.cli import progress_bar
    from tune.driver import ray_records
    from tune.mirror import Mirror, milliseconds
    from tune.preflight import make_store_folder
    from tune.records import COMPLETED, FAILED, RUNNING, STOPPED, check_tracking_uri
    from tune.study import read_study_file

    stored = read_study_file(study.experiment_path)
    if stored is None:
        raise UserError(f"no study at {study.experiment_path} (check --name and --storage-path)")
    saved, base, _ = stored
    target = saved.replace(storage_path=study.storage_path,
                           mlflow_uri=study.mlflow_uri or saved.mlflow_uri)
    check_tracking_uri(target.tracking_uri)
    records = ray_records(target.experiment_path, max_epochs=base.epochs)
    spans = [span for r in records if (span := r.span) is not None]
    starts = [milliseconds(start) for start, _ in spans]
    ends = [milliseconds(end) for _, end in spans]
    make_store_folder(target.tracking_uri)
    mirror = Mirror(target, base)
    parent = mirror.start(resume=True, start_time=min(starts, default=None))
    with progress_bar(len(records), "mirroring trials", "trial") as bar:
        for record in records:
            mirror.apply(record)
            bar.update(1)
    mirror.mark_lost({r.trial_id for r in records})
    if not any(r.state == RUNNING for r in records):
        counts = {s: sum(r.state == s for r in records) for s in (COMPLETED, STOPPED, FAILED)}
        status = "FINISHED" if len(records) >= saved.num_trials else "KILLED"
        mirror.finish(None, status, counts=counts, end_time=max(ends, default=None))
    return len(records), parent


@command()
def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, sync, print what was done."""
    p = ArgumentParser(prog="python -m tune.sync", description=__doc__.split("\n")[0])
    p.add_argument("--name", default=StudyConfig().name, help="study name")
    p.add_argument("--storage-path", default=StudyConfig().storage_path, metavar="DIR_OR_URI")
    p.add_argument("--mlflow-uri", metavar="URI", help="default: the study's own")
    args = p.parse_args(argv)
    study = StudyConfig(name=args.name, storage_path=args.storage_path,
                        mlflow_uri=args.mlflow_uri)
    count, parent = sync(study)
    print(f"mirrored {count} trials of study {args.name} into MLflow (study run {parent})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
