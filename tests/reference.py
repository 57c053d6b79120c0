"""Independent reference computations the tests compare headkit against.

Nothing here uses headkit's intervention code: ablations become weight edits on a copy of the model,
and the pre-softmax mask becomes a hand-written attention function computed from q, k, v head by head.
The module layout below is written out again on purpose (not imported from the adapter under test).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

OUT_PROJ = {  # model_type -> (path to blocks, attention attribute, out-projection attribute)
    "gpt2": ("transformer.h", "attn", "c_proj"),
    "gpt_neox": ("gpt_neox.layers", "attention", "dense"),
    "llama": ("model.layers", "self_attn", "o_proj"),
    "qwen2": ("model.layers", "self_attn", "o_proj"),
    "gemma3_text": ("model.layers", "self_attn", "o_proj"),
}


def attention_module(model, layer):
    blocks, attn, _ = OUT_PROJ[model.config.model_type]
    module = model
    for part in blocks.split("."):
        module = getattr(module, part)
    return getattr(module[layer], attn)


def out_proj(model, layer):
    return getattr(attention_module(model, layer), OUT_PROJ[model.config.model_type][2])


def head_slice(model, layer, head):
    """W_O's columns for one head, as a [d_model, d_head] view (input features h*d:(h+1)*d)."""
    proj = out_proj(model, layer)
    d = head_dim(model)
    cols = slice(head * d, (head + 1) * d)
    if type(proj).__name__ == "Conv1D":  # GPT-2 stores W as [in, out]
        return proj.weight[cols, :].T
    return proj.weight[:, cols]


def head_dim(model):
    c = model.config
    return getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads


def scale_heads(model, scales):
    """A copy of the model whose W_O slices are multiplied by scales {(layer, head): factor}."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for (layer, head), factor in scales.items():
            head_slice(ref, layer, head).mul_(factor)
    return ref


def substitute_means(model, heads, means):
    """A copy of the model where each head's output is the constant means[layer][head] ([d_head]).

    Realised as a weight edit: the head's W_O slice becomes 0 and W_O @ mean moves into the out bias.
    """
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for layer, head in heads:
            proj = out_proj(ref, layer)
            w = head_slice(ref, layer, head)
            shift = w @ means[layer][head].to(w.dtype)
            if proj.bias is None:  # Llama/Gemma o_proj has no bias: give the copy one
                new = torch.nn.Linear(proj.in_features, proj.out_features, bias=True, dtype=proj.weight.dtype)
                new.weight.copy_(proj.weight)
                new.bias.zero_()
                setattr(attention_module(ref, layer), OUT_PROJ[ref.config.model_type][2], new)
                proj, w = new, head_slice(ref, layer, head)
            proj.bias.add_(shift)
            w.zero_()
    return ref


def reference_means(model, ids, attention_mask=None):
    """Mean of every head's z over rows and real-token positions, read with plain torch hooks: {layer: [H, d]}."""
    d, n_heads = head_dim(model), model.config.num_attention_heads
    sums, hooks = {}, []
    weights = torch.ones(ids.shape, dtype=torch.float64) if attention_mask is None else attention_mask.double()
    for layer in range(model.config.num_hidden_layers):
        def grab(module, args, layer=layer):
            z = args[0].detach().double().reshape(*args[0].shape[:2], n_heads, d)
            sums[layer] = (weights[:, :, None, None] * z).sum((0, 1))
        hooks.append(out_proj(model, layer).register_forward_pre_hook(grab))
    try:
        with torch.no_grad():
            model(ids, attention_mask=attention_mask)
    finally:
        for h in hooks:
            h.remove()
    return {layer: (s / weights.sum()).float() for layer, s in sums.items()}


# ------------------------------------------------------------------------------------------------- attention
@dataclass
class Block:
    """Cells the reference attention blocks in one layer: these heads, these key positions, these queries."""

    heads: list[int]
    keys: set[int]
    queries: set[int] | None = None  # None: every query

    def cells(self, batch, n_heads, q_len, k_len):
        out = torch.zeros(batch, n_heads, q_len, k_len, dtype=torch.bool)
        offset = k_len - q_len
        for h in self.heads:
            for qi in range(q_len):
                if self.queries is None or qi + offset in self.queries:
                    for k in self.keys:
                        if k < k_len:
                            out[:, h, qi, k] = True
        return out


BLOCKED: dict[int, Block] = {}
"""layer -> the Block the reference attention applies there (tests set and clear it)."""


def reference_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None, **kw):
    """Attention written out head by head from q, k, v.

    Allowed keys: causal, inside the module's sliding window if it has one, not padding (from the model's
    bool mask) and not in BLOCKED. A query row with no allowed key outputs zero.
    """
    batch, n_heads, q_len, d = query.shape
    k_len = key.shape[2]
    group = n_heads // key.shape[1]
    scaling = d**-0.5 if scaling is None else scaling
    offset = k_len - q_len
    qpos = torch.arange(q_len)[:, None] + offset
    kpos = torch.arange(k_len)[None, :]
    allowed = kpos <= qpos
    window = getattr(module, "sliding_window", None)
    if window is not None:
        allowed = allowed & (qpos - kpos < window)
    allowed = allowed[None, None].expand(batch, n_heads, q_len, k_len)
    if attention_mask is not None:
        allowed = allowed & attention_mask[..., :k_len].to(torch.bool)
    block = BLOCKED.get(module.layer_idx)
    if block is not None:
        allowed = allowed & ~block.cells(batch, n_heads, q_len, k_len)
    out = torch.zeros(batch, q_len, n_heads, d, dtype=query.dtype)
    weights = torch.zeros(batch, n_heads, q_len, k_len, dtype=query.dtype)
    for h in range(n_heads):
        k = key[:, h // group]
        v = value[:, h // group]
        s = (query[:, h] @ k.transpose(-1, -2)) * scaling
        if softcap is not None:
            s = torch.tanh(s / softcap) * softcap
        s = s.masked_fill(~allowed[:, h], float("-inf"))
        live = allowed[:, h].any(-1, keepdim=True)
        p = torch.softmax(s.masked_fill(~live, 0.0), dim=-1).masked_fill(~live, 0.0)
        weights[:, h] = p
        out[:, :, h] = p @ v
    return out, weights


def use_reference_attention(model):
    """Switch a model to the reference attention (bool masks, so padding is visible to it)."""
    AttentionInterface.register("reference", reference_attention)
    AttentionMaskInterface.register("reference", sdpa_mask)
    model.set_attn_implementation("reference")
    return model
