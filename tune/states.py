"""Trial states as tagged in MLflow (tag `state`): written by tune.mirror, read by analysis.

A module of names only, so that analysis reads them without importing the driver's
dependencies (torch, Lightning).
"""

RUNNING, COMPLETED, STOPPED, FAILED = "running", "completed", "stopped_early", "failed"
# A run whose trial Ray never recorded: the driver died before Ray's next snapshot of the
# study (Ray takes one every 10 s or more), and the resumed study ran that configuration
# again as a new trial. Kept, marked, and left out of analysis.
LOST = "lost"
