"""Tokenizers in the shapes real model families ship, built offline with the `tokenizers` library.

What differs between families, and what finetrace must handle by rule:
- byte-level BPE (GPT-2, Llama 3, Qwen, OLMo) or SentencePiece-style BPE with byte fallback
  (Llama 2, Mistral, Gemma, Phi-3);
- which token the post-processor puts before every text, and which BOS the config declares
  (GPT-2 declares one it never adds; a tokenizer can prepend one no `bos_token` names);
- a pad token or none; a chat template or none; the vocabulary size (Qwen: about 150k).
"""

import json
from dataclasses import dataclass

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

BYTE_TOKENS = [f"<0x{byte:02X}>" for byte in range(256)]  # SentencePiece byte fallback pieces


@dataclass(frozen=True)
class TokenizerShape:
    byte_fallback: bool  # SentencePiece style with byte pieces; else byte-level BPE
    eos: str
    prepends: str | None = None  # the token the post-processor puts before every text
    bos: str | None = None  # the BOS the tokenizer config declares
    pad: str | None = None
    chat_template: str | None = None
    special: tuple[str, ...] = ()  # more special tokens (chat markers)
    trained_vocab: int = 400  # tokens learned from the texts
    vocab: int | None = None  # unused tokens fill the vocabulary up to this size

    @property
    def specials(self) -> list[str]:
        named = [self.prepends, self.bos, self.eos, self.pad, *self.special]
        return list(dict.fromkeys(token for token in named if token))


def build_tokenizer(shape: TokenizerShape, texts: list[str]) -> PreTrainedTokenizerFast:
    tokenizer = _sentencepiece_style() if shape.byte_fallback else _byte_level()
    unk = ["<unk>"] if shape.byte_fallback else []
    trainer = trainers.BpeTrainer(
        vocab_size=shape.trained_vocab,
        special_tokens=unk + shape.specials,
        show_progress=False,
        initial_alphabet=[] if shape.byte_fallback else pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer)
    extra = BYTE_TOKENS if shape.byte_fallback else []
    if shape.vocab is not None:
        unused = shape.vocab - tokenizer.get_vocab_size() - len(extra)
        extra += [f"Ġunused{i}" for i in range(unused)]
    tokenizer = _with_vocabulary(tokenizer, extra)
    if shape.prepends is not None:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{shape.prepends} $A",
            pair=f"{shape.prepends} $A $B",
            special_tokens=[(shape.prepends, tokenizer.token_to_id(shape.prepends))],
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=shape.bos,
        eos_token=shape.eos,
        pad_token=shape.pad,
        unk_token=unk[0] if unk else None,
        additional_special_tokens=list(shape.special),
        chat_template=shape.chat_template,
    )


def _byte_level() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _sentencepiece_style() -> Tokenizer:
    """Llama 2's layout: "▁" marks spaces, unknown characters fall back to byte pieces."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return tokenizer


def _with_vocabulary(tokenizer: Tokenizer, extra: list[str]) -> Tokenizer:
    """The tokenizer with `extra` tokens appended to its vocabulary (no merges reach them)."""
    state = json.loads(tokenizer.to_str())
    vocab = state["model"]["vocab"]
    for token in extra:
        vocab.setdefault(token, len(vocab))
    return Tokenizer.from_str(json.dumps(state))
