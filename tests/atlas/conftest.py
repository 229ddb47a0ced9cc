"""A real headless Chromium for the atlas tests."""

from __future__ import annotations

import shutil

import pytest
from atlas_browser import Chromium


@pytest.fixture(scope="session")
def chromium(tmp_path_factory) -> Chromium:
    """A headless Chromium (install it with `make chromium` or `apt-get install chromium`)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed; run `make chromium` (Debian: apt-get install -y chromium)")
    return Chromium(exe, tmp_path_factory.mktemp("chromium"))
