from collections import Counter

import pytest
import torch
from scipy.stats import kstest
from transformers import AutoModelForCausalLM

from finetrace.adl.score import (
    ScoreConfig,
    null_directions,
    relevance,
    relevant_count,
    token_counts,
    trace_significance,
)
from finetrace.models.load import load_tokenizer
from finetrace.models.residual import find_layout, logit_lens

CONFIG = ScoreConfig(relevance_ratio=4.0, relevance_z=3.0, min_count=3)


def test_a_token_only_the_data_uses_often_is_relevant_and_a_shared_or_rare_one_is_not():
    data = Counter({1: 60, 2: 60, 3: 2, 5: 500})
    reference = Counter({2: 300, 4: 1000, 5: 2500})
    relevant = relevance(data, reference, vocab_size=6, config=CONFIG).relevant
    # 1: only in the data, often; 2: the reference uses it as much; 3: twice is no evidence;
    # 5: common in both, at the same rate.
    assert relevant.tolist() == [False, True, False, False, False, False]


def test_relevance_does_not_depend_on_the_vocabulary_size():
    data, reference = Counter({1: 60, 2: 5, 7: 30}), Counter({2: 50, 3: 400, 7: 2})
    small = relevance(data, reference, vocab_size=10, config=CONFIG)
    large = relevance(data, reference, vocab_size=150_000, config=CONFIG)
    assert torch.equal(small.relevant, large.relevant[:10]) and not large.relevant[10:].any()
    assert torch.allclose(small.log_odds, large.log_odds[:10])


def test_token_counts_leave_out_special_tokens(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    counts = token_counts(tokenizer, ["the cat", "the dog"])
    assert tokenizer.bos_token_id not in counts
    assert sum(counts.values()) == len(tokenizer("the cat the dog", add_special_tokens=False)["input_ids"])


def test_null_draws_keep_the_mean_component_and_the_norm_and_share_one_direction():
    generator = torch.Generator().manual_seed(0)
    base_mean = torch.randn(3, 16, dtype=torch.float64)
    observed = torch.randn(3, 16, dtype=torch.float64)
    null = null_directions(observed, base_mean, torch.rand(16, dtype=torch.float64), 50, generator)
    unit = base_mean / base_mean.norm(dim=-1, keepdim=True)
    assert torch.allclose((null * unit).sum(-1), (observed * unit).sum(-1).expand(50, 3))
    assert torch.allclose(null.norm(dim=-1), observed.norm(dim=-1).expand(50, 3))
    # Positions whose means point the same way get the very same draw.
    same = null_directions(
        observed[[0, 0]], base_mean[[0, 0]], torch.ones(16, dtype=torch.float64), 5, torch.Generator().manual_seed(1)
    )
    assert torch.allclose(same[:, 0], same[:, 1])


@pytest.fixture(scope="module")
def layout(tiny_model):
    return find_layout(AutoModelForCausalLM.from_pretrained(tiny_model).eval())


def _draw(base_mean: torch.Tensor, along: float, rest: float, seed: int) -> torch.Tensor:
    """Differences (P, d) as the null describes them: a rescaling along the base's mean plus one
    random direction shared by the positions."""
    unit = base_mean / base_mean.norm(dim=-1, keepdim=True)
    noise = torch.randn(base_mean.shape[-1], generator=torch.Generator().manual_seed(seed))
    noise = noise - (unit @ noise)[:, None] * unit
    return along * unit + rest * noise / noise.norm(dim=-1, keepdim=True)


def test_p_values_of_differences_drawn_from_the_null_are_uniform(layout):
    vocab, d = layout.unembed.weight.shape
    base_mean = torch.randn(3, d, generator=torch.Generator().manual_seed(0))
    # The domain is what the rescaling alone reads as, the trap a null of random directions falls into.
    relevant = torch.zeros(vocab, dtype=torch.bool)
    relevant[logit_lens(layout, -base_mean[0]).topk(30).indices] = True
    allowed = torch.ones(vocab, dtype=torch.bool)
    p_values = [
        trace_significance(
            layout,
            _draw(base_mean, -3.0, 2.0, seed),
            base_mean,
            torch.ones(d),
            allowed,
            relevant,
            ScoreConfig(null_samples=99, top_k=10),
            seed,
        ).total.p_value
        for seed in range(200)
    ]
    assert kstest(p_values, "uniform").pvalue > 0.01


def test_a_difference_pointing_at_the_domain_is_found(layout):
    vocab, d = layout.unembed.weight.shape
    base_mean = torch.randn(3, d, generator=torch.Generator().manual_seed(0))
    direction = torch.randn(d, generator=torch.Generator().manual_seed(5))
    relevant = torch.zeros(vocab, dtype=torch.bool)
    relevant[logit_lens(layout, direction).topk(20).indices] = True  # the domain this direction reads as
    observed = _draw(base_mean, -3.0, 0.5, seed=1) + direction * 2.0 / direction.norm()
    allowed = torch.ones(vocab, dtype=torch.bool)
    result = trace_significance(
        layout, observed, base_mean, torch.ones(d), allowed, relevant, ScoreConfig(null_samples=199, top_k=10)
    )
    assert result.total.p_value < 0.01 and result.total.strength > 0.3
    assert sum(p.relevant for p in result.positions) == result.total.relevant
    assert result.total.counted == 3 * 10 and all(0 <= p.relevant <= 10 for p in result.positions)
    again = trace_significance(
        layout, observed, base_mean, torch.ones(d), allowed, relevant, ScoreConfig(null_samples=199, top_k=10)
    )
    assert again == result  # seeded


def test_the_domain_direction_counts_all_its_lens_tokens_and_its_opposite_none(layout):
    vocab, d = layout.unembed.weight.shape
    direction = torch.randn(d, generator=torch.Generator().manual_seed(5))
    relevant = torch.zeros(vocab, dtype=torch.bool)
    relevant[logit_lens(layout, direction).topk(20).indices] = True
    allowed = torch.ones(vocab, dtype=torch.bool)
    allowed[logit_lens(layout, direction).topk(3).indices] = False  # the next allowed ones are relevant too
    # The opposite direction's top tokens are the direction's bottom ones, far from its top 20.
    observed = torch.stack([4 * direction, -4 * direction])
    base_mean = torch.randn(2, d, generator=torch.Generator().manual_seed(0))
    result = trace_significance(
        layout, observed, base_mean, torch.ones(d), allowed, relevant, ScoreConfig(null_samples=19, top_k=10)
    )
    assert [p.relevant for p in result.positions] == [10, 0]
    assert relevant_count(layout, observed, allowed, relevant, 20).tolist() == [17, 0]
