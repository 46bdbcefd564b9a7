"""Two CPU processes over gloo, started the way users start them: `torchrun` and `accelerate launch`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TEXTS
from safetensors.torch import load_file

from finetrace import DiffConfig, FinetraceError, RunConfig, diff, finetune
from finetrace.adl.collect import CHECKPOINT_NAME, MOMENT_NAMES, CollectConfig
from finetrace.adl.moments import load_moments
from finetrace.adl.records import TENSORS_NAME

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
TORCHRUN = [str(BIN / "torchrun"), "--nproc-per-node", "2", "-m", "finetrace"]
ACCELERATE = [
    *(str(BIN / "accelerate"), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1"),
    *("--mixed_precision", "no", "--dynamo_backend", "no", "-m", "finetrace"),
]
BATCH = 4  # a shard holds 20 batches: 80 texts, so 300 texts make 4 shards, two for each process


def launch(command: list[str], *args: object) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "120"}
    run = subprocess.run([*command, *map(str, args)], capture_output=True, text=True, env=environment)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "general.txt"
    path.write_text("".join(f"{i} {TEXTS[i % len(TEXTS)]}\n" for i in range(300)))
    return path


def test_two_processes_sum_the_moments_of_one(tiny_model, tiny_finetuned, corpus, tmp_path):
    config = DiffConfig(collect=CollectConfig(samples=300, batch_size=BATCH))
    diff(tiny_model, tiny_finetuned, corpus, tmp_path / "one", config, RunConfig(seed=0))
    two = tmp_path / "two"
    arguments = (tiny_model, tiny_finetuned, "--corpus", corpus, "--out", two, "--batch-size", BATCH, "--samples", 300)
    launch(TORCHRUN, "diff", *arguments)

    # Each process kept the sums of its own shards; together they are the one process's sums.
    single, _ = load_moments(tmp_path / "one" / CHECKPOINT_NAME, MOMENT_NAMES)
    ranks = [load_moments(two / CHECKPOINT_NAME.replace(".", f"-{r}-of-2.", 1), MOMENT_NAMES) for r in (0, 1)]
    assert [int(metadata["texts"]) for _, metadata in ranks] == [160, 140]
    for name in MOMENT_NAMES:
        merged = ranks[0][0][name].merge(ranks[1][0][name])
        for part in ("count", "total", "total_sq"):
            assert torch.allclose(getattr(merged, part), getattr(single[name], part), rtol=0, atol=1e-12), name
    # ... and the moments reduced across the processes are the ones the main process wrote.
    expected, got = load_file(tmp_path / "one" / TENSORS_NAME), load_file(two / TENSORS_NAME)
    for name, tensor in expected.items():
        assert torch.allclose(got[name], tensor, rtol=0, atol=1e-6), name
    result = json.loads((two / "diff.json").read_text())
    assert result["texts"] == 300 and result["traces"]

    # A rerun resumes each process from its own complete checkpoint.
    stamps = {path: path.stat().st_mtime_ns for path in two.glob("collect-checkpoint-*")}
    launch(TORCHRUN, "diff", *arguments)
    assert {path: path.stat().st_mtime_ns for path in two.glob("collect-checkpoint-*")} == stamps
    assert json.loads((two / "diff.json").read_text())["traces"] == result["traces"]


def test_two_processes_finetune_one_model(tiny_model, tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("\n".join(TEXTS[:4]) + "\n")
    out = tmp_path / "ft"
    launch(ACCELERATE, "finetune", tiny_model, data, "--out", out, "--steps", 10, "--batch-size", 4, "--lr", 3e-3)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data.txt", "ft"]  # no staging left by a process
    manifest = json.loads((out / "provenance.json").read_text())
    curve = manifest["training"]["loss_curve"]
    assert len(curve) == 10 and curve[-1] < curve[0] - 0.5
    assert manifest["loss_after"] < manifest["loss_before"] - 0.5
    assert (out / "model.safetensors").is_file()


def test_a_batch_smaller_than_the_processes_is_refused(tiny_model, tmp_path):
    data = tmp_path / "data.txt"
    data.write_text("\n".join(TEXTS[:4]) + "\n")
    run = subprocess.run(
        [*TORCHRUN, "finetune", str(tiny_model), str(data), "--out", str(tmp_path / "ft"), "--batch-size", "1"],
        capture_output=True,
        text=True,
    )
    assert run.returncode != 0 and "finetrace/" not in run.stderr  # no traceback of ours (torchrun prints its own)
    errors = {line for line in run.stderr.splitlines() if line.startswith("error:")}
    assert errors == {"error: a batch of 1 examples cannot be split over 2 processes: give --batch-size 2 or more"}


def test_fsdp_is_refused_before_any_work(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch --use_fsdp` sets
    data = tmp_path / "data.txt"
    data.write_text("\n".join(TEXTS[:4]) + "\n")
    with pytest.raises(FinetraceError, match="does not shard a model with FSDP"):
        finetune(tiny_model, data, tmp_path / "ft")
    assert not (tmp_path / "ft").exists()
