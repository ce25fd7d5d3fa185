"""The workflow's configuration: one-line validation errors, streams, the clock.

The JSON Schema in ``schemas/config.schema.yaml`` is the single description of the
keys; this module turns a failed validation into one line an operator can act on and
answers the questions every stage asks of the configuration.
"""

from __future__ import annotations

import copy
import datetime as dt
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"


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

    schema = yaml.safe_load(schema_path.read_text())
    validator = jsonschema.Draft202012Validator(schema)
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
    where = ", ".join(str(f) for f in files) or "configuration"
    return f"{where}: {key}: {message}; see README.md, section Configuration"


def with_defaults(config: dict, schema_path: Path = SCHEMA) -> dict:
    """A copy of `config` with the schema's defaults filled in (for the cron entry,
    which reads the configuration before Snakemake does)."""

    def fill(value, schema):
        if isinstance(value, dict) and "properties" in schema:
            for key, sub in schema["properties"].items():
                if key not in value and "default" in sub:
                    value[key] = copy.deepcopy(sub["default"])
                if key in value:
                    value[key] = fill(value[key], sub)
        return value

    return fill(copy.deepcopy(config), yaml.safe_load(schema_path.read_text()))


def load_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML configuration file, raising `ConfigurationError` on any problem."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except OSError as err:
        raise ConfigurationError(f"{path}: cannot read ({err.strerror})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigurationError(f"{path}:{line} is not valid YAML; fix it") from None
    if not isinstance(data, dict):
        raise ConfigurationError(f"{path}: expected a mapping of keys at the top level")
    return data


@dataclass(frozen=True)
class Stream:
    """One configured data stream (raw spectroscopic data is one)."""

    name: str
    source: str
    staging: Path
    destination: Path
    hpss: str
    checksum_file: str

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
        )
        for name, s in config["streams"].items()
    }


def get_now(config: dict) -> dt.datetime:
    """The workflow's clock: ``now`` from the configuration, else UTC now.

    Nothing in the workflow reads local time; a naive ``now`` is taken as UTC.
    """
    value = config.get("now")
    if value in (None, ""):
        return dt.datetime.now(dt.UTC)
    try:
        when = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise ConfigurationError(
            f"now: {value!r} is not an ISO-8601 time (e.g. 2026-11-29T15:00:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC)


def check_paths(config: dict) -> None:
    """Refuse a state directory inside an archive or staging area.

    Markers inside the archive would be installed, backed up to tape and made
    read-only along with the data; the state must live apart from it.
    """
    state = Path(config["state"]).absolute()
    for stream in get_streams(config).values():
        for label, area in (("destination", stream.destination), ("staging", stream.staging)):
            if state == area or area in state.parents:
                raise ConfigurationError(
                    f"state: {state} is inside streams.{stream.name}.{label} ({area});"
                    " put the state directory outside the archive"
                )


def check_configuration(config: dict) -> None:
    """Checks the schema cannot express; raise `ConfigurationError` (one line)."""
    check_paths(config)
    get_now(config)
