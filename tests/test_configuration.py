"""The configuration: schema validation with one-line errors, through the real workflow."""

from __future__ import annotations

import pytest
import yaml

from scripts.configuration import ConfigurationError, get_now, load_yaml


def one_line_error(site, **changes) -> str:
    for dotted, value in changes.items():
        target = site.config
        *parents, key = dotted.split("__")
        for p in parents:
            target = target[p]
        if value is KeyError:
            del target[key]
        else:
            target[key] = value
    result = site.run("-n", check=False)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("desitransfer:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert str(site.config_file) in lines[0]
    return lines[0]


@pytest.mark.parametrize("changes, expected", [
    ({"remote__host": KeyError}, "remote.host: is required"),
    ({"lookback_nights": "thirty"}, "lookback_nights: 'thirty' is not of type 'integer'"),
    ({"verify__on_failure": "ignore"}, "verify.on_failure: 'ignore' is not one of"),
    ({"streams__DESI_SPECTRO_DATA__checksum_file": "checksum-{expid}.sha256sum"},
     "may use only the fields {night} and {exposure}"),
    ({"streams__DESI_SPECTRO_DATA__destinaton": "/x"}, "unknown key"),
    ({"now": "tomorrow"}, "now: 'tomorrow' is not an ISO-8601 time"),
])
def test_bad_configuration_stops_with_one_line(site, changes, expected):
    assert expected in one_line_error(site, **changes)


def test_state_inside_the_archive_is_refused(site):
    line = one_line_error(site, state=str(site.destination / "state"))
    assert "put the state directory outside the archive" in line


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
