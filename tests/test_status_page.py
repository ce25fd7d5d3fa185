"""The status page, rendered by a real headless Chromium (Debian's ``chromium``)."""

from __future__ import annotations

import datetime as dt
import html.parser
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_status import DEGRADED, MISMATCH, STREAM, build_state

import scripts.status as status
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
