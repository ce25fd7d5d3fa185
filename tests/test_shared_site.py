"""A real site: the staging area is shared with a Unix group, and the mountain sends odd
things (issue #17, items 1, 4, 5, 11, 12).

The group member is a second real uid (65534, via ``setpriv``) in the staging area's
group; the workflow runs as the test's user. Everything else is real: rsync, the
workflow's own jobs, the tar backend.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest
from conftest import NIGHT, REPO, STREAM, Site, require_tool
from test_archive_immutable import AFTER_BACKUP, BEFORE_CATCHUP, rewrite, tar_backend
from test_exposure_workflow import tree

from scripts.configuration import get_streams, with_defaults
from scripts.own_dirs import remove_at

MEMBER = 65534  # the other member of the group: nobody, with the staging area's group


def as_member(*command: str) -> None:
    """Run `command` as the other group member (a real second uid)."""
    subprocess.run(["setpriv", f"--reuid={MEMBER}", f"--regid={MEMBER}", "--clear-groups",
                    *command], check=True)


@pytest.fixture
def shared(tmp_path) -> Site:
    """A site in a directory the other uid can reach, its staging area shared with the
    group of uid 65534 (mode 2770), as at NERSC."""
    require_tool("rsync")
    require_tool("setpriv")
    top = Path(tempfile.mkdtemp(prefix="desitransfer-shared-"))
    os.chmod(top, 0o711)
    site = Site(top / "site")
    os.chmod(site.root, 0o711)
    site.staging.mkdir()
    os.chown(site.staging, -1, MEMBER)
    os.chmod(site.staging, 0o2770)
    yield site
    if os.environ.get("KEEP_SHARED_SITE"):
        return
    fd = os.open(top.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        remove_at(fd, top.name)
    finally:
        os.close(fd)


def outside_dir(site: Site, name: str) -> Path:
    """A directory of the other member's, outside everything the workflow uses."""
    path = site.root / name
    path.mkdir()
    (path / "theirs.txt").write_text("not the workflow's")
    os.chown(path, MEMBER, MEMBER)
    os.chown(path / "theirs.txt", MEMBER, MEMBER)
    os.chmod(path, 0o777)
    return path


def snapshot(top: Path) -> dict[str, tuple[int, str]]:
    return tree(top)


def test_a_link_planted_where_the_catch_up_builds_its_copy_never_touches_the_archive(shared):
    site = shared
    tar_backend(site)
    site.config["now"] = BEFORE_CATCHUP
    data = site.exposure("00006000")
    site.run()
    installed = site.installed(NIGHT, "00006000")
    before = snapshot(installed)
    # A late file at the mountain: the catch-up will rebuild the exposure beside it.
    (data / "late-00006000.json").write_text('{"late": 1}')
    from test_archive_immutable import write_checksums
    write_checksums(data, "00006000")
    as_member("ln", "-s", str(site.destination), str(site.staging / ".catch-up"))
    site.config["now"] = AFTER_BACKUP
    site.run()
    assert installed.is_dir(), "the installed exposure was deleted through the planted link"
    after = snapshot(installed)
    assert {k: v for k, v in after.items() if k in before and not k.startswith("checksum")} \
        == {k: v for k, v in before.items() if not k.startswith("checksum")}
    assert "late-00006000.json" in after  # the update went in, whole and verified
    assert site.marker(NIGHT, None, "backedup").exists()
    assert not (site.staging / ".catch-up").is_symlink()
    assert sorted(p.name for p in site.destination.iterdir()) == [".desitransfer", NIGHT]
    log = (site.state / "logs").rglob("*caughtup*")
    assert any("removed a symbolic link" in p.read_text() for p in log)


def test_a_night_link_planted_in_staging_sends_nothing_outside(shared):
    site = shared
    theirs = outside_dir(site, "elsewhere")
    as_member("ln", "-s", str(theirs), str(site.staging / NIGHT))
    site.exposure("00006010")
    site.run()
    assert sorted(p.name for p in theirs.iterdir()) == ["theirs.txt"]
    assert site.installed(NIGHT, "00006010").is_dir()
    assert (site.installed(NIGHT, "00006010") / "desi-00006010.fits.fz").is_file()


def test_a_night_directory_of_another_member_in_staging_is_refused(shared):
    site = shared
    as_member("mkdir", "-m", "0777", str(site.staging / NIGHT))
    site.exposure("00006020")
    site.run(check=False)
    failure = site.failure(NIGHT, "00006020", "staged")
    assert "owned by" in failure["reason"] and str(site.staging / NIGHT) in failure["reason"]
    assert "\n" not in failure["reason"]
    assert not list((site.staging / NIGHT).iterdir())  # nothing written into theirs
    assert not site.installed(NIGHT, "00006020").exists()


def test_a_staging_area_not_owned_by_the_workflows_user_is_refused(shared):
    site = shared
    os.chown(site.staging, MEMBER, MEMBER)
    site.exposure("00006030")
    site.run(check=False)
    failure = site.failure(NIGHT, "00006030", "staged")
    assert f"streams.{STREAM}.staging {site.staging} is owned by" in failure["reason"]
    assert not list(site.staging.iterdir())
    assert not site.installed(NIGHT, "00006030").exists()


def test_held_exposures_are_out_of_their_nights_catch_up_and_backup(site):
    tarball = tar_backend(site)
    site.config["now"] = BEFORE_CATCHUP
    private = site.root / "home" / ".ssh"
    private.mkdir(parents=True)
    (private / "id_rsa").write_text("PRIVATE KEY")
    site.exposure("00006040")
    looped = site.exposure("00006041")
    (looped / "loop").symlink_to("loop")  # an inner link loop
    outward = site.exposure("00006042")
    (outward / "calib").symlink_to(private.parent)  # a link inside leading outside
    site.run(check=False)
    for expid in ("00006041", "00006042"):
        assert site.failure(NIGHT, expid, "staged")["held"]
    site.config["now"] = AFTER_BACKUP
    site.run(check=False)
    caught_up = site.record(NIGHT, None, "caughtup")
    assert not [f for f in caught_up["changed_files"] if not f.startswith("00006040/")]
    assert site.marker(NIGHT, None, "backedup").exists(), "the night never went to tape"
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
    assert any(n.startswith(f"{NIGHT}/00006040/") for n in names)
    assert not any("00006041" in n or "00006042" in n or "id_rsa" in n for n in names)


def mountain_as(site: Site, uid: int) -> None:
    """Reach the mountain as another user, as ssh would: a stand-in for ssh (host
    ``mountain``) that runs the remote command as `uid`, so that the mountain's own
    permissions apply (the test's user may read everything)."""
    ssh = site.root / "ssh-as-mountain-user"
    ssh.write_text(
        "#!/bin/sh\n"
        "# ssh [-o OPT]... [-p PORT] [-i KEY] HOST COMMAND...\n"
        "while [ $# -gt 0 ]; do case \"$1\" in\n"
        "  -o|-p|-i|-l) shift 2 ;; -*) shift ;; *) break ;; esac; done\n"
        "shift  # the host\n"
        f"exec setpriv --reuid={uid} --regid={uid} --clear-groups sh -c \"$*\"\n")
    ssh.chmod(0o755)
    site.config["remote"].update(host="mountain", ssh=[str(ssh)])
    for path in (site.root, site.mountain, *site.mountain.rglob("*")):
        if not path.is_symlink():
            os.chmod(path, os.stat(path).st_mode | 0o005)


def test_an_unreadable_directory_at_the_mountain_holds_the_exposure(shared):
    site = shared
    site.exposure("00006050")
    data = site.exposure("00006051")
    mountain_as(site, MEMBER)
    os.chmod(data, 0o700)  # the mountain's user cannot read it
    for _ in range(site.config["verify"]["max_attempts"]):
        site.run(check=False)
    assert site.installed(NIGHT, "00006050").is_dir()
    failure = site.failure(NIGHT, "00006051", "staged")
    assert failure["held"] and not failure["environment"]
    assert "cannot be read" in failure["reason"] or "permission denied" in failure["reason"]


def test_a_directory_swapped_for_a_link_during_the_copy_is_never_installed(site):
    tarball = tar_backend(site)
    site.config["now"] = AFTER_BACKUP
    private = site.root / "home" / ".ssh"
    private.mkdir(parents=True)
    (private / "id_rsa").write_text("PRIVATE KEY")
    data = site.exposure("00006060")
    site.exposure("00006061")
    # The mountain races the workflow: right after the link check, before the copy,
    # the exposure's directory becomes a link to a private directory (once).
    real_rsync = shutil.which("rsync")
    bin_dir = site.root / "bin"
    bin_dir.mkdir()
    swapped = site.root / "swapped"
    (bin_dir / "rsync").write_text(
        "#!/bin/sh\n"
        f"case \"$*\" in *--dry-run*) ;; *{data}/*)\n"
        f"  if [ ! -e {swapped} ]; then touch {swapped}; mv {data} {data}.orig;"
        f" ln -s {private} {data}; fi ;; esac\n"
        f"exec {real_rsync} \"$@\"\n")
    (bin_dir / "rsync").chmod(0o755)
    site.env["PATH"] = f"{bin_dir}:{site.env['PATH']}"
    for _ in range(3):
        site.run(check=False)
    assert swapped.exists()
    for area in (site.staging, site.destination):
        assert not list(area.rglob("id_rsa")), f"the private key reached {area}"
    failure = site.failure(NIGHT, "00006060", "staged")
    assert failure["held"]
    assert not site.marker(NIGHT, "00006060", "installed").exists()
    assert site.installed(NIGHT, "00006061").is_dir()  # the night goes on without it
    assert site.marker(NIGHT, None, "backedup").exists()
    with tarfile.open(tarball) as tar:
        assert not any("id_rsa" in n or "00006060" in n for n in tar.getnames())


def test_a_catch_up_that_verifies_a_policy_installed_exposure_clears_its_failure(site):
    site.config["now"] = BEFORE_CATCHUP
    good = os.urandom(3000)
    data = site.exposure("00006070", {"desi-00006070.fits.fz": good, "b.fits": b"b" * 100})
    victim = data / "desi-00006070.fits.fz"
    victim.write_bytes(b"x" + good[1:])  # bad at the mountain: installed by policy
    site.run()
    assert site.record(NIGHT, "00006070", "checksummed")["outcome"] == "failed"
    old_failure = site.failure(NIGHT, "00006070", "checksummed")
    rewrite(victim, good)  # the mountain fixed it
    site.config["now"] = AFTER_BACKUP
    site.run()
    record = site.record(NIGHT, "00006070", "checksummed")
    assert record["outcome"] == "verified"
    assert not Path(f"{site.marker(NIGHT, '00006070', 'checksummed')}.failed").exists()
    assert record["history"][-1]["failure"] == old_failure
    assert (site.installed(NIGHT, "00006070") / "desi-00006070.fits.fz").read_bytes() == good
    problems = subprocess.run(
        [sys.executable, "-m", "scripts.status", "--config", str(site.write_config()),
         "--failures", "--json"], cwd=REPO, capture_output=True, text=True, check=True)
    assert not [p for p in json.loads(problems.stdout) if "00006070" in p["item"]]
    year_files = list(site.root.rglob("desi_transfer_status_2026.json"))
    assert year_files
    rows = json.loads(year_files[0].read_text())[NIGHT][str(6070)]
    assert [r[1] for r in rows if r[0] == 1] == [1]  # DESI's checksum row is green


def test_a_journal_of_a_swap_that_never_happened_records_no_update(site):
    site.config["now"] = BEFORE_CATCHUP
    site.exposure("00006080")
    site.run()
    config = with_defaults(json.loads(json.dumps(site.config)))
    stream = get_streams(config)[STREAM]
    installed = site.installed(NIGHT, "00006080")
    checksum = installed / "checksum-00006080.sha256sum"
    # What a run killed between the catch-up's copy and its swap leaves: the journal
    # of a swap that did not happen (the side copy was never swapped in, and the
    # checksum file did not change: only a data file did).
    side = site.staging / ".catch-up" / NIGHT / "00006080"
    side.mkdir(parents=True)
    st = os.stat(side)
    journal = {"time": "2026-11-28T11:00:00Z", "changed_files": ["00006080/sky.fits.fz"],
               "checksum_sha256": hashlib.sha256(checksum.read_bytes()).hexdigest(),
               "identity": [st.st_dev, st.st_ino]}
    site.marker(NIGHT, "00006080", "updating").write_text(json.dumps(journal))
    from scripts.updates import finish_interrupted_updates

    finish_interrupted_updates(config, stream, NIGHT)
    assert not site.marker(NIGHT, "00006080", "updated").exists()
    assert site.record(NIGHT, "00006080", "installed").get("how") != "replaced by a catch-up"
    assert not site.marker(NIGHT, "00006080", "updating").exists()
