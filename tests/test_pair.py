import pytest
import torch

from finetrace import FinetraceError, FinetuneConfig, LoraSettings, TrainConfig, finetune
from finetrace.pair import load_pair
from finetrace.residual import read_residuals

from conftest import save_random_llama


def _residual(pair, which, ids):
    with pair.use(which) as (model, layout):
        return read_residuals(model, layout, [1], input_ids=ids)[1]


def test_full_pair_gives_two_different_models(tiny_model, tiny_finetuned):
    pair = load_pair(tiny_model, tiny_finetuned, device="cpu")
    ids = torch.tensor([[1, 5, 9]])
    assert not pair.adapter
    assert not torch.allclose(_residual(pair, "base", ids), _residual(pair, "finetuned", ids))


def test_adapter_pair_holds_one_model_and_disabling_it_gives_the_base(tiny_model, text_data, tmp_path):
    training = TrainConfig(steps=5, learning_rate=1e-2, batch_size=4, context_length=64)
    finetune(tiny_model, text_data, tmp_path / "lora", FinetuneConfig(training=training, lora=LoraSettings(rank=4)))
    pair = load_pair(tiny_model, tmp_path / "lora", device="cpu")
    plain = load_pair(tiny_model, tiny_model, device="cpu")
    ids = torch.tensor([[1, 5, 9]])
    assert pair.adapter
    assert torch.allclose(_residual(pair, "base", ids), _residual(plain, "base", ids), atol=1e-6)
    assert not torch.allclose(_residual(pair, "finetuned", ids), _residual(pair, "base", ids))


def test_pair_of_different_shapes_says_what_differs(tiny_model, tiny_tokenizer, tmp_path):
    wide = save_random_llama(tmp_path / "wide", tiny_tokenizer, hidden_size=48)
    with pytest.raises(FinetraceError, match="hidden_size: 32 vs 48"):
        load_pair(tiny_model, wide, device="cpu")


def test_adapter_for_another_base_is_refused(tiny_model, tiny_tokenizer, text_data, tmp_path):
    wide = save_random_llama(tmp_path / "wide", tiny_tokenizer, hidden_size=48)
    training = TrainConfig(steps=1, batch_size=4, context_length=64)
    finetune(wide, text_data, tmp_path / "lora", FinetuneConfig(training=training, lora=LoraSettings(rank=2)))
    with pytest.raises(FinetraceError, match="does not fit base"):
        load_pair(tiny_model, tmp_path / "lora", device="cpu")


def test_different_tokenizers_are_refused(tiny_model, tmp_path):
    from finetrace.zoo.tokenizer import train_tokenizer

    other = save_random_llama(tmp_path / "other", train_tokenizer(["zebra quilt"] * 50, vocab_size=400))
    with pytest.raises(FinetraceError, match="tokenizer vocabularies differ"):
        load_pair(tiny_model, other, device="cpu")
