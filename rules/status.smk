# Status: DESI's per-year status files and the status page, rebuilt from the state
# (the markers and failure records) at the end of every run that did something,
# successful or not, so the page shows the failures too. `onsuccess` does not fire
# when there was nothing to do: then nothing changed. By hand, or after a change
# outside the workflow: python -m scripts.status --write.

from snakemake.logging import logger

from scripts.status import rebuild_after_run


onsuccess:
    logger.info(rebuild_after_run(config))


onerror:
    logger.info(rebuild_after_run(config))
