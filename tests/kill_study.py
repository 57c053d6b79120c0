"""A small stochastic-ablation study that can be killed at a chosen write (tests/test_outcome_log.py).

    python -m tests.kill_study FOLDER count            # print how often each write seam is called
    python -m tests.kill_study FOLDER SEAM N           # SIGKILL itself at the N-th call of SEAM

Seams: ``write`` (half of the bytes written, then killed: meta.json, calibration.json and every block),
``replace`` (killed before a temporary file is renamed over meta.json or calibration.json) and ``fsync``
(killed after the bytes are written, before they are flushed).
"""

from __future__ import annotations

import json
import os
import signal
import sys

import torch

import headkit as hk
from headkit.analyses import outcome_log, stochastic_ablation

PROMPTS = ["Tom eats apples . Tom eats", "the cat saw a dog . the cat saw a", "Sarah wears hats . Sarah",
           "Alice reads books . Alice reads"]


def run(path):
    """The study every kill test resumes: calibrated p_keep (so calibration.json is written), two phases."""
    model, tok = hk.models.tiny("llama")
    with torch.no_grad():
        targets = torch.stack([model(torch.tensor([tok(p)["input_ids"]])).logits[0, -1].argmax() for p in PROMPTS])
    return stochastic_ablation.study(model, PROMPTS, targets, tokenizer=tok, n_masks=12, p_keep="auto",
                                     calibration_masks=16, rows_per_pass=4 * len(PROMPTS), n_boot=5, path=path, progress=False)


def main(folder: str, seam: str, n: int = 0) -> None:
    calls = {"write": 0, "replace": 0, "fsync": 0}
    write_all, replace, fsync = outcome_log._write_all, os.replace, outcome_log._fsync

    def hit(name: str) -> bool:
        calls[name] += 1
        return seam == name and calls[name] == n

    def killing_write(fd, data):
        if hit("write"):
            os.write(fd, bytes(data[: max(1, len(data) // 2)]))
            os.kill(os.getpid(), signal.SIGKILL)
        write_all(fd, data)

    def killing_replace(src, dst):
        if hit("replace"):
            os.kill(os.getpid(), signal.SIGKILL)
        replace(src, dst)

    def killing_fsync(fd):
        if hit("fsync"):
            os.kill(os.getpid(), signal.SIGKILL)
        fsync(fd)

    outcome_log._write_all, outcome_log._fsync = killing_write, killing_fsync
    os.replace = killing_replace
    run(folder)
    print(json.dumps(calls))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0)
