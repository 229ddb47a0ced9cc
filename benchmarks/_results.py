"""Write one benchmark's section of benchmarks/RESULTS.md (other sections are kept)."""

from __future__ import annotations

import os
import platform
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
HEADER = (
    "# Benchmark results\n\n"
    "Each section is written by the script it names, comparing neuronscope with a\n"
    "reference in the same run. These machines are noisy: read the ratios, not the seconds.\n"
)


def write_section(name: str, body: str) -> None:
    """Replace (or add) the section ``name`` of RESULTS.md with ``body`` plus the command."""
    cmd = "python " + " ".join([os.path.relpath(sys.argv[0], Path(__file__).parent.parent), *sys.argv[1:]])
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    block = (
        f"<!-- bench:{name} -->\n## {name}\n\n"
        f"Command: `{cmd}` ({stamp}, {platform.machine()}, {os.cpu_count()} cores)\n\n"
        f"{body.strip()}\n<!-- /bench:{name} -->\n"
    )
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->\n", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block
    RESULTS.write_text(text)
    print(block)
