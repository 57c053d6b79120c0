"""Shared fixtures: tiny models behind every adapter, so each test runs once per adapter and architecture.

Tiers (markers set here from what a test uses, in ``pytest_collection_modifyitems``; select with ``-m``):

- ``unit``: everything not below: tiny models through one path, values built without a model, the CLI's
  argument checks, doctests. ``pytest -m unit`` is the quick loop.
- ``adapters``: the adapter matrix, every test parametrised by an adapter (the ``adapter`` fixture and
  its ``runner``, or a parameter naming one, such as ``kind``), and the tests that build runners of named
  adapters to compare them.
- ``remote``: the simulated NDIF server: the ``nnsight-remote`` adapter (also ``adapters``), and tests
  that send a trace through ``tests/ndif.py``'s ``StrictRemote`` or nnsight's local simulation.
- ``real_model``: the real Gemma 3 270M (tests/test_real_model.py; converted and cached on first use).
- ``slow``: builds a wheel or starts subprocesses.
- ``extended``: over a minute each (a GGUF conversion); deselected by default (pyproject's addopts), run by
  ``.ci/run`` with ``python -m pytest -m extended``.

``-m "not real_model and not slow"`` runs everything that needs neither the real model nor child processes.

Runners: :func:`shared_runner` (behind the ``runner`` fixture) builds one runner per (adapter, architecture,
dtype) per session and checks, after every test that used it, that the test left it as it was built: the
same parameters and buffers (values, objects, ``requires_grad``, no ``.grad``), no hook added or removed
(torch hooks on every module, TransformerLens hook points, headkit's attention routing), the same
configurations (attention implementation included) and train/eval modes. A test that leaves anything
behind fails at teardown (a cleanup bug, in headkit or in the test) and the runner is rebuilt for the
next test, so nothing leaks on. A test that changes a model on purpose builds its own ``Runner(...)``.

Threads: one torch thread (``HEADKIT_TEST_THREADS``), except in the real-model tests: as many of torch's
own (``ALL_THREADS``) as other processes leave free (:func:`free_cores`).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests must never reach a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

import headkit as hk
from tests.hooked import HOOKED_ARCHS, hooked_from, hooked_transformer_available

ALL_THREADS = torch.get_num_threads()
"""torch's own thread count (the cores it may use): the real model's tests use those of them that are free."""
TEST_THREADS = int(os.environ.get("HEADKIT_TEST_THREADS", "1"))
"""Threads for everything else. The tiny models' matrices are far too small to split: a second thread only adds
a hand-over per operation, which on a busy machine (a descheduled worker) costs milliseconds instead of
microseconds. Subprocesses the tests start inherit it through OMP_NUM_THREADS."""
torch.set_num_threads(TEST_THREADS)
os.environ.setdefault("OMP_NUM_THREADS", str(TEST_THREADS))


def free_cores(window: float = 0.3) -> int:
    """How many of torch's ``ALL_THREADS`` cores other processes leave free, from /proc/stat over ``window``
    seconds while this process sleeps (``ALL_THREADS`` where there is no /proc/stat).

    The real model's tests take that many threads: a thread beyond the free cores does not add speed, it
    makes every operation wait for a thread the scheduler has put aside (on a 2-core machine with one core
    busy elsewhere, two threads made those tests about 8 times slower than one).
    """
    import time

    def busy_and_total() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields) - idle, sum(fields)

    try:
        busy0, total0 = busy_and_total()
        time.sleep(window)
        busy1, total1 = busy_and_total()
    except (OSError, ValueError, IndexError):
        return ALL_THREADS
    cpus = os.cpu_count() or ALL_THREADS
    used = cpus * (busy1 - busy0) / max(1, total1 - total0)  # cores others used meanwhile
    return max(1, min(ALL_THREADS, round(cpus - used)))


@contextlib.contextmanager
def torch_threads(n: int):
    """Run a block with ``n`` torch threads, then go back to the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


ARCHS = ["gpt2", "neox", "llama", "qwen2", "gemma3"]
ADAPTERS = ["hf-eager", "hf-sdpa", "tl", "tl-compat", "nnsight-eager", "nnsight-sdpa", "nnsight-remote"]
"""nnsight-remote: traces serialised and rebuilt without headkit or jaxtyping, as on NDIF (tests/ndif.py).
tl / tl-compat: a TransformerBridge (TransformerLens 3.x/4.x), default and compatibility mode.
tl-hooked: a HookedTransformer (TransformerLens 2.x/3.x) with the tiny model's weights (tests/hooked.py).

HEADKIT_TEST_ADAPTERS (comma-separated) replaces the list: CI's legacy-TransformerLens virtualenvs run
``tl-hooked`` (and the 3.x bridge); the full install runs the seven above, each required to import.
"""
PARTIAL_INSTALL = bool(os.environ.get("HEADKIT_TEST_ADAPTERS"))
"""Set in CI's legacy virtualenvs: only there may a missing framework skip a test instead of failing it."""
if PARTIAL_INSTALL:
    _chosen = [name.strip() for name in os.environ["HEADKIT_TEST_ADAPTERS"].split(",") if name.strip()]
    _unknown = sorted(set(_chosen) - {*ADAPTERS, "tl-hooked"})
    if _unknown:
        raise pytest.UsageError(f"HEADKIT_TEST_ADAPTERS names unknown adapters {_unknown}; known: {ADAPTERS + ['tl-hooked']}")
    ADAPTERS = _chosen
EAGER = ("hf-eager", "nnsight-eager", "nnsight-remote")


def require(module: str, reason: str = "") -> None:
    """Import a framework module; skip the test if it is missing in a partial install, else fail loudly.

    A full install (no HEADKIT_TEST_ADAPTERS) has every framework: a broken import there (say, a new
    transformers release breaking nnsight) must fail the suite, not turn into skips.
    """
    if PARTIAL_INSTALL:
        pytest.importorskip(module, reason=reason or None)
    else:
        importlib.import_module(module)


def require_framework(adapter: str) -> None:
    """Skip a test pinned to an adapter whose framework this virtualenv lacks (CI's legacy virtualenvs).

    TransformerLens 2.x has no TransformerBridge, 4.x no HookedTransformer (a skip in every install);
    nnsight is not installed in the legacy virtualenvs.
    """
    if adapter.startswith("nnsight"):
        require("nnsight")
    elif adapter == "tl-hooked":
        if not hooked_transformer_available():
            pytest.skip("this TransformerLens has no HookedTransformer (removed in 4.0)")
    elif adapter.startswith("tl"):
        require("transformer_lens.model_bridge", "this TransformerLens has no TransformerBridge")


class Runner:
    """One tiny model behind one adapter, plus an untouched transformers copy for references."""

    def __init__(self, adapter: str, arch: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> None:
        self.adapter, self.arch = adapter, arch
        require_framework(adapter)
        impl = "eager" if adapter in EAGER else "sdpa"
        self.plain, self.tokenizer = hk.models.tiny(arch, dtype=dtype, seed=seed, attn_implementation=impl)
        if adapter == "tl-hooked":
            if arch not in HOOKED_ARCHS:
                pytest.skip(f"no HookedTransformer conversion of the tiny {arch} here (tests/hooked.py: {HOOKED_ARCHS})")
            from headkit.adapters import transformer_lens as module

            self.model = hooked_from(self.plain, arch)
            self.tokenizer = hk.models.tiny_tokenizer()
            self.tokenizer.pad_token = self.tokenizer.eos_token  # TL 2.x generate mistakes id 0 for padding
            self.module, self.backend = module, hk.get_backend(self.model, self.tokenizer)
            self.shape = self.backend.shape
            return
        if adapter.startswith("nnsight"):
            from nnsight import TransformersModel

            from headkit.adapters import nnsight as module
            from tests.ndif import StrictRemote

            self.model = TransformersModel(copy.deepcopy(self.plain), tokenizer=hk.models.tiny_tokenizer())
            remote = StrictRemote(self.model) if adapter == "nnsight-remote" else False
            self.backend = module.NNsightBackend(self.model, remote=remote)
            self.module, self.shape = module, self.backend.shape
            return
        if adapter.startswith("tl"):
            from transformer_lens.model_bridge import TransformerBridge

            self.model = TransformerBridge.boot_transformers(
                f"tiny/{arch}", hf_model=copy.deepcopy(self.plain), tokenizer=self.tokenizer, device="cpu"
            )
            if adapter == "tl-compat":
                self.model.enable_compatibility_mode(no_processing=True, disable_warnings=True)
            from headkit.adapters import transformer_lens as module
        else:
            self.model = self.plain
            from headkit.adapters import huggingface as module
        self.module = module
        self.backend = hk.get_backend(self.model, self.tokenizer)
        self.shape = self.backend.shape

    def same_path(self, model):
        """Logits of another transformers model through this runner's framework path (a reference)."""
        if self.adapter == "tl-hooked":
            hooked = hooked_from(model, self.arch)
            return lambda ids, **kw: hooked(ids, **kw)
        if self.adapter.startswith("tl"):
            from transformer_lens.model_bridge import TransformerBridge

            bridge = TransformerBridge.boot_transformers(
                f"tiny/{self.arch}", hf_model=copy.deepcopy(model), tokenizer=self.tokenizer, device="cpu"
            )
            if self.adapter == "tl-compat":
                bridge.enable_compatibility_mode(no_processing=True, disable_warnings=True)
            return lambda ids, **kw: bridge(ids, **kw)
        return lambda ids, **kw: model(ids, **kw).logits

    def logits(self, ids, *interventions, **kwargs):
        return self.backend.logits(ids, *interventions, **kwargs)

    def applied(self, *interventions):
        if self.adapter.startswith("nnsight"):
            return self.backend.applied(*interventions)
        return self.module.applied(self.model, *interventions)

    def __repr__(self) -> str:
        return f"Runner({self.adapter}, {self.arch})"


def attachments(model) -> set:
    """Every torch hook, TransformerLens hook function and headkit attention override in a model."""
    found = set()
    for name, module in model.named_modules():
        for kind in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            found |= {(name, kind, key) for key in getattr(module, kind)}
        for kind in ("fwd_hooks", "bwd_hooks"):  # TransformerLens HookPoint
            found |= {(name, kind, id(h)) for h in getattr(module, kind, ())}
        if hasattr(getattr(module, "config", None), "headkit_run"):
            found.add((name, "config", "headkit_run"))
    return found


def _transformers_capture_hook(hook) -> bool:
    """transformers' output recorder: installed on a model's first output_attentions/hidden_states call and
    kept for good (inactive outside such a call), so it is the model's own, not something a test left."""
    return getattr(hook, "__qualname__", "").endswith("install_output_capuring_hook.<locals>.output_capturing_hook")


def _left_attached(module) -> set:
    """:func:`attachments`, less transformers' own output-capturing hooks."""
    found = attachments(module)
    named = dict(module.named_modules())
    return {(name, kind, key) for name, kind, key in found
            if not (kind == "_forward_hooks" and _transformers_capture_hook(named[name]._forward_hooks.get(key)))}


def _modules(runner: Runner) -> dict[str, torch.nn.Module]:
    """The torch modules a runner is made of: the reference copy and the one behind the adapter."""
    found = {"plain": runner.plain}
    model = runner.model
    if isinstance(model, torch.nn.Module):
        found["model"] = model
    elif isinstance(getattr(model, "_module", None), torch.nn.Module):  # nnsight
        found["model._module"] = model._module
    return {name: module for name, module in found.items() if name == "plain" or module is not runner.plain}


def _config_state(config) -> dict:
    """A configuration's attributes as copied values (a transformers config's attention implementation too)."""
    state = {}
    for key, value in vars(config).items():
        if hasattr(value, "to_dict") and hasattr(value, "_attn_implementation"):  # a sub-configuration
            value = _config_state(value)
        else:
            try:
                value = copy.deepcopy(value)
            except Exception:  # noqa: BLE001 - not copyable: compared as the same object
                pass
        state[key] = value
    return state


def _same(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - no usable ==
        return a is b


def _fingerprint(t: torch.Tensor) -> tuple:
    """What an edit of a large tensor changes without reading it: every in-place operation (``mul_``, ``zero_``,
    ``copy_``, item assignment, also under ``no_grad`` or on a ``detach()``) bumps its version counter, and new
    storage moves its data pointer. (Edits through ``.data`` would not show: the tests make none.)"""
    return t.dtype, t.shape, t._version, t.data_ptr()


class _Snapshot:
    """What a shared runner is made of, taken once it is built, to check after every test that uses it.

    ``copies``: keep a copy of every parameter and buffer (the tiny models); else a fingerprint of each
    (the real model, where copies would take gigabytes and comparing them seconds per test).
    """

    def __init__(self, runner: Runner, copies: bool = True) -> None:
        self.modules = _modules(runner)
        self.copies = copies
        self.tensors, self.objects, self.flags, self.configs = {}, {}, {}, {}
        for where, module in self.modules.items():
            for name, t in [*module.named_parameters(), *module.named_buffers()]:
                self.tensors[where, name] = t.detach().clone() if copies else _fingerprint(t)
                self.objects[where, name] = t
            self.flags[where] = [(n, p.requires_grad) for n, p in module.named_parameters()]
            self.configs[where] = self._configs(module)
        self.attached = {where: _left_attached(module) for where, module in self.modules.items()}
        self.training = {where: [(n, m.training) for n, m in module.named_modules()]
                         for where, module in self.modules.items()}
        self.tl_cfg = {where: _config_state(m.cfg) for where, m in self.modules.items() if hasattr(m, "cfg")}

    @staticmethod
    def _configs(module) -> dict:
        """Each module's configuration (by object: a swapped-in view counts) and each distinct one's values."""
        configs, states = {}, {}
        for name, sub in module.named_modules():
            config = getattr(sub, "config", None)
            if config is not None and hasattr(config, "to_dict"):
                configs[name] = id(config)
                if id(config) not in states:
                    states[id(config)] = _config_state(config)
        return {"objects": configs, "values": states}

    def problems(self) -> list[str]:
        from headkit.adapters import huggingface_attention

        found = []
        for where, module in self.modules.items():
            now = {name: t for name, t in [*module.named_parameters(), *module.named_buffers()]}
            before = {name for w, name in self.tensors if w == where}
            if set(now) != before:
                found.append(f"{where}: parameters/buffers added {sorted(set(now) - before)}, "
                             f"removed {sorted(before - set(now))}")
            for name in sorted(before & set(now)):
                t, was = now[name], self.tensors[where, name]
                if t is not self.objects[where, name]:
                    found.append(f"{where}.{name}: replaced by another tensor")
                elif not self.copies:
                    if _fingerprint(t) != was:
                        found.append(f"{where}.{name}: values changed")
                elif t.dtype != was.dtype or t.shape != was.shape or not torch.equal(t.detach(), was):
                    found.append(f"{where}.{name}: values changed")
            flags = [(n, p.requires_grad) for n, p in module.named_parameters()]
            if flags != self.flags[where]:
                changed = [n for (n, f), (_, g) in zip(flags, self.flags[where]) if f != g] or "some parameters"
                found.append(f"{where}: requires_grad changed on {changed}")
            grads = [n for n, p in module.named_parameters() if p.grad is not None]
            if grads:
                found.append(f"{where}: .grad left on {grads[:3]}{'...' if len(grads) > 3 else ''}")
            if (attached := _left_attached(module)) != self.attached[where]:
                found.append(f"{where}: hooks added {sorted(attached - self.attached[where], key=str)[:4]}, "
                             f"removed {sorted(self.attached[where] - attached, key=str)[:4]}")
            if [(n, m.training) for n, m in module.named_modules()] != self.training[where]:
                found.append(f"{where}: train/eval mode changed")
            configs = self._configs(module)
            if configs["objects"] != self.configs[where]["objects"]:
                found.append(f"{where}: a module's config was replaced")
            for key, state in self.configs[where]["values"].items():
                now_state = configs["values"].get(key, {})
                if not _same(now_state, state):
                    changed = sorted(k for k in {*state, *now_state} if not _same(state.get(k), now_state.get(k)))
                    found.append(f"{where}: configuration changed: {changed}")
            if where in self.tl_cfg and not _same(_config_state(module.cfg), self.tl_cfg[where]):
                found.append(f"{where}: TransformerLens cfg changed")
            if any(m in huggingface_attention._ATTACHED for m in module.modules()):
                found.append(f"{where}: headkit's attention routing still registered")
        return found


_SHARED: dict[tuple, tuple[Runner, _Snapshot]] = {}
_LEASED: dict[tuple, Runner] = {}


def shared_runner(adapter: str, arch: str, dtype: torch.dtype = torch.float32, *, tag: str = "") -> Runner:
    """The session's runner for (adapter, architecture, dtype), built on first use, checked after each test.

    For tests that leave the models as they found them (every intervention is undone). ``tag`` names a
    second, independent runner of the same kind (a reference that must not be the runner under test).
    A test that changes a model on purpose (weights, ``requires_grad``, compatibility mode, its own
    hooks) builds its own ``Runner(...)`` instead.
    """
    key = (adapter, arch, dtype, tag)
    if key not in _SHARED:
        runner = Runner(adapter, arch, dtype)  # may skip (a framework this virtualenv lacks)
        with torch.no_grad():
            runner.logits(token_ids())  # TransformerLens adds hooks of its own on the first forward pass
        _SHARED[key] = runner, _Snapshot(runner)
    runner, _ = _SHARED[key]
    remote = getattr(runner.backend, "remote", None)
    if remote:  # what the simulated server recorded is per request: start each test with none
        remote.modules, remote.names, remote.payload_bytes = set(), set(), 0
    _LEASED[key] = runner
    return runner


def left_behind(failed: bool = False) -> list[str]:
    """What the current test left on the shared runners it used (and on tests/reference.py's BLOCKED).

    Ends those leases; a runner with anything left (or used by a failed test) is dropped, so the next
    test gets a fresh one.
    """
    from tests import reference

    leased = dict(_LEASED)
    _LEASED.clear()
    problems = []
    if reference.BLOCKED:
        problems.append(f"tests/reference.py: BLOCKED left set: {sorted(reference.BLOCKED)}")
        reference.BLOCKED.clear()
    for key, runner in leased.items():
        found = _SHARED[key][1].problems()
        if found or failed:
            del _SHARED[key]
        problems += [f"{runner}: {p}" for p in found]
    return problems


@pytest.fixture(autouse=True)
def _shared_runners_left_as_found(request):
    """After each test, every shared runner it used must be as it was built; else fail and rebuild it."""
    yield
    call = getattr(request.node, "rep_call", None)
    problems = left_behind(failed=call is not None and call.failed)
    if problems:
        pytest.fail("the test left state behind on shared models:\n  " + "\n  ".join(problems), pytrace=False)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


KNOWN_ADAPTERS = {"hf-eager", "hf-sdpa", "tl", "tl-compat", "tl-hooked", "nnsight-eager", "nnsight-sdpa",
                  "nnsight-remote", "hf-chunked"}
"""Every adapter name a test may be parametrised with (hf-chunked: test_receivers.py's chunked pooling)."""
REMOTE_NAMES = {"StrictRemote"}
"""Names in a test's code that send a trace through the simulated server (tests/ndif.py)."""


def _adapters_of(item) -> set[str]:
    """The adapter names among a test's parameters (``adapter``, ``kind``, or a fixture parametrised by one)."""
    found = set()
    for value in getattr(getattr(item, "callspec", None), "params", {}).values():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(v, str) and v in KNOWN_ADAPTERS:
                found.add(v)
    return found


def _code_names(code) -> set[str]:
    """The global names and string constants a function's code uses, its nested functions' included."""
    found = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, str):
            found.add(const)
        elif isinstance(const, tuple):  # keyword names of a call
            found |= {c for c in const if isinstance(c, str)}
        elif hasattr(const, "co_names"):
            found |= _code_names(const)
    return found


def _names_used(item) -> set[str]:
    """:func:`_code_names` of a test function and of every fixture it uses."""
    functions = [getattr(item, "function", None)]
    info = getattr(item, "_fixtureinfo", None)
    for name in getattr(info, "names_closure", ()):
        for definition in getattr(info, "name2fixturedefs", {}).get(name, ()):
            functions.append(definition.func)
    found = set()
    for function in functions:
        code = getattr(function, "__code__", None)
        if code is not None:
            found |= _code_names(code)
    return found


def _tiers(item) -> set[str]:
    """``adapters``: parametrised by an adapter, or building runners of named adapters (the cross-adapter
    comparisons); ``remote``: the nnsight-remote adapter, ``StrictRemote`` or nnsight's ``remote="local"``."""
    params, names = _adapters_of(item), _names_used(item)
    built = names & KNOWN_ADAPTERS if names & {"Runner", "shared_runner"} else set()
    tiers = {"adapters"} if params or built else set()
    if "nnsight-remote" in params | built or names & REMOTE_NAMES or {"remote", "local"} <= names:
        tiers.add("remote")
    return tiers


def pytest_collection_modifyitems(config, items):
    """Tier markers from what each test uses (see the module docstring), and leave out the (tl-hooked,
    architecture) pairs that tests/hooked.py cannot convert, instead of skipping them."""
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        unsupported = params.get("adapter") == "tl-hooked" and params.get("arch", HOOKED_ARCHS[0]) not in HOOKED_ARCHS
        (drop if unsupported else keep).append(item)
        for tier in sorted(_tiers(item)):
            item.add_marker(getattr(pytest.mark, tier))
        if not any(item.get_closest_marker(m) for m in ("adapters", "remote", "real_model", "slow")):
            item.add_marker(pytest.mark.unit)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(params=ADAPTERS)
def adapter(request):
    return request.param


@pytest.fixture(params=ARCHS)
def arch(request):
    return request.param


@pytest.fixture
def runner(adapter, arch):
    """The session's shared runner (see :func:`shared_runner`): leave it as you found it."""
    return shared_runner(adapter, arch)


def token_ids(batch: int = 2, pos: int = 9, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 100, (batch, pos), generator=g)
    ids[:, 0] = 1  # BOS
    return ids


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().double() - b.detach().double()).abs().max().item()


@pytest.fixture
def ridge_fits(monkeypatch):
    """Every design matrix ``estimators._ridge_solve`` is called with from here on, in order (the fits still run)."""
    from headkit.analyses import estimators

    seen: list[torch.Tensor] = []
    real = estimators._ridge_solve

    def spy(x, y, lam):
        seen.append(x)
        return real(x, y, lam)

    monkeypatch.setattr(estimators, "_ridge_solve", spy)
    return seen
