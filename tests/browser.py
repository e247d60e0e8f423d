"""Headless Chromium for the tests that look at a page as a reader would: a screenshot, the
DOM after scripts ran, and the console's errors (Debian's `chromium`; absent, those tests
skip)."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NO_CHROMIUM = ("no chromium on this machine (Debian: apt-get install chromium); the page's "
               "structure is tested without it")  # fmt: skip
# What Chromium's log shows of a page's console that is an error: an exception nobody caught,
# a resource that did not load. (Its log does not give console.error a level of its own.)
CONSOLE_ERRORS = ("Uncaught", "Failed to load resource", "net::ERR_")


class Page(HTMLParser):
    """The tags, headings and external references of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.headings: list[str] = []
        self.references: list[str] = []
        self._heading = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self._heading = tag in ("h1", "h2", "h3")
        self.references += [v or "" for k, v in attrs if k in ("src", "href")]

    def handle_data(self, data: str) -> None:
        if self._heading and data.strip():
            self.headings.append(data.strip())
            self._heading = False


def parsed(text: str) -> Page:
    page = Page()
    page.feed(text)
    return page


def png_colours(path: Path) -> int:
    """How many distinct byte values a PNG's pixel data holds (1 or 2: a blank page)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    return len(set(zlib.decompress(idat)))


def _chromium(url: str, folder: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={folder / 'chromium-profile'}", "--enable-logging=stderr",
             "--v=0", "--virtual-time-budget=3000"]  # fmt: skip
    return subprocess.run([*flags, *extra, url], capture_output=True, text=True, timeout=120,
                          check=True)  # fmt: skip


def render(url: str, folder: Path) -> tuple[int, str, list[str]]:
    """The page at `url` as Chromium draws it, in one load: the screenshot's distinct
    colours, the DOM after its scripts ran, and the console's errors."""
    shot = folder / "shot.png"
    done = _chromium(url, folder, "--window-size=1200,1600", f"--screenshot={shot}", "--dump-dom")
    errors = [line for line in done.stderr.splitlines()
              if "CONSOLE" in line and any(e in line for e in CONSOLE_ERRORS)]  # fmt: skip
    return png_colours(shot), done.stdout, errors
