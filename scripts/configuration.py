"""The workflow's configuration: one-line validation errors, streams, the clock.

Every rule job imports this module (for `get_streams`), so YAML and the schema
validator are imported only by the functions that read YAML: about 10 ms less per job.

The JSON Schema in ``schemas/config.schema.yaml`` is the single description of the
keys; this module turns a failed validation into one line an operator can act on and
answers the questions every stage asks of the configuration.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import math
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from scripts.state_layout import logs_directory, metrics_path, status_directory

SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"
#: The configuration every tool reads when given none: $DESITRANSFER_CONFIG, else this.
BUNDLED_CONFIG = Path(__file__).resolve().parents[1] / "config.yaml"
ENV_CONFIG = "DESITRANSFER_CONFIG"
#: remote.host meaning "the SOURCE paths are on this machine" (see scripts.remote).
LOCAL_HOST = "local"
#: `now` must fall in these years: a replay is of this era, and dates far from it
#: overflow in the look-back arithmetic.
NOW_YEARS = (1970, 2999)


#: What a key must be given another key (the schema's if/then/else), in words.
COMBINATIONS = {
    ("backup.archive", "then"): "is required when backup.backend is tar (the directory"
                                " the tar archives are written to)",
    ("backup.archive", "else"): "is used only when backup.backend is tar; remove it, or set"
                                " backup.backend: tar",
    ("backup.hpss_bin", "then"): "is required when backup.backend is htar (where hsi and"
                                 " htar live)",
    ("alerts.smtp", "then"): "must be HOST:PORT (port 1-65535) when alerts.to has"
                             " recipients",
    ("alerts.from", "then"): "must be an e-mail address (or null) when alerts.to has"
                             " recipients",
}


class ConfigurationError(Exception):
    """A configuration problem a user can fix; the message is one line."""


def describe_validation_error(
    config: dict, files: Iterable[str], schema_path: Path = SCHEMA
) -> str | None:
    """Validate `config` and describe the most relevant error in one line.

    Returns
    -------
    str or None
        ``"FILE: KEY: what is wrong (expected ...)"``, or ``None`` when valid.
    """
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_schema(schema_path))
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is None:
        return None
    path = list(error.absolute_path)
    key = ".".join(str(p) for p in path) or "(top level)"
    message = error.message
    if error.validator == "required":
        missing = message.split("'")[1] if "'" in message else message
        key = f"{key}.{missing}" if path else missing
        message = "is required"
    elif error.validator == "additionalProperties":
        message = f"unknown key ({message})"
    elif error.validator == "pattern" and path[-1:] == ["checksum_file"]:
        message = f"{error.instance!r} may use only the fields {{night}} and {{exposure}}"
    branch = next((b for b in ("then", "else") if b in error.absolute_schema_path), None)
    if branch is not None:
        message = COMBINATIONS.get((key, branch), message)
    where = ", ".join(str(f) for f in files) or "configuration"
    return f"{where}: {key}: {message}; see README.md, section Configuration"


@functools.cache
def load_schema(schema_path: Path = SCHEMA) -> dict:
    """The JSON Schema, parsed once per process (a status rebuild asks for the
    defaults several times); callers must not change it."""
    return _safe_load(schema_path.read_text())


@functools.cache
def _default_filler(schema_path: Path):
    """A jsonschema validator class that sets each missing key's default as it walks
    `schema_path`'s schema (jsonschema's documented ``extend`` recipe)."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    properties = base.VALIDATORS["properties"]

    def set_defaults(validator, subschemas, instance, schema):
        if validator.is_type(instance, "object"):
            for key, subschema in subschemas.items():
                if "default" in subschema:
                    instance.setdefault(key, copy.deepcopy(subschema["default"]))
        yield from properties(validator, subschemas, instance, schema)

    return jsonschema.validators.extend(base, {"properties": set_defaults})(
        load_schema(schema_path))


def with_defaults(config: dict, schema_path: Path = SCHEMA) -> dict:
    """A copy of `config` with the schema's defaults filled in, valid or not.

    The cron entry, the status command and the audit read the configuration without
    Snakemake's validation, and must still run to report an invalid one, so
    ``snakemake.utils.validate(set_default=True)``, which raises, does not do here.
    Defaults are set by jsonschema's own validator as it walks the schema (the recipe
    Snakemake's validate uses); errors are left to the validation.
    """
    config = copy.deepcopy(config)
    for _ in _default_filler(schema_path).iter_errors(config):
        pass  # only the defaults are wanted here
    return config


def _safe_load(text):
    """`yaml.safe_load` through libyaml when PyYAML has it (ten times faster: a tool's
    start reads the configuration and the schema), else the pure-Python loader; both
    build only plain values."""
    import yaml

    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def load_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML configuration file, raising `ConfigurationError` on any problem."""
    import yaml

    try:
        with open(path) as f:
            data = _safe_load(f)
    except OSError as err:
        raise ConfigurationError(f"{path}: cannot read ({err.strerror})") from None
    except UnicodeDecodeError as err:
        raise ConfigurationError(f"{path}: byte {err.start + 1} is not UTF-8 text; save"
                                 " the file as UTF-8") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigurationError(f"{path}:{line} is not valid YAML; fix it") from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"{path}: expected a mapping of keys at the top level")
    return data


#: ``${NAME}`` or ``$NAME``, as a shell or DESI's own configuration writes a variable.
_VARIABLE = re.compile(r"\$(?:\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def path_keys(config: dict) -> list[tuple[tuple[str, ...], bool]]:
    """The keys whose values are paths, each with whether it is a path on this machine
    (``~`` is then this user's home) or at the mountain or on tape (no ``~``: this
    machine's home means nothing there). Only the keys present, whatever their type."""
    remote = config.get("remote")
    local_source = isinstance(remote, dict) and remote.get("host") == LOCAL_HOST
    keys = [(("state",), True), (("logs",), True), (("status",), True),
            (("kill_file",), True), (("backup", "hpss_bin"), True),
            (("backup", "archive"), True), (("remote", "checksum_lock"), local_source)]
    streams = config.get("streams")
    for name in streams if isinstance(streams, dict) else ():
        keys += [(("streams", name, "source"), local_source),
                 (("streams", name, "data_root"), local_source),
                 (("streams", name, "staging"), True),
                 (("streams", name, "destination"), True),
                 (("streams", name, "hpss"), False)]
    return keys


def expand_value(key: str, value: str, local: bool, environ=os.environ) -> str:
    """`value` with ``${VAR}`` and ``$VAR`` replaced from `environ` and, on this machine,
    a leading ``~`` (``~user``) by the home directory, as DESI's configuration is written.

    Raises
    ------
    ConfigurationError
        One line naming `key` and the variable: unset or empty (an empty
        ``${DESI_ROOT}`` would turn ``${DESI_ROOT}/spectro`` into ``/spectro``), or a
        ``$`` or ``~`` left over, which is never taken as a literal path.
    """
    def variable(match: re.Match) -> str:
        name = match["plain"] or match["braced"]
        if not _NAME.fullmatch(name):
            raise ConfigurationError(
                f"{key}: {_shown(match[0])} is not a variable (write ${{NAME}} or $NAME,"
                " NAME of letters, digits and _)")
        if name not in environ:
            raise ConfigurationError(
                f"{key}: {_shown(match[0])} is not set in the environment; export {name}"
                " (e.g. in the crontab) or write the path in full")
        if not environ[name]:
            raise ConfigurationError(
                f"{key}: {_shown(match[0])} is set but empty; set {name} to a directory"
                " or write the path in full")
        return environ[name]

    expanded = _VARIABLE.sub(variable, value)
    if local and expanded.startswith("~"):
        expanded = os.path.expanduser(expanded)
    for sign, meaning in (("$", "a variable that could not be read"),
                          ("~", "a home directory" if local else
                           "this machine's home directory, not the mountain's or the"
                           " tape's: write the path in full")):
        if sign in expanded:
            raise ConfigurationError(
                f"{key}: {_shown(value)} still holds {sign!r} after expansion"
                f" ({_shown(expanded)}): {meaning}; it is never used as a literal path")
    return expanded


def expand_paths(config: dict, environ=os.environ) -> dict:
    """A copy of `config` whose path values (`path_keys`) and ssh command words have
    their variables and ``~`` expanded (`expand_value`); other values as they are.

    Every reader of a configuration file (the Snakefile, the cron entry, the status,
    audit and plan commands) calls it, so no ``$`` or ``~`` ever reaches a path.

    Raises
    ------
    ConfigurationError
        ``KEY: …`` in one line; the caller puts the file name in front.
    """
    config = copy.deepcopy(config)
    for path, local in path_keys(config):
        parent = config
        for part in path[:-1]:
            parent = parent.get(part) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and isinstance(parent.get(path[-1]), str):
            parent[path[-1]] = expand_value(".".join(path), parent[path[-1]], local, environ)
    remote = config.get("remote")
    if isinstance(remote, dict) and isinstance(remote.get("ssh"), list):
        remote["ssh"] = [expand_value(f"remote.ssh[{i}]", word, True, environ)
                         if isinstance(word, str) and ("$" in word or word.startswith("~"))
                         else word for i, word in enumerate(remote["ssh"])]
    return config


def read_configuration(path: str | os.PathLike, amend=None) -> dict:
    """The configuration file `path` as every tool reads it: YAML (changed by `amend`,
    as a run's ``--config`` entries change it), the schema's defaults filled in, path
    values expanded (`expand_paths`); not validated.

    Raises
    ------
    ConfigurationError
        One line naming the file (and the key, the variable).
    """
    loaded = load_yaml(path)
    config = with_defaults(amend(loaded) if amend else loaded)
    try:
        return expand_paths(config)
    except ConfigurationError as err:
        raise ConfigurationError(f"{path}: {err}") from None


def find_configuration(given: str | os.PathLike | None = None,
                       environ=os.environ) -> tuple[Path, str]:
    """The configuration file a tool reads, and where the choice came from.

    Every tool (the cron entry, its ``--plan``, the status and audit commands, a
    ``snakemake`` started by hand) chooses the same way: the file `given` on its command
    line, else ``$DESITRANSFER_CONFIG``, else the bundled ``config.yaml`` (the demo), so
    that a production crontab that exports the variable makes every tool read
    production's file.
    """
    if given:
        return Path(given), "argument"
    if environ.get(ENV_CONFIG):
        return Path(environ[ENV_CONFIG]), ENV_CONFIG
    return BUNDLED_CONFIG, "bundled default"


#: How every tool's first line of stderr begins (the cron entry: its log's first line).
ANNOUNCEMENT = "desitransfer: configuration "


def announce_configuration(files: Iterable[str | os.PathLike], origin: str) -> str:
    """Say on stderr (stdout stays the tool's output: a table, JSON, a DAG) which
    configuration file is read, and why that one; the line said."""
    line = f"{ANNOUNCEMENT}{', '.join(os.path.abspath(f) for f in files)} ({origin})"
    print(line, file=sys.stderr, flush=True)
    return line


def require_state(config: dict, path: str | os.PathLike) -> Path:
    """The state directory of `config`, which must exist: a report, audit or plan of a
    state that does not exist would be an empty report taken for a good one.

    Raises
    ------
    ConfigurationError
        One line naming the file and the directory.
    """
    state = Path(config["state"])
    if not state.is_dir():
        raise ConfigurationError(
            f"{path}: state {_shown(str(state))} does not exist: nothing has run with this"
            f" configuration yet (or the path is wrong; {ENV_CONFIG} or the argument names"
            " the configuration)")
    return state


@dataclass(frozen=True)
class Stream:
    """One configured data stream (raw spectroscopic data is one)."""

    name: str
    source: str
    staging: Path
    destination: Path
    hpss: str
    checksum_file: str
    #: where the stream's data live at the mountain; published links must point inside
    data_root: str | None = None

    def checksum_name(self, night: str, expid: str) -> str:
        """The checksum file's name inside exposure `night`/`expid`."""
        return self.checksum_file.format(night=night, exposure=expid)

    def staging_exposure(self, night: str, expid: str) -> Path:
        return self.staging / night / expid

    def destination_exposure(self, night: str, expid: str) -> Path:
        return self.destination / night / expid


def get_streams(config: dict) -> dict[str, Stream]:
    """The configured streams, with local paths made absolute against the cwd."""
    return {
        name: Stream(
            name=name,
            source=s["source"],
            staging=Path(s["staging"]).absolute(),
            destination=Path(s["destination"]).absolute(),
            hpss=s["hpss"],
            checksum_file=s["checksum_file"],
            data_root=s.get("data_root"),
        )
        for name, s in config["streams"].items()
    }


def get_now(config: dict) -> dt.datetime:
    """The workflow's clock: ``now`` from the configuration, else UTC now.

    ``now`` is an ISO-8601 string or, as YAML reads an unquoted time, a datetime (or a
    date: its midnight). Nothing in the workflow reads local time; a naive ``now`` is
    taken as UTC.
    """
    value = config.get("now")
    if value is None or value == "":
        return dt.datetime.now(dt.UTC)
    example = "(e.g. 2026-11-29T15:00:00Z)"
    if isinstance(value, dt.datetime):
        when = value
    elif isinstance(value, dt.date):
        when = dt.datetime.combine(value, dt.time())
    elif isinstance(value, str):
        try:
            when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigurationError(
                f"now: {value!r} is not an ISO-8601 time {example}"
            ) from None
    else:
        raise ConfigurationError(f"now: {value!r} is not an ISO-8601 time {example}")
    first, last = NOW_YEARS
    if not first <= when.year <= last:
        raise ConfigurationError(
            f"now: {value!s} is outside the years {first}-{last}; give a time of this era"
            f" {example} or null for the clock"
        )
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC)


def _shown(path: str) -> str:
    """A configured path as it goes in a one-line message."""
    return path if path.isprintable() else repr(path)


def _resolved(path: str | os.PathLike) -> Path:
    """`path` absolute, with the symlinks of its existing part resolved (before any
    ``..`` that follows them, as the kernel does): two keys naming one directory
    through a link must compare equal."""
    return Path(os.path.realpath(path))


def _describe(key: str, value: str, resolved: Path) -> str:
    shown = _shown(str(value))
    if Path(os.path.abspath(value)) != resolved:
        shown += f" (resolved: {_shown(str(resolved))})"
    return f"{key}: {shown}"


def data_directories(config: dict) -> list[tuple[str, str]]:
    """The data-centre directories that hold data, as (key, configured path).

    Each stream's staging and destination, its source when it is on this machine
    (``remote.host: local``), and the tar backend's archive.
    """
    local = config["remote"]["host"] == LOCAL_HOST
    roles = []
    for name, stream in config["streams"].items():
        if local:
            roles.append((f"streams.{name}.source", stream["source"]))
        roles.append((f"streams.{name}.staging", stream["staging"]))
        roles.append((f"streams.{name}.destination", stream["destination"]))
    backup = config.get("backup") or {}
    if backup.get("backend") == "tar" and backup.get("archive"):
        roles.append(("backup.archive", backup["archive"]))
    return roles


def bookkeeping_directories(config: dict) -> list[tuple[str, str]]:
    """The directories of the workflow's own files: state, status, logs and the
    metrics file's (status and logs default to STATE/status and STATE/logs, the
    metrics file to STATUS/desitransfer.prom)."""
    state = config["state"]
    scratch = (config.get("backup") or {}).get("recall_scratch")
    return [
        ("state", state),
        ("status", str(status_directory(config))),
        ("logs", str(logs_directory(config))),
        *([("backup.recall_scratch", scratch)] if scratch else []),
        ("metrics", str(metrics_path(config).parent)),
    ]


def check_paths(config: dict) -> None:
    """Refuse directories that are the same as, or inside, one another.

    Source, staging, destination (every stream) and the tar archive must each be a
    directory of its own: a destination equal to a local source would make the run
    chmod the mountain's own data read-only, a staging area inside the archive would
    be installed and backed up. The state, status and logs directories must be apart
    from all of them (neither equal, inside nor containing): markers inside the archive
    would be locked and taped with the data. The state may contain status and logs.
    Paths are compared absolute, with symlinks resolved where they exist.
    """
    data = [(key, value, _resolved(value)) for key, value in data_directories(config)]
    for i, first in enumerate(data):
        for second in data[i + 1:]:
            # Name the inner directory first; of two equal ones, the later key.
            outer, inner = first, second
            if first[2] != second[2] and first[2].is_relative_to(second[2]):
                outer, inner = second, first
            if not inner[2].is_relative_to(outer[2]):
                continue
            problem = (f"is the same directory as {outer[0]}" if inner[2] == outer[2]
                       else f"is inside {outer[0]} ({_shown(str(outer[2]))})")
            raise ConfigurationError(
                f"{_describe(*inner)} {problem}; source, staging, destination and"
                " backup.archive each need a directory of their own, none inside another"
            )
    for key, value in bookkeeping_directories(config):
        own = _resolved(value)
        for data_key, _, area in data:
            if own == area:
                problem = f"is the same directory as {data_key}"
            elif own.is_relative_to(area):
                problem = f"is inside {data_key} ({_shown(str(area))})"
            elif area.is_relative_to(own):
                problem = f"contains {data_key} ({_shown(str(area))})"
            else:
                continue
            raise ConfigurationError(
                f"{_describe(key, value, own)} {problem}; keep state, status, logs and metrics"
                " apart from the data (source, staging, destination, backup.archive)"
            )


def checksum_file_problem(value: str) -> str | None:
    """Why `value` is not a usable ``checksum_file``, or None.

    The checksum file is opened inside the exposure: its name, once {night} and
    {exposure} are filled in, must be a plain file name there, never a path.
    """
    try:
        name = value.format(night="20261127", exposure="00001234")
    except (KeyError, IndexError, ValueError):
        return f"{value!r} may use only the fields {{night}} and {{exposure}}"
    if name in ("", ".", "..") or "/" in name or not name.isprintable():
        return (f"{value!r} must be a plain file name inside the exposure (no '/', not"
                " '.' or '..', no control characters), e.g. checksum-{exposure}.sha256sum")
    return None


def check_numbers(config: dict, prefix: str = "") -> None:
    """Refuse NaN and infinities anywhere: JSON Schema bounds let NaN through (every
    comparison with it is false)."""
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            check_numbers(value, f"{dotted}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigurationError(f"{dotted}: {value} is not a finite number")


def check_configuration(config: dict) -> None:
    """Checks the schema cannot express; raise `ConfigurationError` (one line).

    `config` is valid against the schema, defaults filled in. The message is
    ``KEY: what is wrong; what to do``: the caller puts the file name in front.
    """
    check_numbers(config)
    for name, stream in config["streams"].items():
        problem = checksum_file_problem(stream["checksum_file"])
        if problem:
            raise ConfigurationError(f"streams.{name}.checksum_file: {problem}")
    check_paths(config)
    get_now(config)
