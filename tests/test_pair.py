import gc
import json
import weakref

import pytest
import torch
from conftest import save_random_llama
from safetensors.torch import load_file, save_file

from finetrace import FinetraceError, FinetuneConfig, LoraSettings, TrainConfig, finetune
from finetrace.models.load import weights_digest
from finetrace.models.pair import load_pair
from finetrace.models.residual import logit_lens, read_residuals


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


def test_a_full_pair_holds_one_model_and_keeps_the_base_readout(tiny_model, tiny_finetuned):
    pair = load_pair(tiny_model, tiny_finetuned, device="cpu")
    with pair.use("base") as (base, layout):
        lens = logit_lens(layout, torch.ones(32))
    base = weakref.ref(base)
    with pair.use("finetuned"):
        gc.collect()
        assert base() is None
        assert torch.allclose(logit_lens(pair.base_readout(), torch.ones(32)), lens, atol=1e-6)


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


def _poison(path, name: str) -> None:
    weights = load_file(path)
    weights[name][0, 0] = float("nan")
    save_file(weights, path, metadata={"format": "pt"})


def test_non_finite_weights_are_refused_at_load_by_name(tiny_model, tiny_tokenizer, tmp_path):
    broken = save_random_llama(tmp_path / "broken", tiny_tokenizer)
    _poison(broken / "model.safetensors", "model.layers.1.mlp.up_proj.weight")
    with pytest.raises(FinetraceError, match=r"non-finite weights .* in model.layers.1.mlp.up"):
        load_pair(broken, tiny_model, device="cpu")  # the base loads at once
    pair = load_pair(tiny_model, broken, device="cpu")
    with pytest.raises(FinetraceError, match=r"non-finite weights .* in model.layers.1.mlp.up"):
        with pair.use("finetuned"):  # the fine-tune when it is first used
            pass


def test_non_finite_adapter_weights_are_refused_by_name(tiny_model, text_data, tmp_path):
    training = TrainConfig(steps=1, batch_size=4, context_length=64)
    config = FinetuneConfig(training=training, lora=LoraSettings(rank=2))
    finetune(tiny_model, text_data, tmp_path / "lora", config)
    adapter = tmp_path / "lora" / "adapter_model.safetensors"
    name = next(key for key in load_file(adapter) if "layers.0" in key and "lora_B" in key)
    _poison(adapter, name)
    with pytest.raises(FinetraceError, match=r"lora.*non-finite weights .* in .*layers\.0\..*lora_B"):
        load_pair(tiny_model, tmp_path / "lora", device="cpu")


def test_an_adapter_on_another_base_of_its_shape_warns_and_strict_refuses(
    tiny_model, tiny_tokenizer, text_data, tmp_path
):
    training = TrainConfig(steps=1, batch_size=4, context_length=64)
    finetune(tiny_model, text_data, tmp_path / "lora", FinetuneConfig(training=training, lora=LoraSettings(rank=2)))
    assert load_pair(tiny_model, tmp_path / "lora", device="cpu").warnings == []
    twin = save_random_llama(tmp_path / "twin", tiny_tokenizer, seed=1)  # the same shape, other weights
    [warning] = load_pair(twin, tmp_path / "lora", device="cpu").warnings
    assert "trained on another base" in warning
    with pytest.raises(FinetraceError, match="trained on another base .*--strict"):
        load_pair(twin, tmp_path / "lora", device="cpu", strict=True)
    manifest = tmp_path / "lora" / "provenance.json"
    older = {**json.loads(manifest.read_text()), "schema_version": 1}  # another finetrace version's
    manifest.write_text(json.dumps(older))
    with pytest.raises(FinetraceError, match="trained on another base .*--strict"):
        load_pair(twin, tmp_path / "lora", device="cpu", strict=True)


def test_an_adapter_with_a_foreign_provenance_file_loads_without_a_warning(tiny_model, text_data, tmp_path):
    training = TrainConfig(steps=1, batch_size=4, context_length=64)
    finetune(tiny_model, text_data, tmp_path / "lora", FinetuneConfig(training=training, lora=LoraSettings(rank=2)))
    for foreign in ("not json {", "[1, 2]", '{"base_files_sha256": 7}'):
        (tmp_path / "lora" / "provenance.json").write_text(foreign)
        assert load_pair(tiny_model, tmp_path / "lora", device="cpu").warnings == []


@pytest.mark.slow
def test_the_weights_digest_reads_every_byte_of_a_large_file(tmp_path):
    """A 272 MB weights file differing from another in one number in its middle: a digest that
    samples blocks would call them the same model, and a resume would reuse the other's sums."""
    weights = torch.zeros(68 << 20)
    save_file({"weight": weights}, tmp_path / "model.safetensors")
    before = weights_digest(tmp_path)
    weights[(34 << 20) + 100_000] = 1e-3  # between any two blocks a sample would read
    save_file({"weight": weights}, tmp_path / "model.safetensors")
    assert weights_digest(tmp_path) != before
