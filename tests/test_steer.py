import torch
from transformers import AutoModelForCausalLM

from finetrace.adl.steer import SteerConfig, distinct_bigrams, generate, prompt_texts, steer
from finetrace.models.load import load_tokenizer
from finetrace.models.residual import find_layout

CONFIG = SteerConfig(strengths=(0.5, 50.0), prompts=("the cat", "a cold"), chat_prompts=False,
                     samples_per_prompt=2, max_new_tokens=8)


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


def test_the_chosen_strength_is_the_largest_coherent_one(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    tokenizer, layout = load_tokenizer(tiny_model), find_layout(model)
    result = steer(model, layout, tokenizer, 0, torch.randn(model.config.hidden_size), 1.0, CONFIG)
    assert [t.strength for t in result.trials] == [0.5, 50.0]
    coherent = [t.strength for t in result.trials if t.coherent]
    assert result.any_coherent == bool(coherent)
    assert result.chosen_strength == (max(coherent) if coherent else 0.5)
    for trial in result.trials:
        assert trial.coherent == (trial.distinct_bigrams >= CONFIG.min_distinct_bigrams
                                  and trial.nll <= result.unsteered.nll + CONFIG.max_nll_increase)


def test_chat_tokenizers_are_also_prompted_with_user_turns(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    config = SteerConfig(prompts=("the cat",))
    assert prompt_texts(tokenizer, config) == ["the cat", "<|user|>\nthe cat\n<|assistant|>\n"]
    tokenizer.chat_template = None
    assert prompt_texts(tokenizer, config) == ["the cat"]
