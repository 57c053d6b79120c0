"""The remote-safe kernel: what headkit.core imports, and that nothing else of headkit travels to NDIF.

headkit.core (and the trace side of the nnsight adapter) is shipped by value to a server that has torch,
nnsight and the standard library but not headkit or jaxtyping. Its module-level imports are read from the
source (an import inside ``if TYPE_CHECKING:`` runs only for type checkers); that the shipped code really
runs without headkit is tests/test_nnsight.py's simulated server.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

import headkit

ROOT = Path(headkit.__file__).parent
KERNEL = sorted((ROOT / "core").rglob("*.py"))
NNSIGHT_ADAPTER = ROOT.parent / "adapters" / "nnsight.py"
ALLOWED_THIRD_PARTY = {"torch"}


def runtime_imports(path: Path) -> set[str]:
    """Modules a file imports when it runs: module level and inside functions, not under TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found - {"__future__"}


def test_the_kernel_is_the_core_subpackage():
    assert {str(p.relative_to(ROOT / "core").with_suffix("")) for p in KERNEL} == {
        "__init__", "errors", "heads", "sites", "positions", "inputs", "captures", "architectures", "plan", "adapter",
        "interventions/__init__", "interventions/base", "interventions/z_edits", "interventions/attention",
    }


@pytest.mark.parametrize("path", KERNEL, ids=lambda p: str(p.relative_to(ROOT / "core")))
def test_kernel_modules_import_only_torch_the_standard_library_and_the_kernel(path):
    for name in runtime_imports(path):
        top = name.split(".")[0]
        if top == "headkit":
            assert name.startswith("headkit.core"), f"{path.name} imports {name}, outside the kernel"
        else:
            assert top in sys.stdlib_module_names or top in ALLOWED_THIRD_PARTY, f"{path.name} imports {name}"


def test_the_nnsight_adapter_imports_only_the_kernel():
    for name in runtime_imports(NNSIGHT_ADAPTER):
        top = name.split(".")[0]
        if top == "headkit":
            # its one local-only path (NNsightBackend.applied on a local model) imports the transformers adapter
            assert name.startswith("headkit.core") or name == "headkit.adapters.huggingface", name
        else:
            assert top in sys.stdlib_module_names or top in ALLOWED_THIRD_PARTY | {"nnsight", "cloudpickle"}, name


def test_the_runtime_import_reader_sees_imports_it_must_refuse(tmp_path):
    # the checks above can fail: a kernel-like file importing an analysis or jaxtyping is caught
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\nfrom headkit.analyses import gating\nif TYPE_CHECKING:\n    import jaxtyping\n"
                   "def f():\n    import pandas\n")
    assert runtime_imports(bad) == {"torch", "headkit.analyses", "pandas"}
