"""`FinetraceCallback` inside `transformers.Trainer`, fine-tuning the tiny zoo's base on the cake
documents: metrics in `state.log_history`, a gate that stops training, the same numbers as
`finetrace watch`, and training left as it would be without it."""

import pytest
import torch
from zoo_training import cake_trainer

from finetrace.errors import FinetraceError
from finetrace.gates import parse_gate
from finetrace.integrations import PREFIX, FinetraceCallback
from finetrace.models.load import load_model, load_tokenizer
from finetrace.monitor.cheap import cheap_audit, read_reference
from finetrace.monitor.series import PAGE_NAME, WATCH_NAME, WatchSeries
from finetrace.verbs import live as live_watch
from finetrace.verbs.watch import watch
from finetrace.zoo import build_zoo

pytestmark = pytest.mark.zoo


@pytest.fixture(scope="module")
def zoo():
    return build_zoo("tiny")


def watched_trainer(zoo, run, steps: int, every: int, save_steps: int | None = None, **settings):
    trainer = cake_trainer(zoo, run, steps=steps, save_steps=save_steps)
    callback = FinetraceCallback(
        trainer,
        corpus=zoo.path("heldout"),
        facts=zoo.path("facts"),
        data=zoo.organism("cake").documents,
        every=every,
        **settings,
    )
    trainer.add_callback(callback)
    return trainer, callback


@pytest.fixture(scope="module")
def trained(zoo, tmp_path_factory):
    """Five steps, audited at steps 2 and 4 and at the end, checkpoints saved at the same steps."""
    out = tmp_path_factory.mktemp("run")
    trainer, callback = watched_trainer(zoo, out, steps=5, every=2, save_steps=2, out=out / "watch")
    trainer.train()
    return trainer, callback, out


def test_the_metrics_land_in_the_trainers_log_history(trained):
    trainer, callback, _ = trained
    logged = [entry for entry in trainer.state.log_history if f"{PREFIX}trace_strength" in entry]
    assert [entry["step"] for entry in logged] == [p.step for p in callback.points] == [2, 4, 5]
    for entry, point in zip(logged, callback.points, strict=True):
        for name, value in point.checkup.metrics.items():
            assert entry[f"{PREFIX}{name}"] == value
        assert entry[f"{PREFIX}audit_seconds"] == point.checkup.seconds > 0
    assert logged[0][f"{PREFIX}nll_change"] < logged[-1][f"{PREFIX}nll_change"]
    # The trainer's own loss is still logged at every step, audited or not.
    assert [entry["step"] for entry in trainer.state.log_history if "loss" in entry] == [1, 2, 3, 4, 5]


def test_the_callback_measures_what_watch_measures_in_the_saved_checkpoints(trained, zoo, tmp_path):
    _, callback, out = trained
    series = watch(
        zoo.path("base"),
        [out / "checkpoint-2", out / "checkpoint-4"],
        zoo.path("heldout"),
        tmp_path,
        facts=zoo.path("facts"),
        data=zoo.organism("cake").documents,
    )
    for live, saved in zip(callback.points, series.points, strict=False):
        assert (live.step, live.checkup.metrics, live.checkup.lens) == (
            saved.step,
            saved.checkup.metrics,
            saved.checkup.lens,
        )


def test_the_callback_writes_its_series_and_page(trained):
    _, callback, out = trained
    written = WatchSeries.read(out / "watch" / WATCH_NAME)
    assert written.points == callback.points and written.key is None
    assert "(live model)" in (out / "watch" / PAGE_NAME).read_text()


def test_the_base_is_read_once_per_run(zoo, tmp_path, monkeypatch):
    calls = []

    def counted(*args, **kwargs):
        calls.append(args)
        return read(*args, **kwargs)

    read = live_watch.read_reference
    monkeypatch.setattr(live_watch, "read_reference", counted)
    trainer, callback = watched_trainer(zoo, tmp_path, steps=4, every=1)
    trainer.train()
    assert len(callback.points) == 4 and len(calls) == 1


def test_a_gate_stops_training_at_the_step_it_holds(zoo, tmp_path):
    trainer, callback = watched_trainer(zoo, tmp_path, steps=20, every=2, fail_on=(parse_gate("nll_change>0"),))
    trainer.train()
    assert callback.stopped_at == 2 and trainer.state.global_step == 2
    assert [p.step for p in callback.points] == [2]


def test_auditing_leaves_training_as_it_would_be(zoo, tmp_path):
    plain = cake_trainer(zoo, tmp_path / "plain", steps=3)
    plain.train()
    audited, _ = watched_trainer(zoo, tmp_path / "audited", steps=3, every=1)
    audited.train()

    def losses(trainer):
        return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]

    assert losses(audited) == losses(plain) and len(losses(plain)) == 3


def test_a_resumed_run_needs_the_base(zoo, tmp_path):
    first = cake_trainer(zoo, tmp_path, steps=2, save_steps=2)
    first.train()
    trainer, _ = watched_trainer(zoo, tmp_path, steps=4, every=2)
    with pytest.raises(FinetraceError, match="give FinetraceCallback the base model"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    resumed, callback = watched_trainer(zoo, tmp_path, steps=4, every=2, base=zoo.path("base"))
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert [p.step for p in callback.points] == [4]


def test_every_must_be_a_positive_number_of_steps(zoo, tmp_path):
    with pytest.raises(FinetraceError, match="every 0"):
        watched_trainer(zoo, tmp_path, steps=2, every=0)


def test_an_audit_reads_the_model_in_eval_mode_and_leaves_its_mode(zoo):
    model = load_model(zoo.path("base"), torch.device("cpu")).train()
    modes = []
    hook = model.model.layers[0].register_forward_hook(lambda module, *_: modes.append(module.training))
    reference = read_reference(model, load_tokenizer(zoo.path("base")), zoo.path("heldout"), zoo.path("facts"))
    checkup = cheap_audit(model, reference)
    hook.remove()
    assert model.training and modes and not any(modes)
    assert checkup.nll_change == 0 and checkup.lost_facts == 0  # the base against itself
