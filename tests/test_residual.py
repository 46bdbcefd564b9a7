import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, OlmoConfig, OlmoForCausalLM

from finetrace.errors import FinetraceError
from finetrace.models.residual import (
    add_to_residual,
    final_logits,
    find_layout,
    logit_lens,
    read_residuals,
    set_residual,
)


@pytest.fixture(scope="module")
def llama(tiny_model):
    return AutoModelForCausalLM.from_pretrained(tiny_model).eval()


def test_hooked_residuals_equal_output_hidden_states(llama):
    ids = torch.tensor([[1, 5, 9, 12, 40, 7]])
    layout = find_layout(llama)
    hooked = read_residuals(llama, layout, [0, 1], input_ids=ids)
    states = llama(input_ids=ids, output_hidden_states=True).hidden_states
    assert torch.allclose(hooked[0], states[1], atol=1e-6)
    # the last entry of hidden_states has the final norm applied; the hook reads the raw residual
    assert torch.allclose(layout.norm(hooked[1]), states[2], atol=1e-5)


def test_gpt2_layout_is_found_too():
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50)).eval()
    layout = find_layout(model)
    ids = torch.tensor([[1, 2, 3]])
    hooked = read_residuals(model, layout, [0], input_ids=ids)
    assert torch.allclose(hooked[0], model(input_ids=ids, output_hidden_states=True).hidden_states[1], atol=1e-6)


def test_logit_lens_of_the_last_residual_gives_the_model_logits(llama):
    ids = torch.tensor([[1, 5, 9]])
    layout = find_layout(llama)
    last = read_residuals(llama, layout, [layout.n_layers - 1], input_ids=ids)[layout.n_layers - 1]
    assert torch.allclose(logit_lens(layout, last), llama(input_ids=ids).logits, atol=1e-5)


def test_steering_adds_the_vector_and_the_hook_leaves_with_the_block(llama):
    ids = torch.tensor([[1, 5, 9]])
    layout = find_layout(llama)
    vector = torch.randn(llama.config.hidden_size)
    plain = read_residuals(llama, layout, [0], input_ids=ids)[0]
    with add_to_residual(layout, 0, vector):
        steered = read_residuals(llama, layout, [0], input_ids=ids)[0]
    assert torch.allclose(steered - plain, vector.expand_as(plain), atol=1e-5)
    assert torch.equal(read_residuals(llama, layout, [0], input_ids=ids)[0], plain)


def test_set_residual_overwrites_one_position(llama):
    ids = torch.tensor([[1, 5, 9]])
    layout = find_layout(llama)
    vector = torch.ones(llama.config.hidden_size)
    plain = read_residuals(llama, layout, [1], input_ids=ids)[1]
    with set_residual(layout, 0, 2, vector):
        patched = read_residuals(llama, layout, [0, 1], input_ids=ids)
    assert torch.equal(patched[0][0, 2], vector)
    assert torch.allclose(patched[1][0, :2], plain[0, :2], atol=1e-6)  # causal: earlier positions unchanged


def test_unknown_architecture_is_refused_with_the_known_ones_and_how_to_add_it():
    with pytest.raises(FinetraceError, match=r"known model types: .*llama.*residual.ARCHITECTURES"):
        find_layout(torch.nn.Linear(2, 2))


@pytest.fixture(scope="module")
def bfloat16_pair(llama):
    """The Llama in bfloat16, and a float32 copy holding exactly the same (rounded) weights."""
    model = copy.deepcopy(llama).to(torch.bfloat16)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(40)  # logits near 10-30: coarse bf16 steps
    return model, copy.deepcopy(model).float()


def test_logit_lens_of_a_bfloat16_model_is_computed_in_float32(bfloat16_pair):
    model, exact = bfloat16_pair
    residual = torch.randn(4, model.config.hidden_size)
    layout = find_layout(model)
    lens, reference = logit_lens(layout, residual), logit_lens(find_layout(exact), residual)
    native = layout.unembed(layout.norm(residual.bfloat16())).float()  # what bf16 arithmetic gives
    assert lens.dtype == torch.float32 and reference.abs().max() > 10
    assert torch.allclose(lens, reference, atol=1e-4)
    assert (native - reference).abs().max() > 1e-2


def test_final_logits_of_a_bfloat16_model_come_from_a_float32_head(bfloat16_pair):
    model, exact = bfloat16_pair
    ids = torch.tensor([[1, 5, 9, 12]])
    logits = final_logits(model, find_layout(model), input_ids=ids)
    native = model(input_ids=ids).logits.float()
    hidden = model.model(input_ids=ids).last_hidden_state.float()  # the head's input, as it is
    reference = torch.nn.functional.linear(hidden, exact.get_output_embeddings().weight)
    assert logits.dtype == torch.float32
    assert torch.allclose(logits, reference, atol=1e-4)
    assert (native - reference).abs().max() > 1e-2


def test_logit_lens_works_through_a_norm_without_parameters():
    config = OlmoConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=32,
        eos_token_id=2,
    )
    model = OlmoForCausalLM(config).to(torch.bfloat16).eval()
    exact = copy.deepcopy(model).float()
    layout = find_layout(model)
    assert not list(layout.norm.parameters())
    last = read_residuals(model, layout, [1], input_ids=torch.tensor([[1, 2, 3]]))[1]  # bfloat16
    lens = logit_lens(layout, last)
    assert lens.dtype == torch.float32
    assert torch.allclose(lens, logit_lens(find_layout(exact), last.float()), atol=1e-6)


def test_non_finite_logits_are_refused(llama):
    broken = copy.deepcopy(llama)
    with torch.no_grad():
        broken.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(FinetraceError, match="non-finite logits"):
        final_logits(broken, find_layout(broken), input_ids=torch.tensor([[1, 5, 9]]))
