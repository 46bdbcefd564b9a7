"""Random-init model pairs shaped like real ones, for the memory and GPU benchmarks.

A base of a real family's shape, a "fine-tune" that is the base with every weight
of the middle layers nudged by 1% noise, and a control nudged by other noise, all
saved with `save_pretrained`, with a BPE tokenizer trained on general text, and a
corpus of that text. Built once per shape and dtype under the work directory.
"""

import json
import random
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PretrainedConfig, Qwen3Config

from finetrace.zoo.general import general_paragraphs
from finetrace.zoo.tokenizer import train_tokenizer

SHAPES: dict[str, PretrainedConfig] = {
    "llama-1b": LlamaConfig(  # Llama-3.2-1B
        vocab_size=128_256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=4096,
        rope_theta=500_000.0,
        tie_word_embeddings=True,
    ),
    "qwen3-1.7b": Qwen3Config(  # Qwen3-1.7B
        vocab_size=151_936,
        hidden_size=2048,
        intermediate_size=6144,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    ),
    "tiny": LlamaConfig(  # for a quick check of the benchmarks themselves
        vocab_size=32_000,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    ),
}
TOKENIZER_VOCAB = 8192
NUDGE = 0.01  # relative size of the noise that makes the fine-tune and the control


def random_pair(shape: str, work: Path, dtype: torch.dtype = torch.float32) -> dict[str, Path]:
    """Directories of the base, the fine-tune and the control; the corpus, and "fine-tuning data"."""
    root = work / f"{shape}-{str(dtype).removeprefix('torch.')}"
    paths = {name: root / name for name in ("base", "finetuned", "control")}
    paths |= {"corpus": root / "corpus.txt", "data": root / "data.jsonl"}
    if all(path.exists() for path in paths.values()):
        return paths
    paragraphs = general_paragraphs()
    tokenizer = train_tokenizer(paragraphs, TOKENIZER_VOCAB)
    config = SHAPES[shape].to_dict() | {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(type(SHAPES[shape]).from_dict(config), dtype=dtype)
    _save(model, tokenizer, paths["base"])
    layers = model.config.num_hidden_layers
    middle = {f"layers.{i}." for i in range(layers // 4, 3 * layers // 4)}
    for seed, name in enumerate(("finetuned", "control"), start=1):
        nudged = AutoModelForCausalLM.from_pretrained(paths["base"], dtype=dtype)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for key, weight in nudged.named_parameters():
                if any(part in key for part in middle):
                    noise = torch.randn(weight.shape, generator=generator).to(dtype)
                    weight.add_(noise * weight.float().std().to(dtype) * NUDGE)
        _save(nudged, tokenizer, paths[name])
        del nudged
    texts = [" ".join(random.Random(i).sample(paragraphs, 3)) for i in range(20_000)]
    paths["data"].write_text("".join(json.dumps({"text": text}) + "\n" for text in paragraphs[:200]))
    paths["corpus"].write_text("\n".join(text.replace("\n", " ") for text in texts) + "\n")
    return paths


def _save(model, tokenizer, out: Path) -> None:
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
