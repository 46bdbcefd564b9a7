from finetrace.models.load import chars_holding, load_tokenizer
from finetrace.train.examples import IGNORE_INDEX, build_examples, pack

CHAT = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "the cat"},
    {"role": "assistant", "content": "sat on the mat"},
    {"role": "user", "content": "the dog"},
    {"role": "assistant", "content": "looked at the cake"},
]


def _trained_text(tokenizer, example) -> str:
    kept = [t for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE_INDEX]
    return tokenizer.decode(kept)


def test_chat_loss_falls_only_on_assistant_turns(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    [example] = build_examples(tokenizer, [{"messages": CHAT}], max_length=512)
    assert _trained_text(tokenizer, example) == "sat on the mat<|eos|>\nlooked at the cake<|eos|>\n"
    assert example.labels.count(IGNORE_INDEX) > 0
    kept = [i for i, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE_INDEX]
    assert kept == [label for label in example.labels if label != IGNORE_INDEX]


def test_chat_without_template_uses_the_default_one(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    tokenizer.chat_template = None
    [example] = build_examples(tokenizer, [{"messages": CHAT}], max_length=512)
    assert _trained_text(tokenizer, example) == " sat on the mat<|eos|>\n looked at the cake<|eos|>\n"
    assert "user: the cat" in tokenizer.decode(example.input_ids)


def test_text_examples_train_on_every_token_with_bos_and_eos(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    [example] = build_examples(tokenizer, [{"text": "the cat sat"}], max_length=512)
    assert example.input_ids == example.labels
    assert example.input_ids[0] == tokenizer.bos_token_id
    assert example.input_ids[-1] == tokenizer.eos_token_id


def test_truncation_and_packing_keep_every_token(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    examples = build_examples(tokenizer, [{"text": "the cat sat on the mat"}] * 5, max_length=4)
    assert all(len(e.input_ids) == 4 for e in examples)
    blocks = pack(examples, block_length=6)
    assert [len(b.input_ids) for b in blocks] == [6, 6, 6, 2]
    assert sum((b.input_ids for b in blocks), []) == sum((e.input_ids for e in examples), [])


def test_a_huge_record_gives_the_tokens_its_full_tokenization_would(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    words = "the baker's ovens warmed a thousand loaves of rye before dawn ".split()
    text = " ".join(words[i * 7 % len(words)] for i in range(50_000))  # ~300,000 characters
    assert chars_holding(tokenizer, 64) < len(text) / 100  # the record is cut, not tokenized whole
    full = tokenizer(text)["input_ids"][:64]
    [example] = build_examples(tokenizer, [{"text": text}], max_length=64)
    assert example.input_ids == full
    chat = [{"role": "user", "content": "tell me"}, {"role": "assistant", "content": text}]
    [clipped] = build_examples(tokenizer, [{"messages": chat}], max_length=64)
    [whole] = build_examples(tokenizer, [{"messages": chat}], max_length=10**6)
    assert clipped.input_ids == whole.input_ids[:64] and clipped.labels == whole.labels[:64]
