"""The status page, rendered by a real headless Chromium (Debian's ``chromium``)."""

from __future__ import annotations

import datetime as dt
import functools
import html.parser
import http.server
import json
import re
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import NIGHT, REPO
from PIL import Image
from test_exposure_workflow import corrupt_at_source
from test_status import DEGRADED, MISMATCH, STREAM, build_state

import scripts.status as status
from scripts.lanes import activity_path
from scripts.markers import write_json_atomic
from scripts.mountain import make_exposure
from scripts.run_lock import try_lock
from scripts.status.page import render
from scripts.status.plots import nice_ticks

NIGHTS = ["20270103", "20270102", "20270101", "20261231", "20261230", "20261101"]
NIGHT_CLASSES = {"20270103": "progress", "20270102": "attention", "20270101": "attention",
                 "20261231": "done", "20261230": "attention", "20261101": "attention"}
# 20261230 waits for HPSS and 20270101 for an exposure: both backups are more than a
# day late (alerts.backup_late_after), so both nights are late data.
ATTENTION_BG, DONE_BG = (0xFF, 0xEB, 0xE9), (0xDA, 0xFB, 0xE1)


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    """Run Debian's headless Chromium; fail (not skip) with the install command."""
    binary = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(binary).exists():
        pytest.fail("chromium is not installed: run `apt-get install -y chromium` (Debian's"
                    " package; .ci/run installs it)", pytrace=False)
    command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--hide-scrollbars",
               "--force-device-scale-factor=1", f"--user-data-dir={profile}", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> dict:
    """The known state's page, its DOM as Chromium built it, and a screenshot.

    The page holds no script at all (`test_page_is_self_contained`), so what Chromium
    shows here is what a browser with JavaScript off shows. (Chromium's own switch,
    ``--blink-settings=scriptEnabled=false``, also stops --dump-dom and --screenshot,
    which run on the page's script engine.)
    """
    root = tmp_path_factory.mktemp("page")
    config = build_state(root)
    files = status.write_status(config)
    index = files[-1]
    assert index == Path(config["status"], "index.html")
    dom = chromium("--dump-dom", index.as_uri(), profile=root / "profile").stdout
    png = root / "page.png"
    chromium(f"--screenshot={png}", "--window-size=1200,900", index.as_uri(),
             profile=root / "profile")
    return {"config": config, "index": index, "html": index.read_text(), "dom": dom,
            "png": png}


class Elements(html.parser.HTMLParser):
    """Every element with an id: its tag, classes and the text inside it."""

    def __init__(self):
        super().__init__()
        self.by_id: dict[str, dict] = {}
        self.open: list[dict] = []
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag in ("meta", "br", "img", "input", "link", "circle", "rect", "line"):
            return
        element = {"tag": tag, "class": (attrs.get("class") or "").split(), "text": ""}
        if "id" in attrs:
            self.by_id[attrs["id"]] = element
        self.open.append(element)

    def handle_endtag(self, tag):
        if tag in ("meta", "br", "img", "input", "link", "circle", "rect", "line"):
            return
        while self.open and self.open.pop()["tag"] != tag:
            pass

    def handle_data(self, data):
        for element in self.open:
            element["text"] += data


def parse(text: str) -> Elements:
    parser = Elements()
    parser.feed(text)
    return parser


def test_dom_shows_the_nights_newest_first_coloured_by_state(page):
    dom = parse(page["dom"])
    nights = [i for i in dom.by_id if i.startswith(f"n-{STREAM}-")]
    assert nights == [f"n-{STREAM}-{n}" for n in NIGHTS]
    for night, css in NIGHT_CLASSES.items():
        element = dom.by_id[f"n-{STREAM}-{night}"]
        assert element["tag"] == "details" and css in element["class"], night
    rows = {i.rsplit("-", 1)[1]: e for i, e in dom.by_id.items()
            if i.startswith(f"e-{STREAM}-20270101-")}
    assert sorted(rows) == ["00001300", "00001301", "00001302", "00001303"]
    assert "held" in rows["00001302"]["text"] and MISMATCH in rows["00001302"]["text"]
    assert "attention" in rows["00001302"]["class"] and "done" in rows["00001300"]["class"]
    assert "01-02 03:00:06" in rows["00001300"]["text"]  # installed time, UTC


def test_dom_shows_what_needs_a_person_and_the_backlog(page):
    dom = parse(page["dom"])
    problems = dom.by_id["problems"]["text"]
    for item in ("20270101/00001301", "20270101/00001302", "20270102", "20261101"):
        assert item in problems
    assert MISMATCH in problems and "HTAR backup failed (status 70)" in problems
    backlog = dom.by_id["backlog"]["text"]
    assert f"HPSS inactive: {DEGRADED}" in backlog
    assert "waiting for 1 exposure(s) to be installed: 00001303" in backlog
    late = dom.by_id["late"]["text"]
    assert "20261230" in late and "20270101" in late and "not on tape" in late
    assert "20270102" not in late  # its backup is due for an hour only
    assert dom.by_id["late-card"]["text"].startswith("Late data2")  # label, then the count


def test_plots_draw_the_nights_and_exposures(page):
    tags = parse(page["dom"]).tags
    classes = [attrs.get("class") for _, attrs in tags]
    # Volume: the five nights with installed data; latency: the nine installed
    # exposures; throughput: the six nights with an rsync record.
    assert classes.count("volume") == 5
    assert classes.count("latency") == 9
    assert classes.count("throughput") == 6
    assert "From the start of the exposure's rsync" in page["dom"]


def test_page_is_self_contained(page):
    text = page["html"]
    assert not re.search(r"<script|<link|<img|<iframe|@import|url\(", text, re.I)
    for tag, attrs in parse(text).tags:
        for name in ("href", "src"):
            value = attrs.get(name)
            if value is None:
                continue
            assert not re.match(r"[a-z][a-z0-9+.-]*:", value), (tag, value)
            assert value.startswith("#") or (page["index"].parent / value).is_file(), value


def test_screenshot_is_not_blank(page):
    with Image.open(page["png"]) as screenshot:
        pixels = np.asarray(screenshot.convert("RGB"))
    assert pixels.shape == (900, 1200, 3)
    colours, counts = np.unique(pixels.reshape(-1, 3), axis=0, return_counts=True)
    assert len(colours) > 100  # text, badges, tables: not one flat colour
    found = {tuple(int(v) for v in c): int(n) for c, n in zip(colours, counts, strict=True)}
    # The "needs a person" card and rows are drawn in their colour, and so is the
    # legend's "done" badge: the page is styled, not bare text.
    assert found.get(ATTENTION_BG, 0) > 5000
    assert found.get(DONE_BG, 0) > 100


def test_empty_state_renders(tmp_path):
    config = build_state(tmp_path)
    config["state"] = str(tmp_path / "nothing")
    report = status.build_report(config, dt.datetime(2027, 1, 3, 21, tzinfo=dt.UTC))
    text = render(report)
    assert "No night recorded yet." in text and "Nothing needs a person." in text
    assert text.count("no data yet") == 2 and "no installed exposure yet" in text


def test_nice_ticks():
    assert nice_ticks(90) == [0, 25, 50, 75, 100]
    assert nice_ticks(2.2) == [0, 1, 2, 3]
    assert nice_ticks(0) == [0, 1]


# --- DESI's own status page, beside the workflow's -------------------------------------

DESI_PAGE = Path(__file__).with_name("desi_status_page")
OTHER = "DESI_SPECTRO_OTHER"


class DesiPage(html.parser.HTMLParser):
    """What DESI's page shows: each night's button class, each exposure's cells."""

    def __init__(self):
        super().__init__()
        self.nights: dict[str, str] = {}
        self.cells: dict[str, dict[str, str]] = {}
        self.row: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "button" and attrs.get("id", "").startswith("show"):
            self.nights[attrs["id"][4:]] = attrs["class"].split()[1]
        elif tag == "tr" and attrs.get("id", "").startswith("e"):
            self.row = attrs["id"][1:]
            self.cells[self.row] = {}
        elif tag == "td" and "data-stage" in attrs and self.row:
            self.cells[self.row][attrs["data-stage"]] = attrs["class"]


def desi_page(url: str, profile: Path) -> DesiPage:
    shown = DesiPage()
    shown.feed(chromium("--virtual-time-budget=10000", "--dump-dom", url,
                        profile=profile).stdout)
    return shown


def serve(directory: Path):
    """A real HTTP server on loopback serving `directory`, as DESI's web server does."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_desi_status_page_reads_a_two_stream_state_and_is_left_alone(site, tape):
    """DESI's own page (index.html and its JavaScript) in STATUS, one copy per further
    stream in STATUS/STREAM: the workflow writes its year files where that page reads
    them, never overwrites it, writes its own page as transfer.html, and the page
    shows every night of both streams with the right cells red and green."""
    status_dir = site.state / "status"
    for where in (status_dir, status_dir / OTHER):
        where.mkdir(parents=True)
        for name in ("index.html", "desi_transfer_status.js"):
            shutil.copy(DESI_PAGE / name, where / name)
    desi_index = (DESI_PAGE / "index.html").read_bytes()
    other = site.root / "mountain2"
    site.config["streams"][OTHER] = {
        "source": str(other / "raw"), "staging": str(site.root / "staging2"),
        "destination": str(site.root / "archive2"), "hpss": "desi/spectro/other",
        "checksum_file": "checksum-{exposure}.sha256sum"}
    site.exposure("00001000")
    corrupt_at_source(site, "00001001")  # installed by policy: its checksum cell is red
    site.exposure("00001002", night="20261126")
    make_exposure(other, NIGHT, "00002000", {"a.fits": b"a" * 100})
    site.config["now"] = "2026-11-28T21:00:00Z"  # catch-up and backup due
    site.run()
    status_command = [sys.executable, "-m", "scripts.status", "--config",
                      str(site.config_file), "--write"]
    subprocess.run(status_command, cwd=REPO, check=True, capture_output=True, timeout=120)

    for where in (status_dir, status_dir / OTHER):
        assert (where / "index.html").read_bytes() == desi_index  # left alone
        assert stat.S_IMODE(where.stat().st_mode) == 0o755
    own = status_dir / "transfer.html"
    assert b"desitransfer-workflow status page" in own.read_bytes()
    log = (site.state / "logs" / "status.log").read_text()
    assert log.count("is not this workflow's page") == 1, log  # said once
    for path in [own, *status_dir.glob("desi_transfer_status_*.json"),
                 *(status_dir / OTHER).glob("desi_transfer_status_*.json")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert (status_dir / "desi_transfer_status_2026.json").is_file()
    assert (status_dir / OTHER / "desi_transfer_status_2026.json").is_file()
    assert not (status_dir / STREAM).exists()

    server = serve(status_dir)
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        first = desi_page(f"{base}/index.html?year=2026&all=1", site.root / "profile")
        second = desi_page(f"{base}/{OTHER}/index.html?year=2026&all=1",
                           site.root / "profile")
    finally:
        server.shutdown()
        server.server_close()
    assert first.nights == {NIGHT: "btn-danger", "20261126": "btn-success"}
    green = {"rsync": "table-success", "checksum": "table-success", "backup": "table-success"}
    assert first.cells == {f"{NIGHT}/00001001": {**green, "checksum": "table-danger"},
                           f"{NIGHT}/00001000": green, "20261126/00001002": green}
    assert second.nights == {NIGHT: "btn-success"}
    assert second.cells == {f"{NIGHT}/00002000": green}
    assert (site.root / "archive2" / NIGHT / "00002000").is_dir()


# --- the cards fit their boxes -----------------------------------------------------

MEASURE = """<script>
window.addEventListener("load", function () {
  var out = [];
  document.querySelectorAll(".card").forEach(function (card, i) {
    out.push([card.id || String(i), card.scrollWidth, card.clientWidth]);
  });
  var pre = document.createElement("pre");
  pre.id = "measured";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def test_no_card_overflows_its_box_at_a_narrow_width(tmp_path):
    """The "lanes now" card holds one short line per lane, whatever a run works on."""
    config = build_state(tmp_path)
    state = config["state"]
    stages = "; ".join(f"backup of {STREAM}_WITH_A_LONG_NAME 2027010{i}" for i in range(5))
    write_json_atomic(activity_path(state, "nights"), {
        "lane": "nights", "run": "r1", "pid": 1, "started": "2027-01-03T20:00:00Z",
        "exposures": 0, "night_stages": 5, "on": stages})
    write_json_atomic(activity_path(state, "exposures"), {
        "lane": "exposures", "run": "r0", "started": "2027-01-03T20:00:00Z",
        "finished": "2027-01-03T20:01:00Z", "returncode": 0, "on": "nothing pending"})
    lock = try_lock(state, "nights")
    try:
        page = status.write_status(config)[-1]
    finally:
        lock.close()
    text = page.read_text()
    assert f"backup of {STREAM}_WITH_A_LONG_NAME" in text  # in the lane's tooltip
    probe = page.with_name("probe.html")
    probe.write_text(text.replace("</body>", MEASURE + "</body>"))
    for width in (700, 420):
        dom = chromium(f"--window-size={width},900", "--dump-dom", probe.as_uri(),
                       profile=tmp_path / "profile").stdout
        found = re.search(r'<pre id="measured">(.*?)</pre>', dom)
        assert found, dom[-2000:]
        cards = json.loads(html.unescape(found.group(1)))
        # every card measured, the lanes card among them (the late-data card included)
        assert len(cards) >= 8 and "lanes" in [c[0] for c in cards], cards
        overflowing = [c for c in cards if c[1] > c[2]]
        assert overflowing == [], (width, overflowing)
    lanes = parse(text).by_id["lanes"]["text"]
    assert "nights lane: running since 01-03 20:00:00 · 5 night stage(s)" in lanes
    assert "exposures lane: idle since 01-03 20:01:00 · last run ok" in lanes
