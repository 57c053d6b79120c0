"""Tiny TransformerLens 2.x/3.x ``HookedTransformer``s with the weights of headkit's tiny transformers models.

The configuration is written out by hand (``HookedTransformerConfig``, no download) and the weights are
converted with TransformerLens's own converters, so one tiny model runs through the TransformerLens
adapter and the transformers adapter and the two are compared number for number. Any transformers model
of these architectures converts, including the weight-edited copies the references build.
"""

from __future__ import annotations

HOOKED_ARCHS = ["gpt2", "llama", "qwen2"]
"""GPT-2 (LayerNorm, learned positions, value biases), Llama (RMSNorm, rotary, GQA), Qwen2 (GQA, q/k/v biases)."""


def hooked_transformer_available() -> bool:
    """Whether this TransformerLens has ``HookedTransformer`` (2.x, 3.x; removed in 4.0)."""
    try:
        from transformer_lens import HookedTransformer  # noqa: F401
    except ImportError:
        return False
    return True


def hooked_from(hf, arch: str, *, fold_value_biases: bool = False):
    """A HookedTransformer with the weights of a tiny transformers model of architecture ``arch``."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained import weight_conversions as convert

    c = hf.config
    dtype = next(hf.parameters()).dtype
    if arch == "gpt2":
        cfg = HookedTransformerConfig(
            n_layers=c.n_layer, d_model=c.n_embd, n_ctx=c.n_positions, d_head=c.n_embd // c.n_head,
            n_heads=c.n_head, d_mlp=c.n_inner or 4 * c.n_embd, d_vocab=c.vocab_size, act_fn="gelu_new",
            normalization_type="LN", eps=c.layer_norm_epsilon, positional_embedding_type="standard",
            original_architecture="GPT2LMHeadModel", default_prepend_bos=False, dtype=dtype,
        )
        state = convert.convert_gpt2_weights(hf, cfg)
    elif arch in ("llama", "qwen2"):
        d_head = c.hidden_size // c.num_attention_heads
        cfg = HookedTransformerConfig(
            n_layers=c.num_hidden_layers, d_model=c.hidden_size, n_ctx=c.max_position_embeddings, d_head=d_head,
            n_heads=c.num_attention_heads, n_key_value_heads=c.num_key_value_heads, d_mlp=c.intermediate_size,
            d_vocab=c.vocab_size, act_fn="silu", normalization_type="RMS", eps=c.rms_norm_eps,
            positional_embedding_type="rotary", rotary_dim=d_head, rotary_base=int(c.rope_parameters["rope_theta"]),
            gated_mlp=True, final_rms=True, rotary_adjacent_pairs=False, default_prepend_bos=False, dtype=dtype,
            original_architecture="LlamaForCausalLM" if arch == "llama" else "Qwen2ForCausalLM",
        )
        state = (convert.convert_llama_weights if arch == "llama" else convert.convert_qwen2_weights)(hf, cfg)
        for layer, block in enumerate(hf.model.layers):  # a reference copy may give o_proj a bias
            if block.self_attn.o_proj.bias is not None:
                state[f"blocks.{layer}.attn.b_O"] = block.self_attn.o_proj.bias
    else:
        raise ValueError(f"no HookedTransformer conversion for {arch!r} (have {HOOKED_ARCHS})")
    model = HookedTransformer(cfg)
    state = {k: v.detach().clone() for k, v in state.items()}
    if fold_value_biases:  # TransformerLens's own processing, as from_pretrained does by default
        model.load_and_process_state_dict(
            state, fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=True
        )
    else:  # an exact copy (TransformerLens 3.9's loader rounds W_O through float32 even with processing off)
        unexpected = model.load_state_dict(state, strict=False).unexpected_keys
        assert not unexpected, unexpected
    return model.eval()
