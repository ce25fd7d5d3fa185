"""``python -m scripts.status --report NIGHT``: one night, in one self-contained HTML file.

What a person investigating a night needs, read from the state and nothing else: per
stream, the night's stages (caught up, backed up, supplementary archives), each
exposure's stages with their times, durations, sizes and attempts, every failure
record (reason, attempts, since when, held), and every rule log of the night inline.
No script, no stylesheet or image from elsewhere: the file can be mailed or attached
to a ticket. Every text from the state is escaped (`scripts.escaping.printable`, then
HTML), so a file name with any byte can neither break the page nor inject into it.

``snakemake --report`` cannot give this: done exposures never enter the DAG (the
target list holds only pending work), so its report shows only what is still to do,
and it knows nothing of failure records.
"""

from __future__ import annotations

import datetime as dt
import html
import os
from pathlib import Path

from scripts import __version__
from scripts.escaping import printable, printable_lines
from scripts.state_layout import rule_log_path
from scripts.status.formatting import duration, human_bytes
from scripts.status.model import NightStatus

#: An exposure's stages, in the order they happen.
EXPOSURE_STAGES = ("staged", "checksummed", "installed")
#: Bytes of one log shown at most (its end: where a failure is).
LOG_BYTES = 200_000

STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.5em; text-align: left;
         vertical-align: top; }
th { background: #eee; }
.failed { background: #fdd; } .done { background: #dfd; } .held { background: #fec; }
pre { background: #f6f6f6; padding: 0.5em; overflow-x: auto; white-space: pre-wrap; }
details { margin: 0.2em 0; }
"""


def _text(value: object) -> str:
    return html.escape(printable(value))


def _cell(record: dict | None, failure: dict | None) -> str:
    """A stage's cell: when it was done and how long it took, or why it failed."""
    if record is not None:
        parts = [record.get("time") or "?"]
        if isinstance(record.get("duration"), (int, float)):
            parts.append(duration(record["duration"]))
        if record.get("outcome") not in (None, "", "staged", "verified", "installed"):
            parts.append(str(record["outcome"]))
        if isinstance(record.get("attempt"), int) and record["attempt"] > 1:
            parts.append(f"attempt {record['attempt']}")
        text = _text(", ".join(parts))
        return (f'<td class="failed">{text}</td>' if record.get("outcome") == "failed"
                else f'<td class="done">{text}</td>')
    if failure is not None:
        css = "held" if failure.get("held") else "failed"
        what = "held" if failure.get("held") else "failed"
        return (f'<td class="{css}">{what} ({_text(failure.get("attempts", "?"))} attempt(s),'
                f' {_text(failure.get("time", "?"))}): {_text(failure.get("reason", "?"))}</td>')
    return "<td></td>"


def _log(path: Path) -> str:
    """A rule log inline, folded (its end when it is long); '' when there is none."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - LOG_BYTES))
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", "surrogateescape")
    cut = f" (last {LOG_BYTES} bytes of {size})" if size > LOG_BYTES else ""
    return (f"<details><summary>{_text(path.name)}{cut}</summary>"
            f"<pre>{html.escape(printable_lines(text))}</pre></details>")


def night_section(night: NightStatus, state: str | os.PathLike) -> str:
    """The HTML of one stream's night: its stages, exposures, failures and logs."""
    out = [f"<h2>Stream {_text(night.stream)}</h2>",
           f"<p>State: <b>{_text(night.state or '?')}</b>; {len(night.exposures)}"
           f" exposure(s), {_text(human_bytes(night.bytes))}.</p>"]
    stages = sorted(set(night.stages) | set(night.failures))
    if stages:
        out.append("<table><tr><th>night stage</th><th>done / failed</th></tr>")
        for stage in stages:
            out.append(f"<tr><td>{_text(stage)}</td>"
                       f"{_cell(night.stages.get(stage), night.failures.get(stage))}</tr>")
        out.append("</table>")
    archived = night.archived()
    out.append("<table><tr><th>exposure</th><th>state</th><th>size</th>"
               + "".join(f"<th>{s}</th>" for s in EXPOSURE_STAGES)
               + "<th>on tape</th><th>logs</th></tr>")
    for exposure in night.sorted_exposures():
        logs_html = "".join(
            _log(Path(rule_log_path(state, night.stream, night.night, exposure.expid, stage)))
            for stage in (*EXPOSURE_STAGES, "updated"))
        archive = archived.get(exposure.expid)
        out.append(
            f"<tr><td>{_text(exposure.expid)}</td><td>{_text(exposure.state)}</td>"
            f"<td>{_text(human_bytes(exposure.bytes))}</td>"
            + "".join(_cell(exposure.stages.get(s), exposure.failures.get(s))
                      for s in EXPOSURE_STAGES)
            + f"<td>{_text(archive.get('name', '') if archive else '')}</td>"
            f"<td>{logs_html}</td></tr>")
    out.append("</table>")
    stream_logs = Path(rule_log_path(state, night.stream, night.night, None, "any")).parent
    night_logs = sorted(stream_logs.glob(f"{night.night}.*.log"))
    if night_logs:
        out.append("<h3>Night logs</h3>" + "".join(_log(p) for p in night_logs))
    return "\n".join(out)


def night_report(night: str, nights: list[NightStatus], state: str | os.PathLike,
                 config_file: str, now: dt.datetime) -> str:
    """The whole HTML document of `night` over `nights` (one per stream)."""
    sections = [night_section(n, state) for n in nights]
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>desitransfer night {_text(night)}</title><style>{STYLE}</style></head><body>",
        f"<h1>Night {_text(night)}</h1>",
        f"<p>From the state {_text(state)} (configuration {_text(config_file)}), written"
        f" {_text(now.strftime('%Y-%m-%dT%H:%M:%SZ'))} by desitransfer-workflow"
        f" {_text(__version__)}. Times are UTC.</p>",
        *(sections or ["<p>No stream configured.</p>"]),
        "</body></html>", ""])
