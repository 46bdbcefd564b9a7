import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TEXTS, save_random_llama
from safetensors.torch import load_file, save_file
from tokenizer_shapes import TokenizerShape, build_tokenizer

from finetrace import FinetraceError
from finetrace.adl import collect as collect_module
from finetrace.adl.collect import BASE_STORE, CHECKPOINT_NAME, CollectConfig, collect, resolve_layers
from finetrace.models.pair import load_pair
from finetrace.models.residual import read_residuals

# Tokenizers as real families ship them, none with a pad token.
SHAPES = {
    "gpt2": TokenizerShape(False, eos="<|endoftext|>", bos="<|endoftext|>"),  # declared, not added
    "llama": TokenizerShape(False, eos="</s>", prepends="<s>", bos="<s>"),
    "unnamed-bos": TokenizerShape(False, eos="</s>", prepends="<s>"),  # no bos_token names it
}


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


def _reference_deltas(pair, texts: list[str], layer: int, length: int) -> torch.Tensor:
    """The reference way: each whole text as the tokenizer encodes it, every activation kept."""
    rows = [pair.tokenizer(text, return_tensors="pt")["input_ids"] for text in texts]
    assert all(ids.shape[1] > length for ids in rows)
    residuals = {}
    for which in ("base", "finetuned"):
        with pair.use(which) as (model, layout):
            residuals[which] = [
                read_residuals(model, layout, [layer], input_ids=ids)[layer][0, :length] for ids in rows
            ]
    deltas = [finetuned - base for base, finetuned in zip(residuals["base"], residuals["finetuned"], strict=True)]
    return torch.stack(deltas).double().mean(0)  # (positions, d)


def test_first_k_tokens_give_the_same_means_as_full_sequences(tiny_model, tiny_finetuned, corpus, tmp_path):
    pair = load_pair(tiny_model, tiny_finetuned, device="cpu")
    result = collect(pair, corpus, CollectConfig(layers=(1,), positions=4, batch_size=16), tmp_path)
    reference = _reference_deltas(pair, corpus.read_text().splitlines(), 1, 5)
    assert torch.allclose(result.mean_delta[0], reference, atol=1e-6)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_tokenizers_without_a_pad_token_label_the_bos_they_prepend(shape, corpus, tmp_path):
    tokenizer = build_tokenizer(SHAPES[shape], TEXTS)
    assert tokenizer.pad_token is None
    base = save_random_llama(tmp_path / "base", tokenizer, seed=0)
    other = save_random_llama(tmp_path / "other", tokenizer, seed=1)
    pair = load_pair(base, other, device="cpu")
    config = CollectConfig(layers=(1,), positions=3, batch_size=16)
    result = collect(pair, corpus, config, tmp_path / "out")
    adds_bos = SHAPES[shape].prepends is not None
    assert result.position_labels == ["BOS"] * adds_bos + ["0", "1", "2"]
    reference = _reference_deltas(pair, corpus.read_text().splitlines(), 1, 3 + adds_bos)
    assert torch.allclose(result.mean_delta[0], reference, atol=1e-6)


def test_the_attention_sink_stays_out_of_the_typical_norm(corpus, tmp_path):
    tokenizer = build_tokenizer(SHAPES["gpt2"], TEXTS)
    base = save_random_llama(tmp_path / "base", tokenizer)
    pair = load_pair(base, base, device="cpu")
    result = collect(pair, corpus, CollectConfig(layers=(1,), positions=3), tmp_path / "out")
    assert result.sink_positions == [0] and result.position_labels[0] == "0"
    typical = result.typical_norm(0)
    result.finetuned_norm.total[0, 0] *= 100  # an attention sink's outsized norm
    assert result.typical_norm(0) == typical
    result.finetuned_norm.total[0, 1] *= 100
    assert result.typical_norm(0) > 10 * typical


def test_one_position_without_a_bos_is_refused(corpus, tmp_path):
    base = save_random_llama(tmp_path / "base", build_tokenizer(SHAPES["gpt2"], TEXTS))
    with pytest.raises(FinetraceError, match="attention sink; read 2 or more positions"):
        collect(load_pair(base, base, device="cpu"), corpus, CollectConfig(positions=1), tmp_path)


def _interrupted(monkeypatch, run) -> None:
    """`run`, killed as Ctrl-C would at its third batch; the real accumulation is put back after."""
    real_accumulate, calls = collect_module.accumulate, []

    def failing_accumulate(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_accumulate(*args)

    with monkeypatch.context() as patch:
        patch.setattr(collect_module, "accumulate", failing_accumulate)
        with pytest.raises(KeyboardInterrupt):
            run()


def test_an_interrupted_run_resumes_to_the_same_numbers(tiny_model, tiny_finetuned, corpus, tmp_path, monkeypatch):
    pair = load_pair(tiny_model, tiny_finetuned, device="cpu")
    config = CollectConfig(layers=(1,), positions=4, batch_size=8, checkpoint_every=1)
    uninterrupted = collect(pair, corpus, config, tmp_path / "whole")
    real_accumulate = collect_module.accumulate
    _interrupted(monkeypatch, lambda: collect(pair, corpus, config, tmp_path / "resumed"))
    calls = []
    monkeypatch.setattr(collect_module, "accumulate", lambda *a: (calls.append(1), real_accumulate(*a)))
    resumed = collect(pair, corpus, config, tmp_path / "resumed")
    assert len(calls) == 3  # batches 3, 4 and 5 of 5
    assert torch.equal(resumed.delta.total, uninterrupted.delta.total)
    assert resumed.texts == 40


def test_a_checkpoint_or_shard_cut_short_is_computed_again(tiny_model, tiny_finetuned, corpus, tmp_path, monkeypatch):
    pair = load_pair(tiny_model, tiny_finetuned, device="cpu")
    config = CollectConfig(layers=(1,), positions=4, batch_size=8, checkpoint_every=1)
    uninterrupted = collect(pair, corpus, config, tmp_path / "whole")
    _interrupted(monkeypatch, lambda: collect(pair, corpus, config, tmp_path / "cut"))
    [checkpoint] = (tmp_path / "cut").glob("collect-checkpoint*.safetensors")
    shard = sorted((tmp_path / "cut" / collect_module.BASE_STORE).iterdir())[-1]
    for damaged in (checkpoint, shard):  # as a full disk or a killed copy leaves them
        damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    rerun = collect(pair, corpus, config, tmp_path / "cut")
    assert torch.equal(rerun.delta.total, uninterrupted.delta.total) and rerun.texts == 40


def test_sample_limit_and_empty_corpus(tiny_model, corpus, tmp_path):
    pair = load_pair(tiny_model, tiny_model, device="cpu")
    assert collect(pair, corpus, CollectConfig(samples=10, positions=2), tmp_path / "a").texts == 10
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(FinetraceError, match="holds no texts"):
        collect(pair, empty, CollectConfig(positions=2), tmp_path / "b")


def _replace_weights(model_dir, tiny_tokenizer, tmp_path):
    save_random_llama(tmp_path / "other", tiny_tokenizer, seed=7)
    weights = (tmp_path / "other" / "model.safetensors").read_bytes()
    (model_dir / "model.safetensors").write_bytes(weights)


def _rewrite_corpus(corpus):
    text = corpus.read_text()
    corpus.write_text(text.replace("cat", "dog"))  # the same size, other content
    assert len(corpus.read_text()) == len(text)


@pytest.mark.parametrize("change", ["weights", "corpus"])
def test_a_checkpoint_of_other_weights_or_text_is_not_resumed(
    change, tiny_model, tiny_tokenizer, corpus, tmp_path, capsys
):
    finetuned = save_random_llama(tmp_path / "finetuned", tiny_tokenizer, seed=1)
    config = CollectConfig(layers=(1,), positions=3, batch_size=8)
    collect(load_pair(tiny_model, finetuned, device="cpu"), corpus, config, tmp_path / "run")
    if change == "weights":
        _replace_weights(finetuned, tiny_tokenizer, tmp_path)
    else:
        _rewrite_corpus(corpus)
    pair = load_pair(tiny_model, finetuned, device="cpu")
    rerun = collect(pair, corpus, config, tmp_path / "run")
    fresh = collect(pair, corpus, config, tmp_path / "fresh")
    assert torch.equal(rerun.delta.total, fresh.delta.total)
    assert "starting afresh" in capsys.readouterr().err


def test_non_finite_activations_are_refused_with_where_they_appear(tiny_model, tiny_tokenizer, corpus, tmp_path):
    huge = save_random_llama(tmp_path / "huge", tiny_tokenizer)
    weights = load_file(huge / "model.safetensors")
    weights["model.layers.1.mlp.down_proj.weight"] *= 1e38  # finite weights, infinite activations
    save_file(weights, huge / "model.safetensors", metadata={"format": "pt"})
    pair = load_pair(tiny_model, huge, device="cpu")
    with pytest.raises(FinetraceError, match="fine-tuned model's residual after layer 1 at"):
        collect(pair, corpus, CollectConfig(layers=(0, 1), positions=3), tmp_path / "out")


def test_a_second_fine_tune_of_the_same_base_reuses_its_pass(tiny_model, tiny_finetuned, corpus, tmp_path, monkeypatch):
    config = CollectConfig(layers=(1,), positions=4, batch_size=8, checkpoint_every=1)
    store = tmp_path / "base-residuals"
    collect(
        load_pair(tiny_model, tiny_finetuned, device="cpu"),
        corpus,
        config,
        tmp_path / "a",
        base_store=store,
        keep_base=True,
    )
    real_shard, calls = collect_module._base_shard, []
    monkeypatch.setattr(collect_module, "_base_shard", lambda *a: (calls.append(1), real_shard(*a))[1])
    itself = collect(load_pair(tiny_model, tiny_model, device="cpu"), corpus, config, tmp_path / "b", base_store=store)
    assert calls == []  # every shard of the base's residuals was read back
    assert itself.mean_delta.abs().max() < 1e-6 and itself.texts == 40
    assert not store.exists()  # removed once no run keeps it


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["base pass", "fine-tune pass"])
def test_a_diff_killed_and_rerun_sums_what_an_uninterrupted_run_does(stage, tiny_model, tiny_finetuned, tmp_path):
    """kill -9 in either pass, then rerun: the sums equal an uninterrupted run's, bit for bit."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"{TEXTS[i % len(TEXTS)]} number {i}\n" for i in range(3000)))
    out = tmp_path / "killed"
    waited = out / BASE_STORE / "000001.safetensors" if stage == "base pass" else out / CHECKPOINT_NAME
    command = [
        str(Path(sys.executable).parent / "finetrace"),
        "diff",
        str(tiny_model),
        str(tiny_finetuned),
        "--corpus",
        str(corpus),
        "--out",
        str(out),
        "--batch-size",
        "4",
        "--device",
        "cpu",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not waited.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.kill()
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    config = CollectConfig(samples=10_000, batch_size=4)  # what the command line ran
    pair = load_pair(tiny_model, tiny_finetuned, device="cpu")
    resumed = collect(pair, corpus, config, out)
    whole = collect(pair, corpus, config, tmp_path / "whole")
    assert resumed.texts == whole.texts == 3000
    assert torch.equal(resumed.delta.total, whole.delta.total)
    assert torch.equal(resumed.base.total_sq, whole.base.total_sq)
