"""The plan report in a real browser: headless Chromium opens report.html without a console
message, every section is in the rendered DOM, the interactive DVH answers the pointer, a
screenshot is not blank and printing to PDF gives a plausible page count.

Console messages are read from Chromium's own log (``--enable-logging=stderr --v=0`` writes
every ``console.*`` call and every uncaught exception as an ``INFO:CONSOLE`` line), which needs
no DevTools client; ``test_console_log_catches_a_broken_page`` shows that this catches errors.
Skipped only when no Chromium binary is found (``.ci/run`` installs Debian's ``chromium``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

BROWSER = next(
    (
        path
        for name in ("chromium", "chromium-browser", "google-chrome")
        if (path := shutil.which(name))
    ),
    None,
)
pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="no chromium, chromium-browser or google-chrome on PATH"
)
SECTIONS = [
    "warnings", "identification", "technique", "dwells", "prescription", "goals", "metrics",
    "dvh", "isodoses", "provenance", "signature",
]  # fmt: skip


def headless(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Run headless Chromium on the file ``page`` with ``args`` (stdout, stderr as text)."""
    cmd = [
        BROWSER, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
        "--hide-scrollbars", "--enable-logging=stderr", "--v=0", f"--user-data-dir={profile}",
        *args, page.resolve().as_uri(),
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


class _Dom(HTMLParser):
    def __init__(self):
        super().__init__()
        self.section_ids, self.svgs = [], 0

    def handle_starttag(self, tag, attrs):
        if tag == "section":
            self.section_ids.append(dict(attrs).get("id"))
        self.svgs += tag == "svg"


@pytest.fixture(scope="module")
def profile(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("chromium-profile")


@pytest.fixture(scope="module")
def report(small_plan_output) -> Path:
    return small_plan_output / "report.html"


def test_console_log_catches_a_broken_page(tmp_path, profile):
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><p>x</p><script>null.field;</script>")
    res = headless(page, profile, "--dump-dom")
    assert any("Uncaught TypeError" in line for line in console_messages(res.stderr)), res.stderr


def test_report_loads_without_console_messages_with_every_section(report, profile):
    res = headless(report, profile, "--dump-dom")
    assert res.returncode == 0, res.stderr[-2000:]
    assert console_messages(res.stderr) == []
    dom = _Dom()
    dom.feed(res.stdout)
    assert dom.section_ids == SECTIONS
    # the script ran: the interactive DVH was drawn and the static image hidden on screen
    assert dom.svgs == 1 and 'class="dvh-interactive"' in res.stdout


def test_dvh_hover_reads_dose_and_volumes(report, profile, tmp_path):
    """A pointer move over the middle of the plot fills the readout with the dose and each
    structure's volume there."""
    hover = (
        "<script>(function(){var s=document.querySelector('#dvh-plot svg');"
        "var b=s.getBoundingClientRect();s.dispatchEvent(new MouseEvent('mousemove',"
        "{clientX:b.left+b.width*0.4,clientY:b.top+b.height/2,bubbles:true}));})();</script>"
    )
    page = tmp_path / "hover.html"
    page.write_text(report.read_text(encoding="utf-8").replace("</body>", hover + "</body>"))
    res = headless(page, profile, "--dump-dom")
    assert console_messages(res.stderr) == []
    readout = re.search(r'<div class="dvh-readout">(.*?)</div>', res.stdout, re.S).group(1)
    assert re.search(r"dose \d+\.\d\d Gy \(\d+ % Rx\)", readout), readout
    for name in ("CTV", "sacrum", "ureter", "bowel"):
        assert re.search(rf"{name} \d+\.\d % \(\d+\.\d\d cm³\)", readout), (name, readout)


def test_screenshot_is_not_blank(report, profile, tmp_path):
    from PIL import Image

    shot = tmp_path / "shot.png"
    res = headless(report, profile, f"--screenshot={shot}", "--window-size=1100,1400")
    assert shot.is_file(), res.stderr[-2000:]
    grey = np.asarray(Image.open(shot).convert("L"), float)
    assert grey.shape == (1400, 1100)
    assert grey.std() > 20.0  # text, tables and the warnings box, not an empty page
    assert 0.02 < np.mean(grey < 128) < 0.6


def test_print_to_pdf_page_count(report, profile, tmp_path):
    """Sections start on new pages (print CSS): the small plan's report prints to 6-14 pages
    (measured 11 on Letter: a page per section group, the dwell tables and the config text on
    two each)."""
    pdf = tmp_path / "report.pdf"
    res = headless(report, profile, f"--print-to-pdf={pdf}", "--no-pdf-header-footer")
    assert pdf.is_file(), res.stderr[-2000:]
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF-")
    pages = len(re.findall(rb"/Type\s*/Page(?![a-zA-Z])", data))
    assert 6 <= pages <= 14, pages
