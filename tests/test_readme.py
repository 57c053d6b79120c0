"""The README's nnsight examples run as written: the local one offline, the remote one failing offline with a
HeadkitError that names the cause (no key, no network), never a raw transformers or network error."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

import headkit as hk
from tests.conftest import require

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def python_blocks(section: str) -> list[str]:
    text = README.split(f"### {section}", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.fixture
def nnsight_blocks():
    require("nnsight")
    blocks = python_blocks("nnsight (local, and remote on NDIF)")
    assert len(blocks) == 2, "the nnsight section has a local and a remote example"
    return blocks


def run_as_script(code: str, folder: Path) -> dict:
    """Run a README block as a file of its own (nnsight reads a trace's body back from its source file)."""
    script = folder / "example.py"
    script.write_text(code)
    return runpy.run_path(str(script), run_name="__main__")


def test_the_local_nnsight_example_runs_as_written(nnsight_blocks, tmp_path):
    namespace = run_as_script(nnsight_blocks[0], tmp_path)  # nothing defined for it: its own imports only
    assert namespace["logits"].shape[:2] == (1, 7)  # BOS + 6 words
    assert namespace["got"][namespace["cap"]].pattern(0, 1).shape == (1, 7, 7)


def test_the_remote_nnsight_example_fails_offline_with_the_cause(nnsight_blocks, monkeypatch, tmp_path):
    from nnsight import CONFIG

    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    with pytest.raises(hk.HeadkitError, match=r"no NDIF API key is configured.*NDIF_API_KEY"):
        run_as_script(nnsight_blocks[1], tmp_path)
    monkeypatch.setattr(CONFIG.API, "APIKEY", "a-secret-key")
    monkeypatch.setattr(CONFIG.API, "HOST", "http://127.0.0.1:9")  # nothing listens: fails at once, as offline
    with pytest.raises(hk.HeadkitError, match=r"could not reach NDIF at http://127\.0\.0\.1:9") as error:
        run_as_script(nnsight_blocks[1], tmp_path)
    assert "a-secret-key" not in str(error.value)


def test_the_prompts_example_runs_as_written(tmp_path):
    (block,) = python_blocks("Prompts")
    namespace = run_as_script(block, tmp_path)
    p, tok = namespace["p"], namespace["tok"]
    assert p.left.input_ids.shape == (2, 7) and p.right.input_ids.shape == (2, 8)
    first = [tok(t, add_special_tokens=False)["input_ids"][0] for t in (" apples", " milk .")]
    assert p.left.targets.tolist() == first
    assert p.right.target_mask.sum(-1).tolist() == [len(tok(t, add_special_tokens=False)["input_ids"])
                                                    for t in (" apples", " milk .")]
    assert len(namespace["solved"]) == 3 and namespace["solved"].texts[1] == namespace["task"].texts[2]
