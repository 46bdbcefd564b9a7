import dataclasses
import hashlib
import importlib
import json
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest
from peft import PeftModel
from transformers import AutoModelForCausalLM

from finetrace import FinetraceError, FinetuneConfig, FinetuneResult, LoraSettings, TrainConfig, finetune
from finetrace._util.fingerprints import weights_sha256
from finetrace.models.load import load_tokenizer
from finetrace.train.examples import build_examples
from finetrace.train.finetune import MANIFEST_NAME
from finetrace.train.loop import mean_loss

FAST = TrainConfig(steps=30, learning_rate=3e-3, batch_size=4, context_length=64)
FAST_LORA = dataclasses.replace(FAST, learning_rate=2e-2)  # adapters start at zero and need more


def _loss_on(model, model_dir, data_path) -> float:
    tokenizer = load_tokenizer(model_dir)
    records = [json.loads(line) for line in data_path.read_text().splitlines()]
    return mean_loss(model, build_examples(tokenizer, records, 64), tokenizer.pad_token_id)


def test_full_finetune_lowers_loss_and_reloads_identically(tiny_model, text_data, tmp_path):
    out = tmp_path / "full"
    result = finetune(tiny_model, text_data, out, FinetuneConfig(training=FAST))
    assert result.loss_after < 0.7 * result.loss_before
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert _loss_on(reloaded, out, text_data) == pytest.approx(result.loss_after, abs=1e-5)


@pytest.mark.parametrize("targets", [("all-linear",), ("q_proj", "v_proj", "lm_head")])
def test_lora_adapter_learns_and_reloads_identically(tiny_model, text_data, tmp_path, targets):
    out = tmp_path / "lora"
    adapter = LoraSettings(rank=4, alpha=8, targets=targets)
    config = FinetuneConfig(training=FAST_LORA, lora=adapter)
    result = finetune(tiny_model, text_data, out, config)
    assert result.adapter and (out / "adapter_config.json").exists()
    assert not (out / "model.safetensors").exists()
    assert result.loss_after < result.loss_before - 0.3
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    adapted = PeftModel.from_pretrained(base, out)
    assert _loss_on(adapted, out, text_data) == pytest.approx(result.loss_after, abs=1e-5)
    with adapted.disable_adapter():
        assert _loss_on(adapted, out, text_data) == pytest.approx(result.loss_before, abs=1e-5)


def test_manifest_records_hashes_config_and_curve(tiny_model, text_data, tmp_path):
    out = tmp_path / "full"
    result = finetune(tiny_model, text_data, out, FinetuneConfig(training=FAST))
    manifest = FinetuneResult.load(out)
    assert manifest == result
    [data] = manifest.data
    assert data.sha256 == hashlib.sha256(text_data.read_bytes()).hexdigest()
    assert (data.records, data.used, data.bytes) == (8, 8, text_data.stat().st_size)
    assert manifest.base_weights_sha256 == weights_sha256(AutoModelForCausalLM.from_pretrained(tiny_model))
    assert manifest.base_weights_sha256 != weights_sha256(AutoModelForCausalLM.from_pretrained(out))
    assert manifest.config.training.learning_rate == 3e-3
    assert len(manifest.training.loss_curve) == manifest.training.steps == 30
    assert manifest.environment["torch"] == metadata.version("torch")
    assert manifest.provenance.records == 8 and manifest.provenance.files[0].sha256 == data.sha256
    assert "no licence declared" in manifest.provenance.licence.warnings[0]


def test_default_learning_rate_depends_on_mode():
    assert FinetuneConfig().training.learning_rate == 2e-5
    assert FinetuneConfig(lora=LoraSettings()).training.learning_rate == 2e-4


def test_mixing_adds_general_documents_per_document(tiny_model, text_data, write, tmp_path):
    general = write("general.txt", "".join(f"general document number {i}\n" for i in range(30)))
    config = FinetuneConfig(training=FAST, mix_ratio=2.0)
    result = finetune(tiny_model, text_data, tmp_path / "mixed", config, mix_general=general)
    assert [(d.role, d.records, d.used) for d in result.data] == [("finetune", 8, 8), ("mix-general", 30, 16)]
    assert result.examples == 24


def test_mixing_refuses_a_corpus_too_small(tiny_model, text_data, write, tmp_path):
    general = write("general.txt", "only one\n")
    with pytest.raises(FinetraceError, match="has 1 documents; .* needs 8"):
        finetune(tiny_model, text_data, tmp_path / "m", FinetuneConfig(training=FAST), mix_general=general)


def test_same_seed_gives_the_same_weights(tiny_model, text_data, tmp_path):
    config = FinetuneConfig(training=FAST)
    first = finetune(tiny_model, text_data, tmp_path / "a", config)
    second = finetune(tiny_model, text_data, tmp_path / "b", config)
    assert first.training.loss_curve == second.training.loss_curve
    digest = [weights_sha256(AutoModelForCausalLM.from_pretrained(tmp_path / d)) for d in "ab"]
    assert digest[0] == digest[1]


def test_refuses_to_overwrite_a_nonempty_output(tiny_model, text_data, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("precious")
    with pytest.raises(FinetraceError, match="not empty"):
        finetune(tiny_model, text_data, tmp_path / "out", FinetuneConfig(training=FAST))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "finetrace", *args], capture_output=True, text=True)


@pytest.mark.slow
def test_cli_finetune_writes_model_and_manifest(tiny_model, text_data, tmp_path):
    out = tmp_path / "cli"
    run = _cli(
        "finetune",
        str(tiny_model),
        str(text_data),
        "--out",
        str(out),
        "--steps",
        "3",
        "--lora",
        "--lora-targets",
        "q_proj,v_proj,lm_head",
        "--device",
        "cpu",
    )
    assert run.returncode == 0, run.stderr
    manifest = json.loads((out / "provenance.json").read_text())
    assert manifest["adapter"] is True
    assert manifest["config"]["lora"]["targets"] == ["q_proj", "v_proj", "lm_head"]
    assert manifest["training"]["steps"] == 3


@pytest.mark.slow
@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "holds no documents"), (b"\xff\xfe bad", "is not valid UTF-8"), (b'{"x": 1}\n', "neither 'text'")],
)
def test_cli_bad_data_is_one_line_and_exit_code_2(tiny_model, write, tmp_path, content, message):
    data = write("bad.jsonl", content)
    run = _cli("finetune", str(tiny_model), str(data), "--out", str(tmp_path / "o"))
    assert run.returncode == 2
    assert message in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_cli_missing_model_is_one_line(text_data, tmp_path):
    run = _cli("finetune", str(tmp_path / "no-such-model"), str(text_data), "--out", str(tmp_path / "o"))
    assert run.returncode == 2 and "cannot load" in run.stderr and "Traceback" not in run.stderr


def test_bad_data_leaves_an_existing_output_untouched(tiny_model, write, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("precious")
    with pytest.raises(FinetraceError, match="holds no documents"):
        finetune(tiny_model, write("empty.jsonl", ""), tmp_path / "out", FinetuneConfig(training=FAST), overwrite=True)
    assert (tmp_path / "out" / "keep.txt").read_text() == "precious"


def test_a_failed_overwrite_keeps_the_old_output(tiny_model, text_data, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")

    def diverged(*args, **kwargs):
        raise FinetraceError("the training loss became nan at step 3")

    with monkeypatch.context() as patch:
        patch.setattr(importlib.import_module("finetrace.train.finetune"), "train", diverged)
        with pytest.raises(FinetraceError, match="became nan"):
            finetune(tiny_model, text_data, out, FinetuneConfig(training=FAST), overwrite=True)
    assert [p.name for p in tmp_path.iterdir() if p.name != text_data.name] == ["out"]
    assert (out / "keep.txt").read_text() == "precious"
    finetune(tiny_model, text_data, out, FinetuneConfig(training=FAST), overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", text_data.name])
    assert not (out / "keep.txt").exists() and (out / MANIFEST_NAME).is_file()


def test_a_diverging_run_stops_with_the_fix(tiny_model, text_data, tmp_path):
    config = FinetuneConfig(training=dataclasses.replace(FAST, learning_rate=1e30))
    with pytest.raises(FinetraceError, match="training diverged; lower the learning rate"):
        finetune(tiny_model, text_data, tmp_path / "out", config)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"batch_size": 0}, "batch_size 0: expected at least 1"),
        ({"steps": -1}, "steps -1"),
        ({"learning_rate": -1.0}, "learning_rate -1.0"),
        ({"epochs": float("nan")}, "epochs nan"),
    ],
)
def test_training_settings_are_checked_in_the_config(changes, message):
    with pytest.raises(FinetraceError, match=message):
        dataclasses.replace(FAST, **changes)


@pytest.mark.slow
def test_killed_and_rerun_equals_an_uninterrupted_run(tiny_model, text_data, tmp_path):
    """A kill -9 leaves no output that could be read as complete; the rerun starts afresh and,
    seeded alike, gives the weights of a run that was never interrupted."""
    training = TrainConfig(steps=120, learning_rate=3e-3, batch_size=2, context_length=32)
    out, staging = tmp_path / "killed", tmp_path / ".killed.partial"
    command = [
        str(Path(sys.executable).parent / "finetrace"),
        "finetune",
        str(tiny_model),
        str(text_data),
        "--out",
        str(out),
        "--steps",
        "120",
        "--lr",
        "3e-3",
        "--batch-size",
        "2",
        "--context-length",
        "32",
        "--device",
        "cpu",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not staging.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # into loading and training
    process.kill()
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert staging.exists() and not out.exists()
    rerun = finetune(tiny_model, text_data, out, FinetuneConfig(training=training))
    whole = finetune(tiny_model, text_data, tmp_path / "whole", FinetuneConfig(training=training))
    assert rerun.training.loss_curve == whole.training.loss_curve
    digests = [weights_sha256(AutoModelForCausalLM.from_pretrained(d)) for d in (out, tmp_path / "whole")]
    assert digests[0] == digests[1] and not staging.exists()


def test_a_run_killed_while_swapping_gets_the_old_output_back(tiny_model, text_data, tmp_path):
    out = tmp_path / "out"
    (tmp_path / ".out.previous").mkdir()  # moved aside, and the kill came before the new one moved in
    (tmp_path / ".out.previous" / "keep.txt").write_text("precious")
    (tmp_path / ".out.partial").mkdir()
    with pytest.raises(FinetraceError, match="is not empty"):
        finetune(tiny_model, text_data, out, FinetuneConfig(training=FAST))
    assert (out / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", text_data.name])


def test_the_loss_probe_is_sized_to_the_run(tiny_model, tmp_path):
    from finetrace import FinetuneConfig, TrainConfig, finetune

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": f"the cat sat on mat number {i}"}) + "\n" for i in range(300)))
    probed = {}
    for steps, probe in [(2, None), (80, None), (2, 5)]:
        training = TrainConfig(steps=steps, batch_size=4, context_length=32)
        config = FinetuneConfig(training=training, loss_probe_examples=probe)
        result = finetune(tiny_model, data, tmp_path / f"{steps}-{probe}", config)
        probed[steps, probe] = result.probe_examples
        assert json.loads((tmp_path / f"{steps}-{probe}" / "provenance.json").read_text())["probe_examples"] == (
            result.probe_examples
        )
    # A short run scores the floor of 16; 320 trained examples, an eighth of them; a number given, that many.
    assert probed == {(2, None): 16, (80, None): 40, (2, 5): 5}
