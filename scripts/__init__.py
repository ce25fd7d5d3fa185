"""desitransfer: DESI's raw-data transfer as a Snakemake workflow (README.md).

`__version__` comes from pyproject.toml, the one place the version is written; the
cron entry prints it (``--version``), the logs and the status page's footer show it.
It is read with a regular expression, not tomllib: every rule job imports this
package, and parsing TOML there cost each job tens of milliseconds.
"""

import re
from pathlib import Path

_VERSION = re.compile(r'^\[project\][^\[]*?^version\s*=\s*"([^"]+)"', re.M | re.S)


def _version() -> str:
    try:
        text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    except OSError:
        return "unknown"
    match = _VERSION.search(text)
    return match.group(1) if match else "unknown"


__version__ = _version()
