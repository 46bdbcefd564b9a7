"""The weights' own trace: each matrix's change, its effective rank, and intruder dimensions."""

import json

import peft
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from finetrace.cli import app
from finetrace.models.matrices import layer_matrices
from finetrace.spectra.intruders import SpectraConfig, effective_rank, matrix_change
from finetrace.spectra.records import RESULT_NAME, WeightsResult
from finetrace.verbs.weights import weights

LLAMA_MODULES = [
    "mlp.down_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "self_attn.k_proj",
    "self_attn.o_proj",
    "self_attn.q_proj",
    "self_attn.v_proj",
]


def _unit(n: int, seed: int) -> torch.Tensor:
    vector = torch.randn(n, generator=torch.Generator().manual_seed(seed))
    return vector / vector.norm()


def _spread_matrix(n: int) -> torch.Tensor:
    """A full-rank matrix with singular values 1 .. 0.01 in random bases."""
    left, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(1)))
    right, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(2)))
    return left @ torch.diag(torch.logspace(0, -2, n)) @ right.T


def test_a_strong_new_direction_is_an_intruder_and_a_small_dense_change_brings_none():
    base = _spread_matrix(64)
    new_direction = _unit(64, 3)
    lora_like = base + 10 * torch.outer(new_direction, _unit(64, 4))
    change = matrix_change(0, "mlp.up_proj", base, lora_like, SpectraConfig())
    [intruder] = change.intruders
    # The new direction leads the spectrum and resembles none of the base's singular vectors.
    assert intruder.index == 0 and intruder.singular_value == pytest.approx(10, rel=0.01)
    assert intruder.similarity < 0.5
    assert change.relative_change == pytest.approx(10 / base.norm().item(), rel=1e-4)
    assert change.effective_rank == pytest.approx(1, abs=1e-3)

    noise = 1e-4 * torch.randn(64, 64, generator=torch.Generator().manual_seed(5))
    full_like = matrix_change(0, "mlp.up_proj", base, base + noise, SpectraConfig())
    assert full_like.intruders == [] and full_like.effective_rank > 30


def test_effective_rank_counts_equal_directions_and_is_zero_for_no_change():
    assert effective_rank(torch.tensor([2.0, 2.0, 2.0, 0.0])) == pytest.approx(3)
    assert effective_rank(torch.zeros(5)) == 0.0
    assert 1 < effective_rank(torch.tensor([10.0, 1.0])) < 2


def _with_one_matrix_changed(tiny_model, tmp_path):
    """A copy of the tiny model whose layer-1 down projection gained one strong direction."""
    out = tmp_path / "changed"
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    weight = model.model.layers[1].mlp.down_proj.weight
    with torch.no_grad():
        weight += 5 * weight.norm() * torch.outer(_unit(weight.shape[0], 6), _unit(weight.shape[1], 7))
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (out / name).write_bytes((tiny_model / name).read_bytes())
    return out


def test_whole_models_are_compared_matrix_by_matrix_and_only_the_changed_one_moved(tiny_model, tmp_path):
    changed = _with_one_matrix_changed(tiny_model, tmp_path)
    result = weights(tiny_model, changed, tmp_path / "out")
    assert [(m.layer, m.module) for m in result.matrices] == [(layer, m) for layer in (0, 1) for m in LLAMA_MODULES]
    moved = [m for m in result.matrices if m.relative_change > 0]
    assert [(m.layer, m.module) for m in moved] == [(1, "mlp.down_proj")]
    assert [i.index for i in moved[0].intruders] == [0] and result.intruders == 1
    assert result.intruders_by_module["mlp.down_proj"] == 1 and result.intruders_by_module["self_attn.q_proj"] == 0
    written = json.loads((tmp_path / "out" / RESULT_NAME).read_text())
    assert written["intruders"] == 1 and WeightsResult.read(tmp_path / "out" / RESULT_NAME) == result


def test_an_adapters_matrices_are_the_base_plus_its_scaled_factors(tiny_model, tmp_path):
    lora = peft.LoraConfig(r=2, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    adapted = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), lora)
    adapted.save_pretrained(tmp_path / "adapter")
    factors = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    base = load_file(tiny_model / "model.safetensors")
    pairs = list(layer_matrices(tiny_model, tmp_path / "adapter"))
    assert [(p.layer, p.module) for p in pairs] == [(0, "self_attn.q_proj"), (0, "self_attn.v_proj"),
                                                     (1, "self_attn.q_proj"), (1, "self_attn.v_proj")]  # fmt: skip
    for pair in pairs:
        stem = f"base_model.model.model.layers.{pair.layer}.{pair.module}"
        expected = factors[f"{stem}.lora_B.weight"] @ factors[f"{stem}.lora_A.weight"] * (8 / 2)
        torch.testing.assert_close(pair.base, base[f"model.layers.{pair.layer}.{pair.module}.weight"])
        torch.testing.assert_close(pair.finetuned - pair.base, expected, atol=1e-6, rtol=1e-5)
    result = weights(tiny_model, tmp_path / "adapter")
    assert result.adapter and all(m.effective_rank <= 2 + 1e-3 for m in result.matrices)


def test_the_command_prints_each_kind_of_matrix_and_refuses_bad_input_in_one_line(tiny_model, tmp_path):
    changed = _with_one_matrix_changed(tiny_model, tmp_path)
    shown = CliRunner().invoke(app, ["weights", str(tiny_model), str(changed), "--out", str(tmp_path / "w")])
    assert shown.exit_code == 0, shown.output
    words = " ".join(shown.output.split())  # rich wraps long lines
    assert "1 intruder dimensions in 14 matrices" in words and "mlp.down_proj" in words

    missing = CliRunner().invoke(app, ["weights", str(tiny_model), str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and missing.output.startswith("error:") and len(missing.output.splitlines()) == 1

    broken = tmp_path / "broken"
    broken.mkdir()
    for path in changed.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    tensors = load_file(broken / "model.safetensors")
    tensors.pop("model.layers.1.mlp.down_proj.weight")
    save_file(tensors, broken / "model.safetensors", metadata={"format": "pt"})
    partial = CliRunner().invoke(app, ["weights", str(tiny_model), str(broken)])
    assert partial.exit_code == 2 and "has no weight model.layers.1.mlp.down_proj.weight" in partial.output
