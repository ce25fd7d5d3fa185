# Status: DESI's per-year status files and the status page, rebuilt from the state
# (the markers and failure records) at the end of every run that did something,
# successful or not, so the page shows the failures too. `onsuccess` does not fire
# when there was nothing to do: then nothing changed. By hand, or after a change
# outside the workflow: python -m scripts.status --write. The code is in
# scripts/status/ (report.py rebuilds; page.py renders templates/index.html.j2).

from snakemake.logging import logger

from scripts.metrics import metrics_after_run
from scripts.status.report import rebuild_after_run, rebuild_can_wait


# The target rule `all` is a job on every run, so onsuccess fires even when nothing
# was pending: TARGETS (set in the Snakefile) says whether anything could change. A
# run in the middle of a backlog's drain leaves a recent page to the next run. The
# metrics file (scripts/metrics.py) is rewritten after every run, a no-op too: its
# lane ages and timestamps are what the monitoring watches; a preview (which fires
# neither handler) writes nothing.
onsuccess:
    if TARGETS and not rebuild_can_wait(config, draining=is_draining()):
        logger.info(rebuild_after_run(config, ending_run=RUN_ID))
    if not PREVIEW:
        logger.info(metrics_after_run(config, get_listings()))


onerror:
    logger.info(rebuild_after_run(config, ending_run=RUN_ID))
    if not PREVIEW:
        logger.info(metrics_after_run(config, get_listings()))
