from collections import Counter

import torch
from transformers import AutoModelForCausalLM

from finetrace.adl.score import (ScoreConfig, Significance, enrichment, relevant_count, relevant_tokens,
                                 token_counts, trace_significance)
from finetrace.models import load_tokenizer
from finetrace.residual import find_layout, logit_lens


def test_enrichment_is_the_log_ratio_of_smoothed_frequencies():
    scores = enrichment(Counter({1: 9, 2: 1}), Counter({2: 9, 3: 1}), vocab_size=4)
    # domain: (1, 10, 2, 1) / 14; reference: (1, 1, 10, 2) / 14
    expected = torch.tensor([1.0, 10.0, 2.0, 1.0]).log() - torch.tensor([1.0, 1.0, 10.0, 2.0]).log()
    assert torch.allclose(scores, expected.double())


def test_relevant_tokens_need_ratio_and_count():
    scores = torch.tensor([3.0, 3.0, 0.5])
    counts = Counter({0: 5, 1: 1, 2: 50})
    config = ScoreConfig(relevance_ratio=4.0, min_count=3)
    assert relevant_tokens(scores, counts, config).tolist() == [True, False, False]


def test_token_counts_leave_out_special_tokens(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    counts = token_counts(tokenizer, ["the cat", "the dog"])
    assert tokenizer.bos_token_id not in counts
    assert sum(counts.values()) == len(tokenizer("the cat the dog", add_special_tokens=False)["input_ids"])


def test_significance_is_an_empirical_p_value():
    significance = Significance.of(5, torch.tensor([0, 1, 5, 7]))
    assert significance.p_value == (1 + 2) / 5
    assert significance.relevant == 5 and significance.null_values == [0, 1, 5, 7]


def test_a_direction_onto_relevant_tokens_beats_its_null(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    layout = find_layout(model)
    allowed = torch.ones(model.config.vocab_size, dtype=torch.bool)
    torch.manual_seed(0)
    direction = torch.randn(model.config.hidden_size)
    relevant = torch.zeros(model.config.vocab_size, dtype=torch.bool)
    relevant[logit_lens(layout, direction).topk(8).indices] = True  # the domain this direction reads as
    d = model.config.hidden_size
    config = ScoreConfig(null_samples=199, top_k=10)
    random = torch.randn(d)
    result = trace_significance(layout, torch.stack([direction, random]), torch.ones(2, d), allowed,
                                relevant, config, ["shaped", "isotropic"])
    top = logit_lens(layout, direction).topk(10).indices
    assert result.positions[0].relevant == int(relevant[top].sum()) == 8
    assert result.positions[0].p_value < 0.05
    assert result.total.relevant == result.positions[0].relevant + result.positions[1].relevant
    assert relevant_count(layout, direction[None], allowed, relevant, 10).item() == result.positions[0].relevant
    again = trace_significance(layout, torch.stack([direction, random]), torch.ones(2, d), allowed,
                               relevant, config, ["shaped", "isotropic"])
    assert again == result  # seeded
