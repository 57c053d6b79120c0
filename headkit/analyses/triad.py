"""Attention vs direct effect vs ablation effect, per head, for one predicted token (seed 004's triad).

For a sequence, a query position ``q`` and a target token ``x`` predicted at ``q`` (in an induction
sequence ``... A X ... A`` -> ``X``, with ``key`` the position of the earlier ``X``):

- **attention**: ``pattern[head, q, key]``, how much the head looks from the query to the key;
- **direct effect**: the head's output at ``q`` through W_O (and through the block's attention-output norm
  where the architecture has one, Gemma 2/3 and OLMo 2), then the final norm with its scale frozen at
  its value in this forward pass, then W_U, dotted with the gradient of ``log P(x)`` with respect to the
  logits, ``e_x - p``. With frozen norm scales the heads' contributions add up exactly to their layer's;
- **ablation effect**: ``P(x) - P(x | head zero-ablated)``, in probability space (positive: the head
  supports ``x``). All heads are ablated in one batched pass, each row its own gate.

The three rankings rarely agree; :meth:`Triad.overlap` counts how far.
"""

from __future__ import annotations

from itertools import combinations
from typing import TYPE_CHECKING, Any

import torch

from headkit.core.errors import describe, fail

if TYPE_CHECKING:
    import pandas as pd
    from jaxtyping import Int

__all__ = ["triad", "Triad", "induction_sequence"]


METRICS = ("attention", "direct", "ablation")
_FINAL_NORM = {"transformer": "ln_f", "gpt_neox": "final_layer_norm", "model": "norm"}
"""First part of the blocks' path -> the final norm's attribute beside the blocks."""


class Triad:
    """Per-head attention, direct effect and ablation effect for one prediction (what :func:`triad` returns).

    Example:
        >>> import headkit as hk
        >>> model, tok = hk.models.tiny("llama")
        >>> ids, q, key = hk.triad.induction_sequence(length=6, vocab=range(4, 100), seed=0)
        >>> hk.triad.triad(model, ids, query=q, key=key).table.columns.tolist()
        ['attention', 'direct', 'ablation']
    """

    def __init__(self, table: pd.DataFrame, p_target: float, target: int, query: int, key: int) -> None:
        self.table, self.p_target, self.target, self.query, self.key = table, p_target, target, query, key

    def top(self, metric: str, k: int = 10) -> pd.DataFrame:
        """The ``k`` heads highest on one metric (``attention``, ``direct`` or ``ablation``), with the others."""
        if metric not in METRICS:
            raise fail(f"Triad.top got metric {metric!r}", f"one of {list(METRICS)}", "pass e.g. 'ablation'")
        others = [m for m in METRICS if m != metric]
        return self.table.sort_values(metric, ascending=False).head(k)[[metric, *others]]

    def overlap(self, k: int = 10) -> pd.DataFrame:
        """How many heads the top-``k`` sets of each pair of metrics (and of all three) share."""
        import pandas as pd

        tops = {m: set(self.top(m, k).index) for m in METRICS}
        rows = [{"comparison": f"{a} & {b}", "shared": len(tops[a] & tops[b])} for a, b in combinations(METRICS, 2)]
        rows.append({"comparison": "all three", "shared": len(set.intersection(*tops.values()))})
        return pd.DataFrame(rows).set_index("comparison")

    def __repr__(self) -> str:
        return f"Triad(target={self.target}, query={self.query}, key={self.key}, P(target)={self.p_target:.3f})"


def induction_sequence(
    length: int = 10, vocab: Any = None, *, seed: int = 0, bos: int | None = None
) -> tuple[Int[torch.Tensor, "1 pos"], int, int]:
    """A random token sequence repeated once, ``[bos] t_0 .. t_{n-1} t_0 .. t_{n-2}``; the model should predict ``t_{n-1}``.

    Returns ``(input_ids [1, pos], query, key)``: the query is the last position (the second ``t_{n-2}``)
    and the key the position of the first ``t_{n-1}``, where an induction head attends. ``vocab`` is a
    range or list of token ids to draw from (distinct tokens, so the continuation is unambiguous).

    Example:
        >>> from headkit.analyses.triad import induction_sequence
        >>> ids, q, key = induction_sequence(4, range(10, 20), seed=1, bos=2)
        >>> ids[0, key] == ids[0, 1 + 3], q == ids.shape[1] - 1
        (tensor(True), True)
    """
    pool = torch.tensor(list(vocab if vocab is not None else range(1000, 21000)))
    if length < 2 or len(pool) < length:
        raise fail(
            f"induction_sequence got length={length} with {len(pool)} tokens to draw from",
            "length >= 2 and at least that many distinct tokens",
            "pass a longer vocab range or a shorter length",
        )
    g = torch.Generator().manual_seed(seed)
    tokens = pool[torch.randperm(len(pool), generator=g)[:length]]
    head = [bos] if bos is not None else []
    ids = torch.tensor([head + tokens.tolist() + tokens[:-1].tolist()])
    return ids, ids.shape[1] - 1, len(head) + length - 1


def triad(
    model: Any,
    input_ids: Int[torch.Tensor, "1 pos"],
    *,
    query: int | None = None,
    key: int,
    target: int | None = None,
    max_rows: int = 64,
) -> Triad:
    """Attention, direct effect and ablation effect of every head on predicting ``target`` at ``query``.

    ``input_ids`` is one sequence ``[1, pos]``; ``query`` defaults to its last position, ``target`` to the
    token at ``key`` (for induction: the earlier occurrence of the token to predict). ``model`` is a
    transformers causal LM (or the backend wrapping one); the direct effect reads its weights. The
    zero-ablations run ``max_rows`` heads per forward pass.

    Example:
        >>> import headkit as hk
        >>> model, tok = hk.models.tiny("gpt2")
        >>> ids, q, key = hk.triad.induction_sequence(6, range(4, 100))
        >>> t = hk.triad.triad(model, ids, key=key)
        >>> int(t.overlap(3).loc["all three", "shared"]) <= 3
        True
    """
    import pandas as pd

    from headkit.adapters.huggingface import HFBackend
    from headkit.backend import get_backend
    from headkit.core.architectures import NORMALISED_ATTENTION_OUTPUT, layout
    from headkit.core.interventions import capture_attention, gate

    hf = model.model if isinstance(model, HFBackend) else model
    backend = get_backend(hf)
    found = layout(hf, "triad")
    shape = found.shape
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.shape[0] != 1:
        raise fail(
            f"triad got input_ids {describe(input_ids)}",
            "one sequence of token ids [1, pos]",
            "pass ids[None] for a 1-D sequence, or loop over sequences",
        )
    n = input_ids.shape[1]
    query = n - 1 if query is None else query
    for name, pos in (("query", query), ("key", key)):
        if isinstance(pos, bool) or not isinstance(pos, int) or not 0 <= pos < n:
            raise fail(f"triad got {name}={pos!r}", f"a position in 0..{n - 1}", f"pass a valid {name} position")
    if key > query:
        raise fail(f"triad got key={key} after query={query}", "key <= query (attention is causal)", "swap them")
    target = int(input_ids[0, key]) if target is None else int(target)
    device = next(hf.parameters()).device
    ids = input_ids.to(device)

    # one forward pass: attention pattern, each layer's z at the query, the residual into the final norm
    capture = capture_attention(torch.ones(shape.n_layers, shape.n_heads, dtype=torch.bool))
    z: dict[int, torch.Tensor] = {}
    attn_out: dict[int, torch.Tensor] = {}
    final_in: list[torch.Tensor] = []
    hooks = []
    try:
        for layer in range(shape.n_layers):
            hooks.append(found.out_proj(layer).register_forward_pre_hook(_grab(z, layer, query)))
            hooks.append(found.out_proj(layer).register_forward_hook(_grab_out(attn_out, layer, query)))
        norm = _final_norm(hf, found)
        hooks.append(norm.register_forward_pre_hook(lambda m, args: final_in.append(args[0][0, query].detach())))
        with torch.no_grad():
            logits, got = backend.run(ids, capture, positions=_at(n, query, device))
            logits = logits[0].float()
    finally:
        for h in hooks:
            h.remove()
    attention = torch.stack([got[capture].pattern(layer, head)[0, query, key] for layer, head in capture.heads])
    probs = logits.softmax(-1)
    p_target = float(probs[target])

    # direct effect: per-head outputs -> (block norm) -> final norm with frozen scale -> W_U . (e_x - p)
    grad = -probs
    grad[target] += 1.0
    softcap = getattr(hf.config, "final_logit_softcapping", None)
    if softcap:
        grad = grad * (1 - (logits / softcap).tanh() ** 2)
    unembed = hf.get_output_embeddings().weight.float()  # [vocab, d_model]
    u = grad @ unembed  # [d_model]
    final_map = _frozen_norm(norm, final_in[0].float())
    direct = torch.zeros(shape.n_layers, shape.n_heads)
    with torch.no_grad():
        for layer in range(shape.n_layers):
            contrib = _head_outputs(found.out_proj(layer), z[layer], shape.n_heads)  # [H, d_model]
            if hf.config.model_type in NORMALISED_ATTENTION_OUTPUT:
                block_norm = found.blocks[layer].post_attention_layernorm
                contrib = _frozen_norm(block_norm, attn_out[layer].float())(contrib)
            direct[layer] = final_map(contrib) @ u

    # ablation effect: every head zeroed in its own batch row
    n_heads_total = shape.n_layers * shape.n_heads
    ablated = torch.empty(n_heads_total)
    with torch.no_grad():
        for start in range(0, n_heads_total, max_rows):
            rows = range(start, min(start + max_rows, n_heads_total))
            values = torch.ones(len(rows), shape.n_layers, shape.n_heads, device=device)
            for r, flat in enumerate(rows):
                values[r, flat // shape.n_heads, flat % shape.n_heads] = 0.0
            out = backend.logits(ids.repeat(len(rows), 1), gate(values), positions=_at(n, query, device, len(rows)))
            ablated[start : start + len(rows)] = out.float().softmax(-1)[:, target].cpu()
    index = pd.MultiIndex.from_product([range(shape.n_layers), range(shape.n_heads)], names=["layer", "head"])
    table = pd.DataFrame(
        {
            "attention": attention.float().cpu().numpy(),
            "direct": direct.flatten().numpy(),
            "ablation": (p_target - ablated).numpy(),
        },
        index=index,
    )
    return Triad(table, p_target, target, query, key)


def _at(n: int, query: int, device: Any, rows: int = 1) -> torch.Tensor:
    where = torch.zeros(rows, n, dtype=torch.bool, device=device)
    where[:, query] = True
    return where


def _grab(store: dict, layer: int, query: int) -> Any:
    def hook(module: torch.nn.Module, args: tuple) -> None:
        store[layer] = args[0][0, query].detach()

    return hook


def _grab_out(store: dict, layer: int, query: int) -> Any:
    def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        store[layer] = output[0, query].detach()

    return hook


def _head_outputs(out_proj: torch.nn.Module, z: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Each head's term of W_O z at one position, ``[head, d_model]`` (bias excluded; Linear or Conv1D)."""
    d_head = z.shape[-1] // n_heads
    per_head = torch.zeros(n_heads, z.shape[-1], dtype=z.dtype, device=z.device)
    for h in range(n_heads):
        per_head[h, h * d_head : (h + 1) * d_head] = z[h * d_head : (h + 1) * d_head]
    return (out_proj(per_head) - out_proj(torch.zeros_like(per_head[:1]))).float()


def _frozen_norm(norm: torch.nn.Module, at: torch.Tensor) -> Any:
    """The norm as a linear map with its scale frozen at input ``at`` (LayerNorm or RMSNorm; bias dropped)."""
    eps = float(getattr(norm, "eps", getattr(norm, "variance_epsilon", 1e-6)))
    if isinstance(norm, torch.nn.LayerNorm):
        scale = (at.var(unbiased=False) + eps).rsqrt()
        gain = norm.weight.float() if norm.weight is not None else 1.0
        return lambda c: (c - c.mean(-1, keepdim=True)) * scale * gain
    # RMSNorm-like: norm(x) = x * rsqrt(mean(x^2) + eps) * g; g read off the norm of a vector of ones,
    # which covers both weight conventions (w and 1 + w)
    with torch.no_grad():
        ones = torch.ones(1, at.shape[-1], dtype=next(norm.parameters()).dtype, device=at.device)
        gain = norm(ones)[0].float() * (1 + eps) ** 0.5
    scale = ((at**2).mean() + eps).rsqrt()
    return lambda c: c * scale * gain


def _final_norm(model: Any, found: Any) -> torch.nn.Module:
    root = found.path.split(".")[0]
    name = _FINAL_NORM.get(root)
    module = getattr(getattr(model, root, None), name, None) if name else None
    if module is None:
        raise fail(
            f"triad found no final norm in a {type(model).__name__} (blocks at {found.path!r})",
            f"a final norm at {{{', '.join(f'{k}.{v}' for k, v in _FINAL_NORM.items())}}}",
            "use a GPT-2, GPT-NeoX, Llama, Qwen2 or Gemma 3 model",
        )
    return module
