import pytest
import torch

from finetrace import FinetraceError
from finetrace.adl import collect as collect_module
from finetrace.adl.collect import CollectConfig, collect, resolve_layers
from finetrace.pair import load_pair
from finetrace.residual import read_residuals

from conftest import TEXTS


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"{text} number {i}\n" for i, text in enumerate(TEXTS[:40])))
    return path


def test_layers_from_fractions_and_indices():
    assert resolve_layers((0.5,), 9) == [4]
    assert resolve_layers((0.5, 1, 3), 8) == [1, 3]
    with pytest.raises(FinetraceError, match="outside the model's 8 layers"):
        resolve_layers((8,), 8)


def test_identical_models_give_an_exactly_zero_difference(tiny_model, corpus, tmp_path):
    pair = load_pair(tiny_model, tiny_model, device="cpu")
    result = collect(pair, corpus, CollectConfig(layers=(0, 1), positions=4, batch_size=8), tmp_path)
    assert result.texts == 40
    assert result.position_labels == ["BOS", "0", "1", "2", "3"]
    assert torch.count_nonzero(result.mean_delta) == 0
    assert torch.all(result.base_norm.mean > 0)


def test_first_k_tokens_give_the_same_means_as_full_sequences(tiny_model, tiny_finetuned, corpus, tmp_path):
    pair = load_pair(tiny_model, tiny_finetuned, device="cpu")
    result = collect(pair, corpus, CollectConfig(layers=(1,), positions=4, batch_size=16), tmp_path)
    texts = corpus.read_text().splitlines()
    deltas = []
    for text in texts:  # the reference way: whole sequences, every activation kept
        ids = pair.tokenizer(text, return_tensors="pt")["input_ids"]
        residual = {}
        for which in ("base", "finetuned"):
            with pair.use(which) as (model, layout):
                residual[which] = read_residuals(model, layout, [1], input_ids=ids)[1][0]
        assert ids.shape[1] > 5
        deltas.append((residual["finetuned"] - residual["base"])[:5])
    reference = torch.stack(deltas).double().mean(0)  # (positions, d)
    assert torch.allclose(result.mean_delta[0], reference, atol=1e-6)


def test_an_interrupted_run_resumes_to_the_same_numbers(tiny_model, tiny_finetuned, corpus, tmp_path, monkeypatch):
    pair = load_pair(tiny_model, tiny_finetuned, device="cpu")
    config = CollectConfig(layers=(1,), positions=4, batch_size=8, checkpoint_every=1)
    uninterrupted = collect(pair, corpus, config, tmp_path / "whole")

    real_accumulate, calls = collect_module._accumulate, []

    def failing_accumulate(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_accumulate(*args)

    monkeypatch.setattr(collect_module, "_accumulate", failing_accumulate)
    with pytest.raises(KeyboardInterrupt):
        collect(pair, corpus, config, tmp_path / "resumed")
    calls.clear()
    monkeypatch.setattr(collect_module, "_accumulate", lambda *a: (calls.append(1), real_accumulate(*a)))
    resumed = collect(pair, corpus, config, tmp_path / "resumed")
    assert len(calls) == 3  # batches 3, 4 and 5 of 5
    assert torch.equal(resumed.delta.total, uninterrupted.delta.total)
    assert resumed.texts == 40


def test_sample_limit_and_empty_corpus(tiny_model, corpus, tmp_path):
    pair = load_pair(tiny_model, tiny_model, device="cpu")
    assert collect(pair, corpus, CollectConfig(samples=10, positions=2), tmp_path / "a").texts == 10
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(FinetraceError, match="holds no texts"):
        collect(pair, empty, CollectConfig(positions=2), tmp_path / "b")
