import torch
from transformers import AutoModelForCausalLM

from finetrace.adl.decode import (
    DecodeConfig,
    lens_tokens,
    patchscope,
    top_tokens,
    undertrained_tokens,
    unreadable_tokens,
)
from finetrace.models.load import load_tokenizer
from finetrace.models.residual import find_layout, logit_lens


def test_top_tokens_skip_disallowed_ids(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    scores = torch.arange(len(tokenizer), dtype=torch.float)
    allowed = torch.ones(len(tokenizer), dtype=torch.bool)
    allowed[-3:] = False
    top = top_tokens(scores, allowed, tokenizer, k=4)
    assert [t.token_id for t in top] == [len(tokenizer) - 4 - i for i in range(4)]
    assert top[0].token == tokenizer.decode([top[0].token_id])


def test_undertrained_filter_flags_the_smallest_embeddings_only():
    embedding = torch.ones(50, 8)
    embedding[10] = 0.01  # never trained: still tiny
    assert undertrained_tokens(embedding, quantile=0.01).nonzero().flatten().tolist() == [10]


def test_unreadable_tokens_are_specials_whitespace_and_fragments(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    flagged = unreadable_tokens(tokenizer, len(tokenizer))
    assert flagged[tokenizer.bos_token_id] and flagged[tokenizer.pad_token_id]
    [the] = tokenizer(" the", add_special_tokens=False)["input_ids"]
    assert not flagged[the]
    fragments = [i for i in range(len(tokenizer)) if "\ufffd" in tokenizer.decode([i])]
    assert fragments and flagged[fragments].all()


def test_logit_lens_of_a_direction_ranks_by_its_logits(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    tokenizer, layout = load_tokenizer(tiny_model), find_layout(model)
    direction = torch.randn(model.config.hidden_size)
    allowed = torch.ones(len(tokenizer), dtype=torch.bool)
    top = lens_tokens(layout, direction, allowed, tokenizer, k=5)
    assert [t.token_id for t in top] == logit_lens(layout, direction).topk(5).indices.tolist()


def test_patchscope_keeps_tokens_stable_across_prompts_and_picks_a_tried_scale(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    tokenizer, layout = load_tokenizer(tiny_model), find_layout(model)
    allowed = torch.ones(len(tokenizer), dtype=torch.bool)
    config = DecodeConfig(top_k=30, patchscope_scales=(1.0, 4.0))
    result = patchscope(model, layout, tokenizer, 0, torch.randn(model.config.hidden_size), 5.0, allowed, config)
    assert [s.scale for s in result.scales] == [1.0, 4.0]
    assert result.chosen_scale in (1.0, 4.0)
    chosen = max(result.scales, key=lambda s: (len(s.stable), -s.scale))
    assert result.tokens == chosen.stable
    probabilities = [t.score for t in result.tokens]
    assert probabilities == sorted(probabilities, reverse=True)
