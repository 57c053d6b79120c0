"""Peak memory of a receiver-head scan: attention pooled on the fly vs ``output_attentions=True``.

    python benchmarks/receivers_memory.py                          # CPU, Gemma 3 270M, 4096 tokens
    python benchmarks/receivers_memory.py --device cuda --tokens 4096 8192

For one long synthetic reasoning trace (numbered arithmetic sentences) it measures, each method in a
fresh process, the peak memory the forward pass adds on top of the loaded model and inputs:

- ``output_attentions``: the Thought Anchors way, eager attention returning every layer's
  ``[heads, T, T]`` pattern (pooling happens afterwards);
- ``headkit``: ``hk.receivers.scan`` (sdpa model; every head captured with ``pool=`` sentence spans, so the
  transformers adapter runs eager attention in chunks of query rows and keeps only ``[S, S]`` per head).

Both compute logits at no position (``logits_to_keep=1`` / ``positions`` all False), so the 262k-token
unembedding does not enter either figure. CPU: peak resident set size sampled every millisecond by a
thread (``RssAnon`` in ``/proc/self/status``, so the memory-mapped weights do not count; glibc's mmap threshold fixed at 128 KiB so
freed blocks leave the resident set) minus the size just before the forward pass; CUDA:
``torch.cuda.max_memory_allocated`` minus the allocation before. It also checks that both give the same
vertical scores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time

import torch


def trace_text(tokenizer, n_tokens: int) -> str:
    """A reasoning-like text of about ``n_tokens`` tokens: short numbered arithmetic sentences."""
    sentences, i = [], 0
    while True:
        a, b = 17 * i % 97 + 3, 31 * i % 89 + 5
        sentences.append(f"Step {i}: we add {a} and {b}, which gives {a + b}, so we keep going.")
        i += 1
        if i % 16 == 0 and len(tokenizer(" ".join(sentences))["input_ids"]) >= n_tokens:
            break
    text = " ".join(sentences)
    ids = tokenizer(text)["input_ids"]
    while len(ids) > n_tokens:  # drop whole sentences until it fits
        sentences.pop()
        text = " ".join(sentences)
        ids = tokenizer(text)["input_ids"]
    return text


class PeakRSS:
    """Peak resident set size (bytes) over a block, sampled every millisecond."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()

    def rss(self) -> int:
        """Anonymous resident memory (excludes the memory-mapped weight files the first pass pages in)."""
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no RssAnon in /proc/self/status")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(0.001)

    def __enter__(self):
        self.start = self.peak = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())


def child(method: str, n_tokens: int, device: str) -> dict:
    import headkit as hk
    from headkit import receivers

    impl = "eager" if method == "output_attentions" else "sdpa"
    model, tok = hk.load_default(device=device, attn_implementation=impl)
    trace = hk.sentences.locate(tok, trace_text(tok, n_tokens))
    ids = trace.input_ids.to(device)
    with torch.no_grad():  # warm-up: one-off allocations (thread pools, rotary tables) stay out of the figure
        model(ids[:, :64], logits_to_keep=1, use_cache=False)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    with torch.no_grad(), PeakRSS() as rss:
        if method == "output_attentions":
            attentions = model(ids, output_attentions=True, logits_to_keep=1, use_cache=False).attentions
            if cuda:
                torch.cuda.synchronize()
                peak = torch.cuda.max_memory_allocated() - before
            member = trace.membership().to(device).float()
            member = member / member.sum(1, keepdim=True)
            pooled = torch.stack([torch.einsum("sq,hqk,tk->hst", member, a[0].float(), member) for a in attentions])
            del attentions
            vertical = receivers.vertical_scores(pooled.cpu(), 4)
        else:
            result = receivers.scan(model, [trace], progress=False)
            if cuda:
                torch.cuda.synchronize()
                peak = torch.cuda.max_memory_allocated() - before
            vertical = result.vertical[0]
    seconds = time.perf_counter() - t0
    if not cuda:
        peak = rss.peak - rss.start
    return {
        "method": method,
        "tokens": trace.n_tokens,
        "sentences": len(trace),
        "peak_bytes": peak,
        "seconds": seconds,
        "vertical": vertical.tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.device)))
        return

    import transformers

    import headkit

    print(f"# receiver scan peak memory, {args.device}, float32, Gemma 3 270M (18 layers x 4 heads)")
    print(f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"headkit {headkit.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(f"command: python {' '.join(sys.argv)}\n")
    print("| tokens | sentences | output_attentions peak | headkit peak | ratio | max vertical-score diff | times (s) |")
    print("|---|---|---|---|---|---|---|")
    for n in args.tokens:
        runs = {}
        for method in ("output_attentions", "headkit"):
            cmd = [sys.executable, __file__, "--device", args.device, "--child", method, str(n)]
            env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")  # glibc: big blocks go back to the OS on free
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
            runs[method] = json.loads(out.strip().splitlines()[-1])
        a, b = runs["output_attentions"], runs["headkit"]
        diff = (torch.tensor(a["vertical"]) - torch.tensor(b["vertical"])).abs().nan_to_num(0).max().item()
        mib = 1 << 20
        print(f"| {a['tokens']} | {a['sentences']} | {a['peak_bytes'] / mib:,.0f} MiB | {b['peak_bytes'] / mib:,.0f} MiB "
              f"| {b['peak_bytes'] / a['peak_bytes']:.4f} (1/{a['peak_bytes'] / max(b['peak_bytes'], 1):.0f}) "
              f"| {diff:.1e} | {a['seconds']:.1f} / {b['seconds']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
