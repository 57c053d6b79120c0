"""Packaging: what `import headkit` pulls in, the wheel's layout, and the public-API documentation rules."""

from __future__ import annotations

import ast
import doctest
import importlib
import inspect
import json
import pkgutil
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import headkit as hk

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, **kwargs) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_import_headkit_imports_no_framework():
    out = run_python(
        "import sys, json, headkit; "
        "print(json.dumps([m for m in ('transformer_lens', 'nnsight', 'transformers') if m in sys.modules]))",
        cwd="/",
    )
    assert json.loads(out) == []


@pytest.mark.parametrize(
    "adapter, others", [("huggingface", ("transformer_lens", "nnsight")), ("nnsight", ("transformer_lens",))]
)
def test_adapters_import_only_their_own_framework(adapter, others):
    out = run_python(
        f"import sys, json, headkit.adapters.{adapter}; "
        f"print(json.dumps([m for m in {others!r} if m in sys.modules]))",
        cwd="/",
    )
    assert json.loads(out) == []


@pytest.mark.slow
def test_built_wheel_ships_the_adapters_as_headkit_adapters(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path / "dist"), str(ROOT)],
        capture_output=True, text=True,
    )
    assert build.returncode == 0, build.stderr
    [wheel] = (tmp_path / "dist").glob("headkit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"headkit/py.typed", "headkit/adapters/__init__.py", "headkit/adapters/huggingface.py",
            "headkit/adapters/transformer_lens.py", "headkit/adapters/nnsight.py"} <= names
    assert not any(name.startswith(("adapters/", "tests/")) for name in names)
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(site), str(wheel)],
        capture_output=True, text=True,
    )
    assert install.returncode == 0, install.stderr
    adapters = sorted(n.removeprefix("headkit/adapters/").removesuffix(".py") for n in names
                      if n.startswith("headkit/adapters/") and n.endswith(".py") and not n.endswith("__init__.py"))
    code = (
        f"import sys; sys.path.insert(0, {str(site)!r}); import importlib, headkit; "
        f"mods = [importlib.import_module('headkit.adapters.' + a) for a in {adapters!r}]; "
        "print(headkit.__file__); [print(m.__file__) for m in mods]"
    )
    files = run_python(code, cwd="/").split()
    assert len(files) == 1 + len(adapters) >= 4
    assert all(f.startswith(str(site)) for f in files), files  # the wheel's copies, not the checkout


def public_api():
    """(name, object, needs_example): public functions and classes need an example; their methods a docstring."""
    import headkit.backend
    import headkit.config
    import headkit.core.adapter
    import headkit.core.architectures
    import headkit.core.errors
    import headkit.core.heads
    import headkit.core.inputs
    import headkit.core.plan
    import headkit.core.positions
    import headkit.core.sites
    import headkit.data
    import headkit.models
    import headkit.prompts
    import headkit.readouts
    import headkit.sweep
    from headkit.adapters import huggingface, nnsight, transformer_lens

    modules = (hk, huggingface, transformer_lens, nnsight, headkit.models, headkit.readouts, headkit.sweep, headkit.config, headkit.prompts, headkit.data,
               headkit.core.adapter, headkit.core.inputs, headkit.core.positions, headkit.core.plan,
               headkit.core.heads, headkit.backend, headkit.core.architectures, headkit.core.sites, headkit.core.errors)
    for module in modules:
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                yield f"{module.__name__}.{name}", obj, True
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if not attr.startswith("_") and (inspect.isfunction(member) or isinstance(member, classmethod)):
                        yield f"{module.__name__}.{name}.{attr}", getattr(obj, attr), False


SETUP = (ast.Import, ast.ImportFrom, ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Pass)


def tautology(body: list[ast.stmt]) -> bool:
    """``x or True`` (or ``x and False``), or a bare constant: an output that cannot depend on the code."""
    if len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        return True
    return any(
        isinstance(node, ast.BoolOp)
        and any(isinstance(v, ast.Constant) and v.value is (isinstance(node.op, ast.Or)) for v in node.values)
        for stmt in body for node in ast.walk(stmt)
    )


def checks_something(example: doctest.Example) -> bool:
    """An example that executes more than setup (imports, comments, assignments) and compares an output."""
    if not example.want.strip():
        return False
    try:
        body = ast.parse(example.source).body
    except SyntaxError:
        return False
    return bool(body) and not all(isinstance(stmt, SETUP) for stmt in body) and not tautology(body)


COMMENTED_OUT = re.compile(r"^\s*>>>\s*#", re.MULTILINE)
"""``>>> # model(ids)``: doctest drops an example that is only a comment, so it shows code that never runs."""


def unchecked(doc: str) -> str | None:
    """Why a docstring's examples check nothing (None when at least one checks an output and none is skipped)."""
    if "+SKIP" in doc:
        return "skips an example (+SKIP): every example must run"
    if COMMENTED_OUT.search(doc):
        return "has a commented-out example (`>>> # ...`), which doctest never runs: make it run or move it to prose"
    examples = doctest.DocTestParser().get_examples(doc)
    if not examples:
        return "has no example"
    if not any(checks_something(example) for example in examples):
        return ("has examples that check nothing: no statement beyond imports, comments and assignments "
                "is followed by an expected output (or the output is a tautology such as `... or True`)")
    return None


PENDING: dict[str, str] = {}
"""Docstrings known to break the rule, in files being rewritten elsewhere: expected to fail (strictly, so a
fixed one must leave this list). Do not add to it."""


def pending(params: list[tuple]) -> list:
    reason = "{} is being rewritten; its examples are to be fixed there"
    return [pytest.param(*p, marks=pytest.mark.xfail(strict=True, reason=reason.format(PENDING[p[0]])))
            if p[0] in PENDING else p for p in params]


@pytest.mark.parametrize("name, obj, needs_example", pending(list(public_api())),
                         ids=lambda x: x if isinstance(x, str) else "")
def test_public_api_opens_with_what_it_does_and_shows_an_example(name, obj, needs_example):
    doc = inspect.getdoc(obj) or ""
    assert doc.split("\n")[0].strip(), f"{name} has no docstring"
    if needs_example:
        problem = unchecked(doc)
        assert problem is None, f"{name} {problem}"


def all_modules():
    """Every module under headkit/ (adapters/ installs as headkit.adapters), imported."""
    import headkit.adapters

    names = ["headkit"] + [m.name for m in pkgutil.walk_packages(hk.__path__, "headkit.")]
    names += [m.name for m in pkgutil.iter_modules(headkit.adapters.__path__, "headkit.adapters.") if m.name not in names]
    return [importlib.import_module(name) for name in sorted(set(names)) if not name.endswith("__main__")]


def collected_doctests():
    """(name, docstring) for every docstring pytest --doctest-modules collects that shows a ``>>>`` prompt.

    Also those whose examples doctest drops entirely (only comments): they count as examples that run nothing.
    """
    finder = doctest.DocTestFinder()
    for module in all_modules():
        for test in finder.find(module):
            if test.examples or ">>>" in (test.docstring or ""):
                yield test.name, test.docstring or ""


def test_every_pending_docstring_still_exists():
    collected = {name for name, _ in collected_doctests()} | {name for name, _, _ in public_api()}
    assert sorted(set(PENDING) - collected) == [], "renamed or removed: update PENDING"


def test_the_rule_tells_checking_examples_from_empty_ones():
    assert unchecked(">>> import headkit\n>>> # backend.logits(ids)\n>>> x = 1\n") is not None
    assert unchecked(">>> hk.models.cache_dir().name in ('headkit',) or True\nTrue\n") is not None
    assert unchecked(">>> 1 + 1  # doctest: +SKIP\n2\n>>> 2\n2\n") is not None
    assert unchecked(">>> import headkit\n>>> # backend.logits(ids)\n>>> 1 + 1\n2\n") is not None
    assert unchecked(">>> True\nTrue\n") is not None
    assert unchecked(">>> x = 1\n>>> x + 1\n2\n") is None
    assert unchecked(">>> try:\n...     int('a')\n... except ValueError:\n...     print('bad')\nbad\n") is None


@pytest.mark.parametrize("name, doc", pending(list(collected_doctests())),
                         ids=lambda x: x if "\n" not in x and len(x) < 90 else "")
def test_every_doctest_checks_an_output(name, doc):
    problem = unchecked(doc)
    assert problem is None, f"{name} {problem}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line for line in block.strip().splitlines() if line.strip()]
    assert len(commands) == 2, commands  # exactly two: install + the main job, install + tests
    assert commands[0].endswith("&& headkit mc")
    assert "plot" in commands[0].split("&&")[0]  # the main job writes figures: matplotlib must be installed
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[1] in ci  # the README's test command, as a line of its own
    assert ci[1 + ci.index(commands[1]) :], "CI goes on to the oldest and legacy versions"
    assert "set -euo pipefail" in ci  # any failing step fails CI
