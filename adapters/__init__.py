"""Framework adapters, installed as ``headkit.adapters``; each imports its framework only when imported.

    headkit.adapters.transformer_lens   TransformerLens 4.x TransformerBridge: fwd_hooks(...), applied(...)
    headkit.adapters.huggingface        plain transformers models: applied(...), torch hooks only
    headkit.adapters.nnsight            nnsight 0.8 traces, local or remote (NDIF): apply(model, ...)
"""
