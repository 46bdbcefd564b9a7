from collections import Counter

import torch
from transformers import AutoModelForCausalLM

from finetrace.adl.score import (ScoreConfig, enrichment, output_geometry, relevant_tokens,
                                 significance, token_counts)
from finetrace.models import load_tokenizer
from finetrace.residual import find_layout


def test_enrichment_is_the_log_ratio_of_smoothed_frequencies():
    scores = enrichment(Counter({1: 9, 2: 1}), Counter({2: 9, 3: 1}), vocab_size=4)
    # fine-tuning: (1, 10, 2, 1) / 14; general: (1, 1, 10, 2) / 14
    expected = torch.tensor([1.0, 10.0, 2.0, 1.0]).log() - torch.tensor([1.0, 1.0, 10.0, 2.0]).log()
    assert torch.allclose(scores, expected.double())


def test_relevant_tokens_need_ratio_and_count():
    scores = torch.tensor([3.0, 3.0, 0.5])
    counts = Counter({0: 5, 1: 1, 2: 50})
    assert relevant_tokens(scores, counts, ScoreConfig(relevance_ratio=4.0, min_count=3)).tolist() == [True, False, False]


def test_token_counts_leave_out_special_tokens(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    counts = token_counts(tokenizer, ["the cat", "the dog"])
    assert tokenizer.bos_token_id not in counts
    assert sum(counts.values()) == len(tokenizer("the cat the dog", add_special_tokens=False)["input_ids"])


def test_significance_is_an_empirical_p_value_over_the_null(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    layout = find_layout(model)
    allowed = torch.ones(model.config.vocab_size, dtype=torch.bool)
    geometry = output_geometry(layout, allowed)
    direction, variance = torch.randn(model.config.hidden_size), torch.ones(model.config.hidden_size)
    config = ScoreConfig(null_samples=99, top_k=10)
    result = significance(layout, direction, variance, allowed, geometry, config)
    beaten = sum(value >= result.coherence for value in result.null_values)
    assert len(result.null_values) == 99
    assert result.p_value == (1 + beaten) / 100
    assert result == significance(layout, direction, variance, allowed, geometry, config)  # seeded
