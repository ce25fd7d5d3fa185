"""desitransfer: DESI's raw-data transfer as a Snakemake workflow (README.md).

`__version__` comes from pyproject.toml, the one place the version is written; the
cron entry prints it (``--version``), the logs and the status page's footer show it.
"""

import tomllib
from pathlib import Path


def _version() -> str:
    try:
        with open(Path(__file__).resolve().parents[1] / "pyproject.toml", "rb") as f:
            return str(tomllib.load(f)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


__version__ = _version()
