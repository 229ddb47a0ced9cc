"""The top-level API: every declared name resolves, lazily (no torch at import), and the
stub IDEs read lists exactly the names the package exports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import neuronscope as ns


def test_every_public_name_resolves_and_is_documented() -> None:
    assert len(ns.__all__) == len(set(ns.__all__)) >= 60
    for name in ns.__all__:
        obj = getattr(ns, name)
        if callable(obj) and not isinstance(obj, dict):
            assert (obj.__doc__ or "").strip(), f"{name} has no docstring"
    assert set(dir(ns)) >= set(ns.__all__)


def test_stub_imports_exactly_the_exported_names() -> None:
    stub = Path(ns.__file__).with_name("__init__.pyi")
    tree = ast.parse(stub.read_text())
    imported = {a.asname or a.name for node in tree.body if isinstance(node, ast.ImportFrom) for a in node.names}
    assert imported == set(ns.__all__)


def test_import_is_lazy() -> None:
    code = "import sys, neuronscope; print('torch' in sys.modules, 'xarray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
