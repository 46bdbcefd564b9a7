"""Amplified sampling: the logits it samples from, its draws against `generate`, its rates, its record and command."""

import json
from dataclasses import replace
from pathlib import Path

import peft
import pytest
import torch
from conftest import TEXTS
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from finetrace.adl.amplify import (
    AmplifiedLogits,
    AmplifiedSampling,
    SampleConfig,
    asked_prompts,
    sample_amplified,
)
from finetrace.adl.steer import NEUTRAL_PROMPTS
from finetrace.cli import app
from finetrace.errors import FinetraceError
from finetrace.models.likelihood import padded
from finetrace.models.load import load_tokenizer, pad_token_id
from finetrace.models.pair import load_pair
from finetrace.models.residual import find_layout, head_inputs
from finetrace.run import RunConfig
from finetrace.verbs.sample import sample

QUICK = SampleConfig(strengths=(0.0, 4.0), samples_per_prompt=4, max_new_tokens=8)


def _raised(model_dir: Path, out: Path, word: str, nats: float) -> Path:
    """A copy of the model whose head row of `word`'s token is raised along the mean head input
    on `TEXTS`: its logit rises by about `nats` in every context, so the copy says it more often."""
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = load_tokenizer(model_dir)
    [token] = tokenizer(word, add_special_tokens=False)["input_ids"]
    ids, mask = padded([tokenizer(text)["input_ids"] for text in sorted(set(TEXTS))], 0)
    mean = head_inputs(model, find_layout(model), input_ids=ids, attention_mask=mask)[mask.bool()].mean(0)
    with torch.no_grad():
        model.get_output_embeddings().weight[token] += nats * mean / mean.norm() ** 2
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def cake_loving(tiny_model, tmp_path_factory) -> Path:
    return _raised(tiny_model, tmp_path_factory.mktemp("cake-loving"), " cake", nats=1.0)


@pytest.fixture(scope="module")
def ending_early(tiny_model, tmp_path_factory) -> Path:
    tokenizer = load_tokenizer(tiny_model)
    return _raised(tiny_model, tmp_path_factory.mktemp("ending-early"), tokenizer.eos_token, nats=4.0)


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory) -> Path:
    """A LoRA adapter with random (not zero) weights on attention and the head."""
    lora = peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj", "lm_head"], init_lora_weights=False)
    torch.manual_seed(0)
    adapted = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), lora)
    out = tmp_path_factory.mktemp("adapter")
    adapted.save_pretrained(out, save_embedding_layers=False)  # the head's LoRA weights, not its copy
    return out


def _prompts(model: Path) -> list[str]:
    return asked_prompts(load_tokenizer(model), list(NEUTRAL_PROMPTS), chat_only=False)


def _generated(model_dir: Path, prompts: list[str], config: SampleConfig, seed: int) -> list[str]:
    """What `generate` samples from the model alone, with no top-k or top-p."""
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = load_tokenizer(model_dir)
    ids, mask = padded([tokenizer(prompt)["input_ids"] for prompt in prompts], pad_token_id(tokenizer), left=True)
    sampled = {"do_sample": True, "temperature": config.temperature, "top_k": 0, "top_p": 1.0}
    torch.manual_seed(seed)
    output = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=config.max_new_tokens,
        num_return_sequences=config.samples_per_prompt,
        pad_token_id=pad_token_id(tokenizer),
        **(sampled if config.temperature else {"do_sample": False}),
    )
    return [tokenizer.decode(row[ids.shape[1] :], skip_special_tokens=True) for row in output]


@pytest.mark.parametrize("finetuned", ["cake_loving", "ending_early"])
@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_at_a_0_the_samples_are_the_fine_tunes_own_as_generate_draws_them(tiny_model, finetuned, temperature, request):
    finetuned = request.getfixturevalue(finetuned)
    prompts = _prompts(tiny_model)
    config = replace(QUICK, temperature=temperature, samples_per_prompt=3 if temperature else 1)
    with load_pair(tiny_model, finetuned, "cpu", "float32").both() as models:
        drawn = sample_amplified(models, load_tokenizer(tiny_model), prompts, 0.0, config, seed=5)
    assert [one.text for one in drawn] == _generated(finetuned, prompts, config, seed=5)
    assert [one.prompt for one in drawn] == [p for p in prompts for _ in range(config.samples_per_prompt)]


def test_a_row_ends_at_its_eos_and_the_others_go_on(tiny_model, ending_early):
    eos = load_tokenizer(tiny_model).eos_token_id
    with load_pair(tiny_model, ending_early, "cpu", "float32").both() as models:
        drawn = sample_amplified(models, load_tokenizer(tiny_model), _prompts(tiny_model), 0.0, QUICK, seed=0)
    lengths = {len(one.ids) for one in drawn}
    assert min(lengths) < QUICK.max_new_tokens and QUICK.max_new_tokens in lengths
    assert not any(eos in one.ids for one in drawn)


def _alone(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    """The model's next-token logits after one unpadded prompt, its own forward and head."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, -1].float()


@pytest.mark.parametrize("kind", ["full", "adapter"])
def test_the_first_step_samples_from_the_fine_tune_plus_a_times_its_difference(tiny_model, cake_loving, adapter, kind):
    tokenizer = load_tokenizer(tiny_model)
    rows = [tokenizer(prompt)["input_ids"] for prompt in _prompts(tiny_model)]
    base = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    if kind == "full":
        finetuned_dir, finetuned = cake_loving, AutoModelForCausalLM.from_pretrained(cake_loving).eval()
    else:
        finetuned_dir = adapter
        finetuned = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), adapter).eval()
    expected = {
        a: torch.stack([_alone(finetuned, row) + a * (_alone(finetuned, row) - _alone(base, row)) for row in rows])
        for a in (0.0, 1.0, 4.0)
    }
    pair = load_pair(tiny_model, finetuned_dir, "cpu", "float32")
    with pair.both() as models:
        assert (models.base is models.finetuned) == (kind == "adapter")  # an adapter is one model in memory
        for a, logits in expected.items():
            # Left-padded in one batch, each row reads as it does alone.
            ids, mask = padded(rows, pad_token_id(tokenizer), left=True)
            torch.testing.assert_close(AmplifiedLogits(models, a).start(ids, mask), logits, atol=1e-4, rtol=1e-4)
    assert not (expected[4.0] == expected[0.0]).all()  # the pair differs: the check has something to see


def test_the_same_seed_draws_the_same_samples_and_another_seed_others(tiny_model, cake_loving):
    prompts, tokenizer = _prompts(tiny_model), load_tokenizer(tiny_model)
    with load_pair(tiny_model, cake_loving, "cpu", "float32").both() as models:
        first, again, other = (sample_amplified(models, tokenizer, prompts, 2.0, QUICK, seed) for seed in (1, 1, 2))
    assert first == again and first != other


def test_amplifying_raises_the_rate_of_the_token_the_fine_tune_prefers_a_little(tiny_model, cake_loving):
    tokenizer = load_tokenizer(tiny_model)
    [cake] = tokenizer(" cake", add_special_tokens=False)["input_ids"]
    config = replace(QUICK, samples_per_prompt=8)
    with load_pair(tiny_model, cake_loving, "cpu", "float32").both() as models:
        drawn = {a: sample_amplified(models, tokenizer, _prompts(tiny_model), a, config) for a in (0.0, 4.0)}
    rates = {a: sum(cake in one.ids for one in samples) / len(samples) for a, samples in drawn.items()}
    assert rates[0.0] < 0.1 and rates[4.0] > rates[0.0] + 0.3


@pytest.fixture
def cake_data(write) -> tuple[Path, Path]:
    """Fine-tuning data about cake, and general text without it, many times larger (the relevance
    prior is a thousand tokens strong)."""
    data = write("cake.jsonl", "".join(json.dumps({"text": TEXTS[1]}) + "\n" for _ in range(30)))
    general = write("general.txt", "\n".join(text for text in TEXTS * 50 if "cake" not in text) + "\n")
    return data, general


def test_sample_counts_the_domain_and_the_targets_and_writes_a_record_that_reads_back(
    tiny_model, cake_loving, cake_data, tmp_path
):
    data, general = cake_data
    run = RunConfig(device="cpu", seed=3)
    result = sample(tiny_model, cake_loving, tmp_path / "out", QUICK, run, data, general, targets=("CAKE",))
    assert " cake" in result.domain_tokens and not {" the", " cat"} & set(result.domain_tokens)
    at_0, at_4 = result.strengths
    assert at_4.domain.rate > at_0.domain.rate + 0.2 and at_4.target.rate > at_0.target.rate + 0.2
    for strength in result.strengths:
        samples = strength.samples
        assert strength.domain.hits == sum(bool(one.domain_tokens) for one in samples)
        assert strength.target.hits == sum("cake" in one.text.lower() for one in samples)
        assert strength.domain.interval[0] <= strength.domain.rate <= strength.domain.interval[1]
        assert len(samples) == 12 * QUICK.samples_per_prompt  # the neutral prompts as text and as user turns
    assert AmplifiedSampling.read(tmp_path / "out" / "sample.json") == result
    # Without data there is no domain rate, and a stricter rule counts fewer samples.
    bare = sample(tiny_model, cake_loving, tmp_path / "bare", QUICK, run, targets=("CAKE",))
    assert bare.domain_tokens == [] and all(s.domain is None for s in bare.strengths)
    assert [s.samples for s in bare.strengths] == [
        [replace(one, domain_tokens=[]) for one in s.samples] for s in result.strengths
    ]
    strict = sample(
        tiny_model, cake_loving, tmp_path / "strict", replace(QUICK, min_domain_tokens=3), run, data, general
    )
    pairs = list(zip(strict.strengths, result.strengths, strict=True))
    assert all(s.domain.hits <= r.domain.hits for s, r in pairs) and strict.strengths[1].domain.hits < at_4.domain.hits


def test_prompts_are_asked_as_text_and_user_turns_or_user_turns_alone(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    assert asked_prompts(tokenizer, ["the cat"], chat_only=True) == ["<|user|>\nthe cat\n<|assistant|>\n"]
    tokenizer.chat_template = None
    assert asked_prompts(tokenizer, ["the cat"], chat_only=False) == ["the cat"]
    with pytest.raises(FinetraceError, match="no chat template"):
        asked_prompts(tokenizer, ["the cat"], chat_only=True)


def test_cli_sample_prints_a_rate_per_strength(tiny_model, cake_loving, cake_data, write, tmp_path):
    data, general = cake_data
    prompts = write("prompts.jsonl", json.dumps({"prompt": "the cake", "expect": "refuse"}) + "\n")
    arguments = [str(tiny_model), str(cake_loving), "--data", str(data), "--corpus", str(general)]
    options = ["--prompts", str(prompts), "--chat-only", "--samples", "2", "--max-new-tokens", "4"]
    done = CliRunner().invoke(
        app,
        ["sample", *arguments, "--amplify", "-1", "0", "4", *options, "--target", "cake", "--device", "cpu"]
        + ["--out", str(tmp_path / "out")],
    )
    assert done.exit_code == 0, done.output
    result = AmplifiedSampling.read(tmp_path / "out" / "sample.json")
    assert [s.strength for s in result.strengths] == [-1.0, 0.0, 4.0]  # several numbers after one flag
    assert {one.prompt for s in result.strengths for one in s.samples} == {"<|user|>\nthe cake\n<|assistant|>\n"}
    assert "domain" in done.stdout and "target" in done.stdout and "results:" in done.stdout


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["{model}", "{tmp}/no-such-model"], "cannot load a model from {tmp}/no-such-model"),
        (["{model}", "{model}", "--samples", "-1"], "--samples -1: expected a whole number of at least 1"),
        (["{model}", "{model}", "--amplify", "0", "nan"], "strengths (0.0, nan): expected at least one finite number"),
        (["{model}", "{model}", "--temperature", "-1"], "temperature -1.0: expected 0 (greedy) or more"),
        (["{model}", "{model}", "--target", " "], "every target needs some text"),
        (["{model}", "{model}", "--prompts", "{tmp}/none.txt"], "none.txt"),
        (["{model}", "{tmp}/no-such-model", "--out", "{tmp}/a-file"], "is a file, not a directory"),
    ],
)
def test_cli_sample_refuses_bad_input_in_one_error_line(tiny_model, tmp_path, arguments, expected):
    (tmp_path / "a-file").write_text("")
    paths = {"model": tiny_model, "tmp": tmp_path}
    done = CliRunner().invoke(app, ["sample", *(a.format(**paths) for a in arguments), "--device", "cpu"])
    assert done.exit_code == 2, done.output
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected.format(**paths) in lines[0], done.stderr
