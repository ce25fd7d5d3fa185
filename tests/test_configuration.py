"""The configuration: schema validation with one-line errors, through the real workflow."""

from __future__ import annotations

import datetime as dt

import pytest
import yaml
from conftest import STREAM

from scripts.configuration import ConfigurationError, get_now, load_yaml


@pytest.mark.parametrize("changes, expected", [
    ({"remote__host": KeyError}, "remote.host: is required"),
    ({"lookback_nights": "thirty"}, "lookback_nights: 'thirty' is not of type 'integer'"),
    ({"verify__on_failure": "ignore"}, "verify.on_failure: 'ignore' is not one of"),
    ({"streams__DESI_SPECTRO_DATA__checksum_file": "checksum-{expid}.sha256sum"},
     "may use only the fields {night} and {exposure}"),
    ({"streams__DESI_SPECTRO_DATA__destinaton": "/x"}, "unknown key"),
    ({"now": "tomorrow"}, "now: 'tomorrow' is not an ISO-8601 time"),
])
def test_bad_configuration_is_one_line_naming_the_key(tmp_path, changes, expected):
    line = first_problem(changed(base_config(tmp_path), **changes))
    assert expected in line and "\n" not in line


def test_state_inside_the_archive_is_refused(tmp_path):
    config = base_config(tmp_path)
    destination = config["streams"]["DESI_SPECTRO_DATA"]["destination"]
    line = first_problem(changed(config, state=f"{destination}/state"))
    assert line.startswith("state: ") and "streams.DESI_SPECTRO_DATA.destination" in line


def test_configfile_replaces_the_bundled_default(site):
    """A production config must not inherit the demo stream from config.yaml."""
    site.exposure("00000001")
    result = site.run("-n")
    assert "demo/" not in result.stdout + result.stderr


def test_load_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("state: [unclosed\n")
    with pytest.raises(ConfigurationError, match=r"c.yaml: line 2 is not valid YAML"):
        load_yaml(bad)
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_yaml(tmp_path / "missing.yaml")
    bad.write_text(yaml.safe_dump(["a", "list"]))
    with pytest.raises(ConfigurationError, match="mapping"):
        load_yaml(bad)
    bad.write_bytes(b"state: /data/caf\xe9\n")  # Latin-1, as an old editor saves it
    with pytest.raises(ConfigurationError, match=r"c.yaml: byte 17 is not UTF-8 text; save"):
        load_yaml(bad)


def test_clock_is_utc():
    assert get_now({"now": "2026-12-31T23:30:00-07:00"}).isoformat() == \
        "2027-01-01T06:30:00+00:00"
    assert get_now({"now": "2026-12-31T23:30:00"}).tzinfo is not None
    assert get_now({"now": None}).utcoffset().total_seconds() == 0


@pytest.mark.parametrize("name", ["config.yaml", "examples/nersc.yaml"])
def test_bundled_configurations_are_valid(name):
    from conftest import REPO

    from scripts.configuration import describe_validation_error

    assert describe_validation_error(load_yaml(REPO / name), [name]) is None


# --- unit tests of the checks: called directly, as the Snakefile and common.smk do ---

S = "DESI_SPECTRO_DATA"


def base_config(root) -> dict:
    """A complete, valid configuration over directories under `root` (none made)."""
    return {
        "state": f"{root}/state",
        "now": "2026-11-28T16:00:00Z",
        "remote": {"host": "local", "checksum_lock": f"{root}/lock"},
        "backup": {"backend": "none"},
        "streams": {S: {"source": f"{root}/mountain/raw", "staging": f"{root}/staging",
                        "destination": f"{root}/archive", "hpss": "desi/spectro/data",
                        "checksum_file": "checksum-{exposure}.sha256sum"}},
    }


def first_problem(config: dict) -> str | None:
    """What a run would say: the schema's line, else the first check_configuration line."""
    from scripts.configuration import (
        check_configuration,
        describe_validation_error,
        with_defaults,
    )

    line = describe_validation_error(config, ["site.yaml"])
    if line is not None:
        return line
    try:
        check_configuration(with_defaults(config))
    except ConfigurationError as err:
        return str(err)
    return None


def changed(config: dict, **changes) -> dict:
    for dotted, value in changes.items():
        target = config
        *parents, key = dotted.split("__")
        for p in parents:
            target = target.setdefault(p, {})
        if value is KeyError:
            del target[key]
        else:
            target[key] = value
    return config


def test_the_base_configuration_is_valid(tmp_path):
    assert first_problem(base_config(tmp_path)) is None


@pytest.mark.parametrize("changes, expected", [
    ({"lookback_nights": 1000000},
     "site.yaml: lookback_nights: 1000000 is greater than the maximum of 3660"),
    ({"lookback_nights": 0}, "lookback_nights: 0 is less than the minimum of 1"),
    ({"alerts__late_after": 0}, "alerts.late_after: 0 is less than the minimum of 1"),
    ({"alerts__late_after": "30m"}, "alerts.late_after: '30m' is not of type 'integer'"),
    ({"metrics": 5}, "metrics: 5 is not of type 'string', 'null'"),
    ({"lookback_nights": True}, "lookback_nights: True is not of type 'integer'"),
    ({"remote__timeout": 1e12},
     "remote.timeout: 1000000000000.0 is greater than the maximum of 604800"),
    ({"remote__timeout": "1e12"},  # how YAML reads an unquoted 1e12
     "remote.timeout: '1e12' is not of type 'number'"),
    ({"remote__timeout": 0}, "remote.timeout: 0 is less than or equal to the minimum of 0"),
    ({"remote__timeout": float("inf")}, "remote.timeout: inf is greater than the maximum"),
    ({"remote__timeout": float("nan")}, "remote.timeout: nan is not a finite number"),
    ({"remote__transfer_timeout": 604801}, "remote.transfer_timeout: 604801 is greater"),
    ({"remote__listing_cache": -1}, "remote.listing_cache: -1 is less than the minimum of 0"),
    ({"remote__listing_cache": 10**7}, "remote.listing_cache: 10000000 is greater"),
    ({"backup__timeout": 10**9}, "backup.timeout: 1000000000 is greater"),
    ({"backup__status_timeout": 10**9}, "backup.status_timeout: 1000000000 is greater"),
    ({"backup__status_timeout": float("nan")}, "backup.status_timeout: nan is not a finite"),
    ({"verify__max_attempts": 101}, "verify.max_attempts: 101 is greater than the maximum"),
    ({"verify__max_attempts": 0}, "verify.max_attempts: 0 is less than the minimum of 1"),
    ({"verify__threads": 257}, "verify.threads: 257 is greater than the maximum of 256"),
    ({"verify__threads": 0}, "verify.threads: 0 is less than the minimum of 1"),
    ({"alerts__unreachable_runs": 10**6}, "alerts.unreachable_runs: 1000000 is greater"),
    ({"alerts__unreachable_runs": 0}, "alerts.unreachable_runs: 0 is less than the minimum"),
    ({"catchup_hour": 24}, "catchup_hour: 24 is greater than the maximum of 23"),
    ({"backup__backend": "tar"},
     "backup.archive: is required when backup.backend is tar"),
    ({"backup__backend": "tar", "backup__archive": None},  # as Snakemake's defaults fill it
     "backup.archive: is required when backup.backend is tar"),
    ({"backup__backend": "tar", "backup__archive": ""},
     "backup.archive: is required when backup.backend is tar"),
    ({f"streams__{S}__data_root": ""}, f"streams.{S}.data_root: '' should be non-empty"),
    ({f"streams__{S}__data_root": 5}, f"streams.{S}.data_root: 5 is not of type"),
    ({"now": 5}, "now: 5 is not an ISO-8601 time"),
    ({"now": True}, "now: True is not an ISO-8601 time"),
    ({"now": ["2026-11-28"]}, "now: ['2026-11-28'] is not an ISO-8601 time"),
    ({"now": "0001-01-01T00:00:00+01:00"}, "now: 0001-01-01T00:00:00+01:00 is outside the"
     " years 1970-2999"),
    ({"now": dt.datetime(1, 1, 1)}, "now: 0001-01-01 00:00:00 is outside the years"),
])
def test_out_of_bounds_values_are_one_line_naming_the_key(tmp_path, changes, expected):
    line = first_problem(changed(base_config(tmp_path), **changes))
    assert line is not None and expected in line, line
    assert "\n" not in line


@pytest.mark.parametrize("changes", [
    {"lookback_nights": 3660},
    {"remote__timeout": 604800, "remote__transfer_timeout": 0.5},
    {"remote__listing_cache": 0},
    {"verify__max_attempts": 100, "verify__threads": 256},
    {"alerts__unreachable_runs": 10000},
    {"backup__backend": "tar", "backup__archive": "tape"},
    {"backup__backend": "htar"},  # no archive needed
    {f"streams__{S}__data_root": "/data/dts/exposures/data"},
    {f"streams__{S}__data_root": None},
    {f"streams__{S}__checksum_file": "..{night}-{exposure}.sha256"},  # a plain name
])
def test_values_at_the_bounds_are_accepted(tmp_path, changes):
    config = changed(base_config(tmp_path), **changes)
    if config["backup"].get("archive") == "tape":
        config["backup"]["archive"] = str(tmp_path / "tape")
    assert first_problem(config) is None


@pytest.mark.parametrize("value", [
    "../checksum-{exposure}", "sub/checksum-{exposure}.sha256sum", "/etc/passwd",
    "{night}/{exposure}", ".", "..", "checksum\n{exposure}", "checksum\0{exposure}",
])
def test_checksum_file_must_be_a_plain_file_name(tmp_path, value):
    line = first_problem(changed(base_config(tmp_path),
                                 **{f"streams__{S}__checksum_file": value}))
    assert line.startswith(f"streams.{S}.checksum_file: ")
    assert "must be a plain file name inside the exposure" in line and "\n" not in line


def test_checksum_file_fields_and_emptiness_are_the_schema_s(tmp_path):
    from scripts.configuration import checksum_file_problem

    for value in ("", "checksum-{expid}"):
        line = first_problem(changed(base_config(tmp_path),
                                     **{f"streams__{S}__checksum_file": value}))
        assert line.startswith(f"site.yaml: streams.{S}.checksum_file: "), line
    assert "may use only the fields" in checksum_file_problem("checksum-{expid}")
    assert checksum_file_problem("checksum-{night}-{exposure}.sha256sum") is None


def roles(root):
    """Paths under `root` that the path checks compare."""
    return {name: str(root / name) for name in
            ("mountain", "staging", "archive", "state", "tape", "other")}


P = f"streams.{S}"


@pytest.mark.parametrize("changes, expected", [
    # the reproductions
    ({f"streams__{S}__destination": "{mountain}/raw"},
     f"{P}.destination: {{mountain}}/raw is the same directory as {P}.source;"),
    ({"state": "{archive}/state"}, f"state: {{archive}}/state is inside {P}.destination"),
    ({f"streams__{S}__staging": "{archive}"},
     f"{P}.destination: {{archive}} is the same directory as {P}.staging;"),
    # a directory inside another, either way round
    ({f"streams__{S}__staging": "{archive}/staging"},
     f"{P}.staging: {{archive}}/staging is inside {P}.destination ({{archive}})"),
    ({f"streams__{S}__destination": "{staging}/archive"},
     f"{P}.destination: {{staging}}/archive is inside {P}.staging ({{staging}})"),
    ({f"streams__{S}__destination": "{mountain}/raw/archive"},
     f"{P}.destination: {{mountain}}/raw/archive is inside {P}.source"),
    ({f"streams__{S}__source": "{archive}/raw"}, f"{P}.source: {{archive}}/raw is inside"),
    ({f"streams__{S}__destination": "{archive}/", f"streams__{S}__staging": "{archive}"},
     f"{P}.destination: {{archive}}/ is the same directory as {P}.staging"),
    # the tar backend's archive
    ({"backup__backend": "tar", "backup__archive": "{archive}/tape"},
     f"backup.archive: {{archive}}/tape is inside {P}.destination"),
    ({"backup__backend": "tar", "backup__archive": "{staging}"},
     f"backup.archive: {{staging}} is the same directory as {P}.staging"),
    # state, status and logs: not equal, inside or containing
    ({"state": "{staging}"}, f"state: {{staging}} is the same directory as {P}.staging"),
    ({"state": "{root}"}, f"state: {{root}} contains {P}.source ({{mountain}}/raw)"),
    ({"status": "{archive}/www"}, f"status: {{archive}}/www is inside {P}.destination"),
    ({"logs": "{staging}"}, f"logs: {{staging}} is the same directory as {P}.staging"),
    ({"state": "{archive}/state", "status": "{other}/www"}, "state: {archive}/state is inside"),
    ({"backup__backend": "tar", "backup__archive": "{state}/tape"},
     "state: {state} contains backup.archive ({state}/tape)"),
    ({"state": "/", "status": "{other}/www", "logs": "{other}/logs"},
     f"state: / contains {P}.source"),
    ({"logs": "{archive}/logs"}, f"logs: {{archive}}/logs is inside {P}.destination"),
    # the metrics file's directory (node_exporter's textfile directory)
    ({"metrics": "{archive}/desitransfer.prom"},
     f"metrics: {{archive}} is the same directory as {P}.destination"),
    ({"metrics": "{staging}/x/desitransfer.prom"}, "metrics: {staging}/x is inside"),
])
def test_overlapping_directories_are_refused(tmp_path, changes, expected):
    names = {**roles(tmp_path), "root": str(tmp_path)}
    config = changed(base_config(tmp_path),
                     **{k: v.format(**names) if isinstance(v, str) else v
                        for k, v in changes.items()})
    line = first_problem(config)
    assert line is not None and expected.format(**names) in line, line
    assert "\n" not in line


def test_a_second_stream_may_not_share_or_nest_directories(tmp_path):
    config = base_config(tmp_path)
    other = {"source": f"{tmp_path}/mountain/other", "staging": f"{tmp_path}/staging2",
             "destination": f"{tmp_path}/archive2", "hpss": "x",
             "checksum_file": "checksum-{exposure}.sha256sum"}
    config["streams"]["OTHER"] = dict(other)
    assert first_problem(config) is None
    config["streams"]["OTHER"]["destination"] = f"{tmp_path}/archive"
    assert f"streams.OTHER.destination: {tmp_path}/archive is the same directory as " \
        f"{P}.destination" in first_problem(config)
    config["streams"]["OTHER"] = {**other, "staging": f"{tmp_path}/archive/staging"}
    assert f"streams.OTHER.staging: {tmp_path}/archive/staging is inside {P}.destination" \
        in first_problem(config)
    config["streams"]["OTHER"] = {**other, "source": f"{tmp_path}/mountain/raw"}
    assert f"streams.OTHER.source: {tmp_path}/mountain/raw is the same directory as " \
        f"{P}.source" in first_problem(config)


def test_siblings_with_a_common_prefix_are_apart(tmp_path):
    config = changed(base_config(tmp_path), **{f"streams__{S}__staging": f"{tmp_path}/archive2",
                                               "state": f"{tmp_path}/archive-state"})
    assert first_problem(config) is None


def test_a_remote_source_is_not_a_local_directory(tmp_path):
    config = changed(base_config(tmp_path), remote__host="dts",
                     **{f"streams__{S}__source": f"{tmp_path}/archive"})
    assert first_problem(config) is None


def test_a_symlink_that_makes_two_directories_one_is_caught(tmp_path):
    (tmp_path / "mountain" / "raw").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "mountain")
    config = changed(base_config(tmp_path),
                     **{f"streams__{S}__destination": f"{tmp_path}/link/raw"})
    line = first_problem(config)
    assert line == (
        f"{P}.destination: {tmp_path}/link/raw (resolved: {tmp_path}/mountain/raw) is the"
        f" same directory as {P}.source; source, staging, destination and backup.archive"
        " each need a directory of their own, none inside another")
    (tmp_path / "state-link").symlink_to(tmp_path / "staging")
    config = changed(base_config(tmp_path), state=f"{tmp_path}/state-link/markers")
    assert first_problem(config).startswith(
        f"state: {tmp_path}/state-link/markers (resolved: {tmp_path}/staging/markers) is"
        f" inside {P}.staging")


def test_relative_paths_are_compared_from_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = changed(base_config(tmp_path), **{f"streams__{S}__destination": "archive",
                                               f"streams__{S}__staging": "./x/../archive"})
    assert f"{P}.destination: archive is the same directory as {P}.staging" in \
        first_problem(config)
    # ".." after a symlink goes up from where the link points, as the kernel does it.
    (tmp_path / "deep" / "er").mkdir(parents=True)
    (tmp_path / "hop").symlink_to(tmp_path / "deep" / "er")
    config = changed(base_config(tmp_path), **{f"streams__{S}__staging": "hop/../archive"})
    assert first_problem(config) is None
    config = changed(base_config(tmp_path), **{f"streams__{S}__staging": "hop/../../archive"})
    assert f"{P}.destination: {tmp_path}/archive is the same directory as {P}.staging" in \
        first_problem(config)


def test_state_may_hold_status_and_logs(tmp_path):
    config = changed(base_config(tmp_path), status=f"{tmp_path}/state/www",
                     logs=f"{tmp_path}/state/logs")
    assert first_problem(config) is None


def test_now_may_be_a_yaml_timestamp(tmp_path):
    from scripts.configuration import describe_validation_error, get_streams, with_defaults

    path = tmp_path / "c.yaml"
    config = base_config(tmp_path)
    del config["now"]
    path.write_text(yaml.safe_dump(config) + "now: 2026-11-28T16:00:00Z\n")
    loaded = load_yaml(path)
    assert isinstance(loaded["now"], dt.datetime)
    assert describe_validation_error(loaded, [str(path)]) is None
    assert first_problem(loaded) is None
    assert get_now(loaded) == dt.datetime(2026, 11, 28, 16, tzinfo=dt.UTC)
    assert get_now({"now": dt.datetime(2026, 11, 28, 9)}).hour == 9  # naive: UTC
    assert get_now({"now": dt.date(2026, 11, 28)}) == dt.datetime(2026, 11, 28, tzinfo=dt.UTC)
    assert get_streams(with_defaults(loaded))[S].data_root is None


def test_data_root_reaches_the_stream(tmp_path):
    from scripts.configuration import get_streams, with_defaults

    config = changed(base_config(tmp_path), **{f"streams__{S}__data_root": "/mnt/data"})
    assert get_streams(with_defaults(config))[S].data_root == "/mnt/data"


def test_destination_equal_to_a_local_source_is_refused_before_anything_runs(site):
    """The issue's case end to end: the run would have made the mountain read-only."""
    site.exposure("00001000")
    site.exposure("00001001")
    modes = {p: p.lstat().st_mode for p in site.mountain.rglob("*")}
    site.config["streams"][STREAM]["destination"] = str(site.source)
    result = site.run(check=False)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("desitransfer:")
             and not line.startswith("desitransfer: configuration ")]  # the file read
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"desitransfer: {site.config_file}: "
                               f"streams.{STREAM}.destination: {site.source} is the same"
                               f" directory as streams.{STREAM}.source;")
    assert "Traceback" not in result.stderr
    assert {p: p.lstat().st_mode for p in site.mountain.rglob("*")} == modes
    assert not list(site.root.rglob("*.installed"))


def test_defaults_are_copies_the_cached_schema_never_changes():
    from scripts.configuration import with_defaults

    first = with_defaults({"remote": {"host": "mountain"}})
    first["alerts"]["to"].append("someone@example.org")
    first["remote"]["ssh"].append("-v")
    second = with_defaults({"remote": {"host": "mountain"}})
    assert second["alerts"]["to"] == []
    assert "-v" not in second["remote"]["ssh"]


# --- ${VAR}, $VAR and ~ in path values (DESI's style) ---

ENV = {"DESI_ROOT": "/global/cfs/cdirs/desi", "DESI_SPECTRO_DATA": "/data/raw", "HOME": "/home/op"}


def test_variables_and_home_are_expanded_in_every_path_value(monkeypatch):
    from scripts.configuration import expand_paths

    monkeypatch.setenv("HOME", "/home/op")
    config = {"state": "${DESI_ROOT}/state", "kill_file": "~/stop_desi_transfer",
              "logs": None, "remote": {"host": "dts", "checksum_lock": "/tmp/checksum-running",
                                       "ssh": ["ssh", "-i", "~/.ssh/desi", "-q"]},
              "backup": {"hpss_bin": "$DESI_ROOT/bin"},
              "streams": {"S": {"source": "/data/dts/exposures/raw",
                                "staging": "${DESI_ROOT}/spectro/staging/raw",
                                "destination": "${DESI_SPECTRO_DATA}", "hpss": "desi/spectro",
                                "checksum_file": "checksum-{exposure}.sha256sum"}}}
    out = expand_paths(config, ENV)
    assert out["state"] == "/global/cfs/cdirs/desi/state"
    assert out["kill_file"] == "/home/op/stop_desi_transfer"
    assert out["backup"]["hpss_bin"] == "/global/cfs/cdirs/desi/bin"
    assert out["streams"]["S"]["staging"] == "/global/cfs/cdirs/desi/spectro/staging/raw"
    assert out["streams"]["S"]["destination"] == "/data/raw"
    assert out["remote"]["ssh"] == ["ssh", "-i", "/home/op/.ssh/desi", "-q"]
    assert config["state"] == "${DESI_ROOT}/state"  # a copy: the input is left alone


@pytest.mark.parametrize("key, value, expected", [
    ("state", "${NOPE}/state", "state: ${NOPE} is not set in the environment; export NOPE"),
    ("state", "$NOPE/state", "state: $NOPE is not set in the environment; export NOPE"),
    ("state", "${EMPTY}/state", "state: ${EMPTY} is set but empty"),
    ("state", "${DESI_ROOT/state", "still holds '$' after expansion"),
    ("state", "${a:b}/state", "state: ${a:b} is not a variable"),
    ("state", "/data/~odd", "still holds '~' after expansion"),
    ("state", "~nosuchuser12345/state", "still holds '~' after expansion"),
    ("streams.S.source", "~/raw", "this machine's home directory, not the mountain's"),
])
def test_what_cannot_be_expanded_is_refused_in_one_line(key, value, expected):
    from scripts.configuration import expand_paths

    config = {"state": "/s", "remote": {"host": "dts"},
              "streams": {"S": {"source": "/data/raw", "staging": "/st", "destination": "/d",
                                "hpss": "h", "checksum_file": "c"}}}
    parent, *path = key.split(".")
    target = config
    for part in ([parent, *path][:-1]):
        target = target[part]
    target[([parent, *path])[-1]] = value
    with pytest.raises(ConfigurationError) as err:
        expand_paths(config, {**ENV, "EMPTY": ""})
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith(f"{key}: ")


def test_an_invalid_configuration_is_left_to_the_schema(tmp_path):
    from scripts.configuration import expand_paths

    # wrong types are not expanded (nor refused) here: the validation names them
    assert expand_paths({"state": 5, "streams": ["x"], "remote": "dts"}, ENV) == \
        {"state": 5, "streams": ["x"], "remote": "dts"}
