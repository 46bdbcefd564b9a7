from dataclasses import replace

import torch
from transformers import AutoModelForCausalLM

from finetrace.adl.steer import (
    PromptBatch,
    SteerConfig,
    continuation_nlls,
    distinct_bigrams,
    generate,
    prompt_texts,
    sample,
    steer,
)
from finetrace.models.load import load_tokenizer
from finetrace.models.residual import find_layout

CONFIG = SteerConfig(
    strengths=(0.5, 50.0), prompts=("the cat", "a cold"), chat_prompts=False, samples_per_prompt=2, max_new_tokens=8
)


def test_distinct_bigrams_catch_loops():
    assert distinct_bigrams("a b a b a b") == 2 / 5
    assert distinct_bigrams("one two three") == 1.0
    assert distinct_bigrams("alone") == 1.0


def test_unsteered_generation_is_plain_sampling_with_the_seed(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    tokenizer, layout = load_tokenizer(tiny_model), find_layout(model)
    first = generate(model, layout, tokenizer, 0, None, CONFIG)
    assert first == generate(model, layout, tokenizer, 0, None, CONFIG)
    assert len(first) == 4 and [g.prompt for g in first] == ["the cat", "the cat", "a cold", "a cold"]
    steered = generate(model, layout, tokenizer, 0, torch.ones(model.config.hidden_size) * 100, CONFIG)
    assert [g.text for g in steered] != [g.text for g in first]
    # Each prompt is read once for its samples: the draws are those of a plain `generate`.
    batch = PromptBatch.of(tokenizer, CONFIG)
    tokens = sample(model, layout, batch, 0, None, CONFIG)
    torch.manual_seed(0)
    plain = model.generate(
        input_ids=batch.ids,
        attention_mask=batch.mask,
        do_sample=True,
        temperature=CONFIG.temperature,
        max_new_tokens=CONFIG.max_new_tokens,
        num_return_sequences=CONFIG.samples_per_prompt,
        pad_token_id=batch.pad_id,
    )
    assert torch.equal(tokens, plain[:, batch.ids.shape[1] :])
    # Fewer tokens with the same seed are the beginning of the longer samples: steering reads its
    # short unsteered baseline from the full-length ones.
    short = sample(model, layout, batch, 0, None, replace(CONFIG, max_new_tokens=3))
    assert torch.equal(short, tokens[:, :3])


def test_continuations_are_scored_as_the_model_reads_them_whole(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    tokenizer, layout = load_tokenizer(tiny_model), find_layout(model)
    batch = PromptBatch.of(tokenizer, replace(CONFIG, prompts=("the cat sat on", "a")))  # padded apart
    tokens = sample(model, layout, batch, 0, None, CONFIG)
    stop = model.generation_config.eos_token_id
    tokens[0, 3:] = stop  # the first row's text ends after three tokens
    nlls = continuation_nlls(model, batch, batch.past(model), tokens)
    for row, nll in enumerate(nlls):
        prompt = tokenizer(batch.prompts[row // CONFIG.samples_per_prompt])["input_ids"]
        text = tokens[row, :3].tolist() if row == 0 else tokens[row].tolist()
        # The row alone, unpadded, through the model's own forward and log-softmax.
        logits = model(input_ids=torch.tensor([prompt + text])).logits[0, len(prompt) - 1 : -1]
        expected = -logits.log_softmax(-1).gather(-1, torch.tensor(text)[:, None]).mean()
        assert abs(nll - expected.item()) < 1e-4


def _confident_model(path):
    """The random model with its head scaled up: its near-uniform next-token distributions would
    drown any steering, and sharp ones let a steering vector take over the text."""
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(50)
    return model, find_layout(model)


def test_steering_into_a_loop_is_incoherent_and_a_tiny_strength_is_chosen_over_it(tiny_model):
    model, layout = _confident_model(tiny_model)
    tokenizer = load_tokenizer(tiny_model)
    [the] = tokenizer(" the", add_special_tokens=False)["input_ids"]
    config = replace(CONFIG, strengths=(0.001, 0.002, 100.0), search_tokens=4)
    # Pushed hard along its own output row, the model says " the" over and over.
    result = steer(model, layout, tokenizer, 1, layout.unembed.weight[the].detach(), 1.0, config)
    # Bisection: the middle strength first, then the larger half's middle, which loops.
    assert [t.strength for t in result.search] == [0.002, 100.0]
    assert [t.coherent for t in result.search] == [True, False]
    assert all(g.text == " the" * 4 for g in result.search[1].generations)
    assert result.chosen_strength == 0.002 and result.any_coherent
    # Only the unsteered text and the chosen strength's are sampled at full length.
    full = generate(model, layout, tokenizer, 1, None, config)
    assert result.unsteered.generations == full and result.steered == result.chosen.generations
    # The same draws at the same strength: the search's short samples begin the chosen ones.
    for searched, chosen in zip(result.search[0].generations, result.steered, strict=True):
        assert chosen.text.startswith(searched.text) and len(chosen.text) > len(searched.text)


def test_steering_into_text_the_model_finds_unlikely_is_incoherent_even_without_loops(tiny_model):
    model, layout = _confident_model(tiny_model)
    tokenizer = load_tokenizer(tiny_model)
    config = replace(CONFIG, strengths=(100.0, 200.0))
    direction = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    result = steer(model, layout, tokenizer, 0, direction, 1.0, config)
    assert [t.strength for t in result.search] == [100.0]  # the smaller half needs no trial once it fails
    for trial in [*result.search, result.chosen]:
        # No loop of words, but many nats per token less likely than unsteered text.
        assert trial.distinct_bigrams == 1.0 and trial.nll > result.unsteered.nll + 5
        assert not trial.coherent
    assert not result.any_coherent and result.chosen_strength == 100.0  # none coherent: the smallest


def test_chat_tokenizers_are_also_prompted_with_user_turns(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    config = SteerConfig(prompts=("the cat",))
    assert prompt_texts(tokenizer, config) == ["the cat", "<|user|>\nthe cat\n<|assistant|>\n"]
    tokenizer.chat_template = None
    assert prompt_texts(tokenizer, config) == ["the cat"]
