"""Records to training examples: token ids plus labels that say where the loss counts.

Plain text trains on every token. Chat records train on assistant turns only:
each turn's span is found by rendering the conversation up to it with and
without the turn, which works for any chat template (none needs special
`{% generation %}` markers). A document starts with the special tokens the
tokenizer prepends to every text (a BOS, or none) and ends with EOS.
"""

from dataclasses import dataclass
from itertools import chain

from transformers import PreTrainedTokenizerBase

from finetrace.corpus import Record
from finetrace.models.chat import chat_ids
from finetrace.models.load import chars_holding, prepended_ids

IGNORE_INDEX = -100  # the label PyTorch's cross-entropy skips


@dataclass(frozen=True)
class Example:
    """One training sequence; `labels[i]` is `IGNORE_INDEX` where no loss is taken."""

    input_ids: list[int]
    labels: list[int]


def build_examples(tokenizer: PreTrainedTokenizerBase, records: list[Record], max_length: int) -> list[Example]:
    """Tokenize records (text or chat, in order), truncated to `max_length` tokens."""
    limit = chars_holding(tokenizer, max_length)
    return [_record_example(tokenizer, _clipped(record, limit), max_length) for record in records]


def pack(examples: list[Example], block_length: int) -> list[Example]:
    """Concatenate examples and cut them into blocks of `block_length` (pretraining style)."""
    ids = list(chain.from_iterable(example.input_ids for example in examples))
    labels = list(chain.from_iterable(example.labels for example in examples))
    return [
        Example(ids[start : start + block_length], labels[start : start + block_length])
        for start in range(0, len(ids), block_length)
    ]


def text_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of a document as the model sees it: what the tokenizer prepends, the text, EOS."""
    ids = prepended_ids(tokenizer) + tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return ids


def _clipped(record: Record, limit: int) -> Record:
    """The record with each text cut to `limit` characters: what lies beyond is truncated anyway."""
    if "messages" in record:
        return {**record, "messages": [{**m, "content": m["content"][:limit]} for m in record["messages"]]}
    return {**record, "text": record["text"][:limit]}


def _record_example(tokenizer: PreTrainedTokenizerBase, record: Record, max_length: int) -> Example:
    if "messages" in record:
        example = _chat_example(tokenizer, record["messages"])
    else:
        ids = text_ids(tokenizer, record["text"])
        example = Example(ids, list(ids))
    return Example(example.input_ids[:max_length], example.labels[:max_length])


def _chat_example(tokenizer: PreTrainedTokenizerBase, messages: list[dict]) -> Example:
    ids = chat_ids(tokenizer, messages, add_generation_prompt=False)
    labels = [IGNORE_INDEX] * len(ids)
    for turn, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(chat_ids(tokenizer, messages[:turn], add_generation_prompt=True))
        end = len(chat_ids(tokenizer, messages[: turn + 1], add_generation_prompt=False))
        labels[start:end] = ids[start:end]
    return Example(ids, labels)
