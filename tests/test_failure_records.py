"""Whatever happens inside a rule job, it ends with its marker or its failure record
(scripts/job.py): an exception is a record naming the root cause, not an empty log."""

from __future__ import annotations

import errno

from conftest import NIGHT

from scripts.job import describe_exception


def test_an_exception_in_install_leaves_a_failure_record_and_loses_nothing(site):
    site.exposure("00006000")
    site.destination.mkdir()
    (site.destination / NIGHT).write_text("not a directory")  # install cannot make the night
    result = site.run(check=False)
    assert result.returncode != 0
    failure = site.failure(NIGHT, "00006000", "installed")
    assert failure["exception"] == "FileExistsError" and failure["attempts"] == 1
    assert str(site.destination / NIGHT) in failure["reason"]
    assert "install_exposure failed: File exists" in result.stderr
    assert (site.staging / NIGHT / "00006000" / "desi-00006000.fits.fz").is_file()
    log = (site.state / "logs" / "DESI_SPECTRO_DATA" / NIGHT / "00006000.installed.log")
    assert "Traceback" in log.read_text()  # the whole story stays in the rule log
    (site.destination / NIGHT).unlink()
    site.run()
    assert site.installed(NIGHT, "00006000").is_dir()
    assert not (site.state / "DESI_SPECTRO_DATA" / NIGHT / "00006000.installed.failed").exists()


def test_reasons_name_the_root_cause():
    full = OSError(errno.ENOSPC, "No space left on device", "/staging/20261127/00000001")
    assert describe_exception(full) == \
        "no space left on device (/staging/20261127/00000001)"
    assert describe_exception(OSError(errno.EROFS, "Read-only file system", "/a")) == \
        "read-only file system (/a)"
    assert describe_exception(PermissionError(errno.EACCES, "Permission denied", "/b")) == \
        "permission denied (/b)"
    assert describe_exception(KeyError("x")).startswith("unexpected KeyError")
