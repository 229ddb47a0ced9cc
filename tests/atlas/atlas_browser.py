"""Headless Chromium runner and a small parser for the DOM it dumps (atlas browser tests)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote

import numpy as np

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--hide-scrollbars",
    "--virtual-time-budget=5000",
]
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}


class Node:
    """An element of the dumped DOM: tag, attributes, children (Nodes and strings)."""

    def __init__(self, tag: str, attrs: dict[str, str | None], parent: Node | None):
        self.tag, self.attrs, self.parent, self.children = tag, attrs, parent, []

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    def iter(self):
        yield self
        for c in self.children:
            if isinstance(c, Node):
                yield from c.iter()

    def find_all(self, tag: str | None = None, id: str | None = None, cls: str | None = None,
                 attr: str | None = None) -> list[Node]:
        out = []
        for n in self.iter():
            if tag is not None and n.tag != tag:
                continue
            if id is not None and n.attrs.get("id") != id:
                continue
            if cls is not None and cls not in (n.attrs.get("class") or "").split():
                continue
            if attr is not None and attr not in n.attrs:
                continue
            out.append(n)
        return out

    def find(self, **kw) -> Node:
        found = self.find_all(**kw)
        assert found, f"no element matching {kw}"
        return found[0]


class _TreeBuilder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {}, None)
        self.cur = self.root

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs), self.cur)
        self.cur.children.append(node)
        if tag not in VOID:
            self.cur = node

    def handle_startendtag(self, tag, attrs):
        self.cur.children.append(Node(tag, dict(attrs), self.cur))

    def handle_endtag(self, tag):
        n = self.cur
        while n is not None and n.tag != tag:
            n = n.parent
        if n is not None and n.parent is not None:
            self.cur = n.parent

    def handle_data(self, data):
        self.cur.children.append(data)


def parse_dom(html: str) -> Node:
    """Parse serialized HTML into a Node tree (text is unescaped, as the browser shows it)."""
    b = _TreeBuilder()
    b.feed(html)
    b.close()
    return b.root


def page_url(index_html: Path, *route: str | int) -> str:
    """file:// URL of an atlas page, e.g. ``page_url(index, site, unit)`` -> ``…#/site/unit``."""
    return index_html.resolve().as_uri() + "#/" + "/".join(quote(str(p), safe="") for p in route)


class Chromium:
    """Runs Debian's chromium headless, each call with a fresh profile directory."""

    def __init__(self, exe: str, workdir: Path):
        self.exe, self.workdir = exe, workdir

    def _run(self, args: list[str], url: str) -> subprocess.CompletedProcess:
        profile = tempfile.mkdtemp(prefix="profile-", dir=self.workdir)
        cmd = [self.exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)
        finally:
            shutil.rmtree(profile, ignore_errors=True)

    def dump_dom(self, url: str) -> str:
        """The DOM after the page's scripts ran, serialized as HTML."""
        return self._run(["--dump-dom"], url).stdout

    def dom(self, url: str) -> Node:
        return parse_dom(self.dump_dom(url))

    def screenshot(self, url: str, path: Path, size: tuple[int, int] = (1200, 900)) -> np.ndarray:
        """Render ``url`` to a PNG at ``path``; returns its pixels (H, W, channels) in [0, 1]."""
        import matplotlib.image as mpimg

        self._run([f"--screenshot={path}", f"--window-size={size[0]},{size[1]}"], url)
        return mpimg.imread(str(path))
