"""Sampled continuations under per-row head gates, each row with its own random stream.

Many rollouts of one prompt under several conditions (no ablation, some heads ablated, ...) go into one
batched ``generate`` call: every batch row carries its condition's gate ``[layer, head]`` (1 keeps a head,
0 zero-ablates it) and its own random generator. Sampling is temperature then nucleus (top-p), as
transformers does it, but the draw for row r at each step is one uniform number from row r's generator,
inverted through the nucleus's cumulative probabilities; so a rollout's text depends only on its prompt, its
gate and its stream, never on what else shares its batch (up to the logits' rounding in a batched pass).

    texts = rollouts.sample(model, tok, prompt, gates, seeds, Sampling(temperature=0.6, top_p=0.95))
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from headkit.core.errors import describe, fail

if TYPE_CHECKING:
    from jaxtyping import Float

__all__ = ["Sampling", "stream_seed", "sample", "check_backend", "RowSampler"]


@dataclass(frozen=True)
class Sampling:
    """How continuations are sampled: Thought Anchors' temperature 0.6 and top-p 0.95 by default.

    ``max_new_tokens`` bounds each continuation (the authors let R1 models think for thousands of tokens;
    small models answer in a few hundred); ``temperature=0`` is greedy decoding.

    Example:
        >>> from headkit.analyses.rollouts import Sampling
        >>> Sampling().temperature, Sampling(max_new_tokens=64).max_new_tokens
        (0.6, 64)
    """

    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 256

    def __post_init__(self) -> None:
        t, p, n = self.temperature, self.top_p, self.max_new_tokens
        if isinstance(t, bool) or not isinstance(t, (int, float)) or t < 0:
            raise fail(f"Sampling got temperature={t!r}", "a number >= 0 (0: greedy)", "pass temperature=0.6")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
            raise fail(f"Sampling got top_p={p!r}", "0 < top_p <= 1", "pass top_p=0.95")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise fail(f"Sampling got max_new_tokens={n!r}", "a whole number >= 1", "pass max_new_tokens=256")


def stream_seed(*key: object) -> int:
    """A 63-bit seed for one random stream, from any key (e.g. run seed, prefix, rollout): stable across runs.

    Example:
        >>> from headkit.analyses.rollouts import stream_seed
        >>> import numpy as np
        >>> stream_seed(0, 3, 1) == stream_seed(0, np.int64(3), 1), stream_seed(0, 3, 1) == stream_seed(0, 1, 3)
        (True, False)
    """
    digest = hashlib.sha256(repr(tuple(int(k) if hasattr(k, "__index__") else k for k in key)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class RowSampler:
    """A transformers logits processor that picks each row's next token from that row's own generator.

    It returns scores that are 0 at the picked token and -inf elsewhere, so greedy decoding keeps the pick.
    The nucleus is searched among the ``candidates`` most likely tokens first (exact: a row whose
    candidates hold less than ``top_p`` of the probability is sorted in full).

    Example:
        >>> import torch
        >>> from headkit.analyses.rollouts import RowSampler
        >>> pick = RowSampler([torch.Generator().manual_seed(0)] * 2, temperature=1.0, top_p=0.5)
        >>> scores = torch.tensor([[5.0, 0.0, 0.0], [0.0, 0.0, 5.0]])     # top-p 0.5 keeps one token per row
        >>> pick(None, scores).argmax(-1).tolist()
        [0, 2]
    """

    def __init__(self, generators: Sequence[torch.Generator], *, temperature: float, top_p: float,
                 candidates: int = 1024) -> None:
        self.generators, self.temperature, self.top_p, self.candidates = list(generators), temperature, top_p, candidates

    def __call__(self, input_ids: Any, scores: Float[torch.Tensor, "row vocab"]) -> Float[torch.Tensor, "row vocab"]:
        logits = scores.double()
        if self.temperature == 0:
            token = logits.argmax(-1)
        else:
            token = self._pick(logits / self.temperature)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(1, token[:, None].to(scores.device), 0.0)
        return out

    def _pick(self, logits: torch.Tensor) -> torch.Tensor:
        """One token per row: row r's uniform draw inverted through its nucleus's cumulative probabilities."""
        u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in self.generators])  # one per row
        log_total = torch.logsumexp(logits, -1, keepdim=True)
        top, index = logits.topk(min(self.candidates, logits.shape[-1]), dim=-1)
        probs = (top - log_total).exp()
        picks = []
        for r in range(len(logits)):
            p, i = probs[r], index[r]
            if float(p.sum()) < self.top_p and len(p) < logits.shape[-1]:  # the nucleus is wider: sort in full
                full, i = logits[r].sort(descending=True)
                p = (full - log_total[r]).exp()
            kept = p * ((p.cumsum(-1) - p) < self.top_p)  # the smallest top set holding top_p (TopPLogitsWarper)
            cumulative = kept.cumsum(-1)
            choice = int((cumulative < u[r].to(p.device) * cumulative[-1]).sum().clamp(max=len(kept) - 1))
            while kept[choice] == 0:  # rounding put the threshold past the nucleus: its last token
                choice -= 1
            picks.append(i[choice])
        return torch.stack(picks)


def check_backend(backend: Any) -> None:
    """Refuse backends other than plain transformers (per-row random streams need transformers' ``generate``).

    Example:
        >>> import headkit as hk
        >>> from headkit.analyses.rollouts import check_backend
        >>> check_backend(hk.get_backend(*hk.models.tiny("llama"))) is None   # a transformers model: accepted
        True
        >>> try:
        ...     check_backend(object())
        ... except hk.HeadkitError as error:
        ...     print(str(error).split(";")[0])
        rollouts got a object
    """
    if type(backend).__name__ != "HFBackend":
        raise fail(f"rollouts got a {type(backend).__name__}", "a transformers model (generation with per-row "
                   "random streams uses transformers' generate)", "pass the transformers model itself")


def sample(
    model: Any,
    tokenizer: Any,
    prompt: str,
    gates: Float[torch.Tensor, "row layer head"],
    seeds: Sequence[int],
    how: Sampling | None = None,
    *interventions: Any,
) -> list[str]:
    """Sample one continuation of ``prompt`` per row, row r under ``gates[r]`` with random stream ``seeds[r]``.

    ``model`` is a transformers causal LM (or its headkit backend); the texts are the continuations only,
    decoded without special tokens. All rows run in one ``generate`` call; ``interventions`` (any headkit
    interventions) apply to every row besides its gate.

    Example:
        >>> import torch, headkit as hk
        >>> from headkit.analyses.rollouts import Sampling, sample
        >>> model, tok = hk.models.tiny("llama", dtype=torch.float64)
        >>> gates = torch.ones(3, 2, 4); gates[2, 0, 1] = 0          # row 2 ablates L0H1
        >>> how = Sampling(temperature=1.0, top_p=0.9, max_new_tokens=5)
        >>> batch = sample(model, tok, "Tom eats apples . Tom", gates, [7, 8, 9], how)
        >>> batch[1] == sample(model, tok, "Tom eats apples . Tom", gates[1:2], [8], how)[0]   # alone = in a batch
        True
    """
    from headkit.backend import get_backend

    how = how or Sampling()
    backend = get_backend(model, tokenizer)
    check_backend(backend)
    shape = backend.shape
    if not isinstance(gates, torch.Tensor) or gates.ndim != 3 or tuple(gates.shape[1:]) != (shape.n_layers, shape.n_heads):
        raise fail(f"rollouts got gates {describe(gates)}", f"[rows, {shape.n_layers}, {shape.n_heads}]",
                   "stack one keep/ablate gate per row")
    if len(seeds) != gates.shape[0]:
        raise fail(f"rollouts got {len(seeds)} seeds for {gates.shape[0]} rows", "one seed per row",
                   "pass seeds=[...] of the rows' length")
    from transformers import LogitsProcessorList

    from headkit.core.interventions import gate

    ids = tokenizer(prompt, return_tensors="pt").input_ids
    rows = gates.shape[0]
    picker = RowSampler([torch.Generator().manual_seed(int(s)) for s in seeds], temperature=float(how.temperature),
                        top_p=float(how.top_p))
    dtype = torch.promote_types(backend.dtype, torch.float32)
    with torch.no_grad():
        out = backend.generate(ids.repeat(rows, 1), gate(gates.to(device=backend.device, dtype=dtype)), *interventions,
                               max_new_tokens=how.max_new_tokens, do_sample=False,
                               logits_processor=LogitsProcessorList([picker]),
                               attention_mask=torch.ones(rows, ids.shape[1], dtype=torch.long, device=backend.device))
    return [tokenizer.decode(row[ids.shape[1]:], skip_special_tokens=True) for row in out.cpu()]
