import torch
from transformers import AutoModelForCausalLM

from finetrace.adl.decode import (
    IDENTITY_PROMPTS,
    DecodeConfig,
    lens_tokens,
    patched_next_token,
    patchscopes,
    top_tokens,
    undertrained_tokens,
    unreadable_tokens,
)
from finetrace.models.load import load_tokenizer
from finetrace.models.residual import final_logits, find_layout, logit_lens, set_residual

TYPICAL_NORM = 0.12  # the tiny random model's residual norm


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


def test_a_tokens_output_row_decodes_to_that_token(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    tokenizer, layout = load_tokenizer(tiny_model), find_layout(model)
    # A final norm with uneven weights: a lens that skipped it would misread some rows.
    weight = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(1)).exp()
    with torch.no_grad():
        model.model.norm.weight.copy_(weight)
    rows = layout.unembed.weight.detach()
    allowed = torch.ones(len(tokenizer), dtype=torch.bool)
    # The norm multiplies by its weight after scaling the whole vector, so dividing by it leaves the row.
    top = [lens_tokens(layout, row / weight, allowed, tokenizer, k=1)[0].token_id for row in rows]
    assert top == list(range(len(tokenizer)))
    [cat] = tokenizer(" cat", add_special_tokens=False)["input_ids"]
    [cake] = tokenizer(" cake", add_special_tokens=False)["input_ids"]
    both = lens_tokens(layout, (rows[cat] + rows[cake]) / weight, allowed, tokenizer, k=2)
    assert {t.token for t in both} == {" cat", " cake"}


def test_patchscope_reads_a_token_once_its_direction_outweighs_the_prompt(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    tokenizer, layout = load_tokenizer(tiny_model), find_layout(model)
    [cake] = tokenizer(" cake", add_special_tokens=False)["input_ids"]
    [cat] = tokenizer(" cat", add_special_tokens=False)["input_ids"]
    allowed = torch.ones(len(tokenizer), dtype=torch.bool)
    config = DecodeConfig(top_k=10, patchscope_scales=(0.01, 10.0))
    rows = layout.unembed.weight[[cake, cat]].detach()
    result, other = patchscopes(model, layout, tokenizer, 0, rows, TYPICAL_NORM, allowed, config)
    # Faint, the patch leaves each prompt its own continuation; strong, it decides every prompt's.
    assert [len(s.stable) for s in result.scales] == [0, 10]
    assert result.chosen_scale == 10.0 and result.tokens[0].token == " cake"
    assert other.chosen_scale == 10.0 and other.tokens[0].token == " cat"  # each direction its own rows
    probabilities = [t.score for t in result.tokens]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1


def test_patchscope_after_the_last_layer_is_the_lens_at_every_scale_and_takes_the_smallest(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    tokenizer, layout = load_tokenizer(tiny_model), find_layout(model)
    [cake] = tokenizer(" cake", add_special_tokens=False)["input_ids"]
    row = layout.unembed.weight[cake].detach()
    allowed = torch.ones(len(tokenizer), dtype=torch.bool)
    config = DecodeConfig(top_k=10, patchscope_scales=(4.0, 1.0))
    [result] = patchscopes(model, layout, tokenizer, 1, row[None], TYPICAL_NORM, allowed, config)
    # Only the final norm, which ignores scale, lies between the patch and the head: prompts and scales agree.
    lens = logit_lens(layout, row).topk(10).indices.tolist()
    assert all([t.token_id for t in s.stable] == lens for s in result.scales)
    assert result.chosen_scale == 1.0 and result.tokens[0].token_id == cake


def test_a_patched_last_token_read_over_the_shared_prompt_equals_the_whole_prompt_patched(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    tokenizer, layout = load_tokenizer(tiny_model), find_layout(model)
    ids = tokenizer(IDENTITY_PROMPTS[0])["input_ids"]
    patches = torch.randn(3, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    shared = patched_next_token(model, layout, ids, 0, patches)
    for patch, logits in zip(patches, shared, strict=True):
        with set_residual(layout, 0, len(ids) - 1, patch):
            whole = final_logits(model, layout, input_ids=torch.tensor([ids]))[0, -1]
        torch.testing.assert_close(logits, whole, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(shared[0], shared[1])  # each row read its own patch
