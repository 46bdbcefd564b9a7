import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from finetrace.errors import FinetraceError
from finetrace.residual import add_to_residual, find_layout, logit_lens, read_residuals, set_residual


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


def test_unknown_architecture_is_refused_with_the_known_paths():
    with pytest.raises(FinetraceError, match="known layer paths: model.layers"):
        find_layout(torch.nn.Linear(2, 2))
