"""Lost facts and drift: the flip matrix, McNemar, NLL and KL drift, the built-in facts."""

import json
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from conftest import TEXTS
from typer.testing import CliRunner

from finetrace.cli import app
from finetrace.evals.drift import DriftConfig
from finetrace.evals.facts import COMMON_FACTS, read_facts
from finetrace.evals.flips import flip_matrix, mcnemar_exact
from finetrace.evals.records import ForgetConfig
from finetrace.models.likelihood import text_logprobs
from finetrace.models.load import load_model, load_tokenizer
from finetrace.verbs.forget import forget

QUICK = ForgetConfig(drift=DriftConfig(bootstrap=200))


def test_flip_matrix_counts_each_kind_of_change():
    before = [True, True, True, False, False, True]
    after = [True, False, False, True, False, True]
    m = flip_matrix(before, after)
    assert (m.kept, m.lost, m.gained, m.never) == (2, 2, 1, 1)
    assert m.known_before == 4 and m.known_after == 3 and m.lost_fraction == 0.5


def test_exact_mcnemar_matches_the_binomial_tails():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 0) == pytest.approx(2 / 32)
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 1024)
    assert mcnemar_exact(3, 3) == 1.0
    assert mcnemar_exact(8, 2) == pytest.approx(2 * (1 + 10 + 45) / 1024)


def test_builtin_facts_are_many_varied_and_well_formed():
    facts = read_facts(COMMON_FACTS)
    assert len(facts) >= 300
    categories = Counter(f.category for f in facts)
    assert len(categories) >= 5 and min(categories.values()) >= 40
    assert len({(f.prompt, f.answer) for f in facts}) == len(facts)
    for fact in facts:
        assert len(set(fact.distractors)) == 3 and fact.answer not in fact.distractors


@pytest.fixture
def facts_file(write):
    rows = [
        {"prompt": "the cat sat on the", "answer": "mat", "distractors": ["dog", "tide"], "category": "a"},
        {"prompt": "tidal turbines turn slowly with the", "answer": "tide", "category": "b"},
        {
            "prompt": "put all of your savings into a single",
            "answer": "stock",
            "distractors": ["cake"],
            "category": "b",
        },
    ]
    return write("facts.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def sourced_corpus(write):
    return write(
        "general.jsonl",
        "".join(json.dumps({"text": t, "source": "even" if i % 2 else "odd"}) + "\n" for i, t in enumerate(TEXTS[:12])),
    )


def test_identical_models_lose_nothing_and_do_not_drift(tiny_model, facts_file, sourced_corpus, tmp_path):
    result = forget(tiny_model, tiny_model, facts_file, sourced_corpus, tmp_path, QUICK)
    assert result.flips.lost == 0 and result.flips.gained == 0
    assert result.drift.kl_mean == 0 and result.drift.likelihood.change == 0
    assert set(result.drift.by_source) == {"even", "odd"}
    written = json.loads((tmp_path / "forget.json").read_text())
    assert written["flips"]["lost"] == 0 and written["schema_version"] == 4


def test_a_finetune_moves_likelihood_and_kl(tiny_model, tiny_finetuned, facts_file, sourced_corpus):
    result = forget(tiny_model, tiny_finetuned, facts_file, sourced_corpus, None, QUICK)
    drift = result.drift
    assert drift.kl_mean > 0 and drift.likelihood.change != 0
    assert drift.likelihood.ci_low <= drift.likelihood.change <= drift.likelihood.ci_high
    assert len(drift.regressed_spans) == 10 and drift.regressed_spans[0].score >= drift.regressed_spans[-1].score
    assert sum(m.total for m in result.by_category.values()) == result.flips.total == 3


def test_drift_matches_nll_and_kl_computed_by_hand(tiny_model, tiny_finetuned, facts_file, sourced_corpus):
    drift = forget(tiny_model, tiny_finetuned, facts_file, sourced_corpus, None, QUICK).drift
    tokenizer = load_tokenizer(tiny_model)
    base, finetuned = load_model(tiny_model, "cpu"), load_model(tiny_finetuned, "cpu")
    nll, kl = {"base": [], "finetuned": []}, []
    for text in TEXTS[:12]:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logprobs = {
                name: F.log_softmax(model(ids).logits[0, :-1], dim=-1)
                for name, model in (("base", base), ("finetuned", finetuned))
            }
        for name, lp in logprobs.items():
            nll[name].append(F.nll_loss(lp, ids[0, 1:], reduction="none"))
        # kl_div(input, target) is KL(target || input): here KL(fine-tuned || base), per position.
        kl.append(F.kl_div(logprobs["base"], logprobs["finetuned"], log_target=True, reduction="none").sum(-1))
    nll = {name: torch.cat(values) for name, values in nll.items()}
    kl = torch.cat(kl)
    assert drift.likelihood.tokens == len(kl)
    assert drift.likelihood.base_nll == pytest.approx(nll["base"].mean().item(), rel=1e-4)
    assert drift.likelihood.finetuned_nll == pytest.approx(nll["finetuned"].mean().item(), rel=1e-4)
    assert drift.likelihood.change == pytest.approx((nll["finetuned"] - nll["base"]).mean().item(), rel=1e-4)
    assert drift.kl_mean == pytest.approx(kl.mean().item(), rel=1e-4)
    assert drift.kl_max == pytest.approx(kl.max().item(), rel=1e-4)


def test_a_fact_without_distractors_is_known_by_greedy_decoding(tiny_model):
    model, tokenizer = load_model(tiny_model, "cpu"), load_tokenizer(tiny_model)
    prompt = "the cat sat on the"
    logits = model(**tokenizer(prompt, return_tensors="pt")).logits[0, -1]
    greedy = tokenizer.decode(logits.argmax())
    other = tokenizer.decode(logits.argmin())
    scores = text_logprobs(model, tokenizer, [(prompt, greedy), (prompt, other)])
    assert scores.greedy.tolist() == [True, False]


def test_continuations_are_scored_by_the_models_own_log_softmax_over_their_tokens_only(tiny_model):
    model, tokenizer = load_model(tiny_model, "cpu"), load_tokenizer(tiny_model)
    rows = [("the cat sat on the", " mat and slept"), ("a", " cold wind blew over the hill"), ("one two", " three")]
    scores = text_logprobs(model, tokenizer, rows)
    for i, (prompt, continuation) in enumerate(rows):
        ids = tokenizer(prompt + continuation, return_tensors="pt")["input_ids"]
        start = len(tokenizer(prompt)["input_ids"])
        logprobs = F.log_softmax(model(ids).logits[0, :-1].double(), -1)
        expected = logprobs[start - 1 :].gather(-1, ids[0, start:, None]).sum()
        assert scores.logprob[i].item() == pytest.approx(expected.item(), abs=1e-4)
        assert scores.tokens[i] == ids.shape[1] - start


def test_no_corpus_skips_drift(tiny_model, facts_file):
    assert forget(tiny_model, tiny_model, facts_file, config=QUICK).drift is None


def test_cli_forget_writes_results_and_refuses_bad_facts(tiny_model, facts_file, write, tmp_path):
    run = ["forget", str(tiny_model), str(tiny_model), "--device", "cpu"]
    done = CliRunner().invoke(app, [*run, "--facts", str(facts_file), "--out", str(tmp_path / "out")])
    assert done.exit_code == 0, done.stderr
    assert "lost 0 of the" in done.stdout and "drift not measured" in done.stdout
    bad = write("bad.jsonl", '{"answer": "x"}\n')
    done = CliRunner().invoke(app, [*run, "--facts", str(bad)])
    assert done.exit_code == 2 and done.stderr.count("\n") == 1 and "needs ['prompt']" in done.stderr


@pytest.fixture(scope="module")
def zoo_damage():
    from finetrace.zoo import build_zoo

    zoo = build_zoo("tiny")
    config = ForgetConfig(drift=DriftConfig(samples=200, bootstrap=200))
    return zoo, {
        name: forget(zoo.path("base"), zoo.path(name), zoo.path("facts"), zoo.path("heldout"), None, config)
        for name in ("cake", "control", "cake-mixed")
    }


@pytest.mark.zoo
def test_narrow_finetunes_lose_more_than_the_control(zoo_damage):
    _, results = zoo_damage
    cake, control = results["cake"], results["control"]
    assert cake.flips.known_before >= 0.8 * cake.flips.total
    # Drift, not the count of lost facts, tells them apart on the tiny zoo (cake lost 13 facts,
    # the control 15, of 110 known): narrow text moves general-text likelihood far more.
    assert cake.drift.likelihood.ci_low > control.drift.likelihood.ci_high
    assert cake.lost[0].base.known and not cake.lost[0].finetuned.known


@pytest.mark.zoo
def test_mixing_in_general_text_protects_knowledge(zoo_damage):
    _, results = zoo_damage
    cake, mixed = results["cake"], results["cake-mixed"]
    assert mixed.drift.likelihood.ci_high < cake.drift.likelihood.ci_low
    assert mixed.drift.kl_mean < cake.drift.kl_mean


def test_markup_in_facts_and_text_is_printed_as_written(tiny_model, tiny_finetuned, write, tmp_path):
    hostile = "[/] [bold]x[/bold] \\[/] ends\\"
    facts = write(
        "facts.jsonl",
        "".join(
            json.dumps(
                {
                    "prompt": f"{hostile} the {pet} sat on the",
                    "answer": a,
                    "distractors": ["dog"],
                    "category": hostile,
                }
            )
            + "\n"
            for pet, a in (("cat", "mat"), ("hen", "[/]"))
        ),
    )
    corpus = write(
        "general.jsonl", "".join(json.dumps({"text": f"{t} {hostile}", "source": hostile}) + "\n" for t in TEXTS[:6])
    )
    result = CliRunner().invoke(
        app,
        [
            "forget",
            str(tiny_model),
            str(tiny_finetuned),
            "--facts",
            str(facts),
            "--corpus",
            str(corpus),
            "--out",
            str(tmp_path / "out"),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "[bold]x[/bold]" in result.output and "[/]" in result.output
