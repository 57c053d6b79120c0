"""Shared fixtures: tiny models behind every adapter, so each test runs once per adapter and architecture."""

from __future__ import annotations

import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests must never reach a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

import headkit as hk

ARCHS = ["gpt2", "neox", "llama", "qwen2", "gemma3"]
ADAPTERS = ["hf-eager", "hf-sdpa", "tl", "tl-compat", "nnsight-eager", "nnsight-sdpa", "nnsight-remote"]
"""nnsight-remote: traces serialised and rebuilt without headkit or jaxtyping, as on NDIF (tests/ndif.py)."""
EAGER = ("hf-eager", "nnsight-eager", "nnsight-remote")


class Runner:
    """One tiny model behind one adapter, plus an untouched transformers copy for references."""

    def __init__(self, adapter: str, arch: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> None:
        self.adapter, self.arch = adapter, arch
        impl = "eager" if adapter in EAGER else "sdpa"
        self.plain, self.tokenizer = hk.models.tiny(arch, dtype=dtype, seed=seed, attn_implementation=impl)
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
