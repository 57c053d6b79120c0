"""Shared fixtures: tiny models behind every adapter, so each test runs once per adapter and architecture."""

from __future__ import annotations

import copy
import importlib
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests must never reach a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

import headkit as hk
from tests.hooked import HOOKED_ARCHS, hooked_from, hooked_transformer_available

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


def pytest_collection_modifyitems(config, items):
    """Leave out the (tl-hooked, architecture) pairs that tests/hooked.py cannot convert, instead of skipping."""
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        unsupported = params.get("adapter") == "tl-hooked" and params.get("arch", HOOKED_ARCHS[0]) not in HOOKED_ARCHS
        (drop if unsupported else keep).append(item)
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
    return Runner(adapter, arch)


def token_ids(batch: int = 2, pos: int = 9, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, 100, (batch, pos), generator=g)
    ids[:, 0] = 1  # BOS
    return ids


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().double() - b.detach().double()).abs().max().item()
