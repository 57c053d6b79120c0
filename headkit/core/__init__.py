"""The remote-safe kernel: what may run inside an nnsight trace, locally or on an NDIF server.

    errors          HeadkitError and the message shape every error follows
    heads           Heads, a set of (layer, head) pairs
    sites           the canonical tensors interventions act on (z, scores, pattern) and their layouts
    positions       token positions and spans (masks, sentence pooling)
    interventions   the intervention values (zero-ablate, mean-ablate, gate, mask, capture)
    captures        what captures read in a run (Captures, Captured) and a forward pass's result (Run)
    architectures   where each supported transformers architecture keeps its attention parts
    plan            interventions grouped by (site, layer) in forward order
    inputs          checks of token ids, attention masks and positions; real-token position ids
    adapter         the base the backend adapters share (checks, positions, pad id, device, frozen weights)

Modules here import only torch and the standard library at run time (tests/test_kernel.py proves it),
so nnsight can ship them by value to a server that does not have headkit installed. Nothing outside this
subpackage (and the nnsight adapter's trace-side code) travels.
"""
