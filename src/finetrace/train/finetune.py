"""Fine-tune any Hugging Face causal LM, fully or with LoRA, and record its provenance.

Optionally mixes general text into the fine-tuning data (R general documents per
fine-tuning document), which Minder et al. (2025) show weakens the trace a narrow
fine-tune leaves in the activations.

A run is all or nothing: the output is built beside `out` and swapped in only when
complete. A killed run is not resumed but restarted from nothing, which gives the
same weights as an uninterrupted run because everything is seeded.
"""

import random
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

import peft
import torch
from accelerate.utils import parse_flag_from_env
from torch import nn
from transformers import PreTrainedTokenizerBase

from finetrace._util.distributed import processes
from finetrace._util.fingerprints import environment, file_sha256, weights_sha256
from finetrace._util.outputs import check_output_dir, recover_dir, refuse_overlap, staged_dir, write_json
from finetrace._util.records import Result
from finetrace.corpus import Record, read_records, read_texts
from finetrace.errors import FinetraceError
from finetrace.evals.facts import COMMON_FACTS
from finetrace.models.gguf import GgufSource, gguf_sources
from finetrace.models.load import (
    load_model,
    load_tokenizer,
    pad_token_id,
    resolve_device,
    resolve_dtype,
    weights_digest,
)
from finetrace.models.pair import MANIFEST_NAME
from finetrace.papertrail import provenance
from finetrace.papertrail.contamination import evaluation_sets
from finetrace.papertrail.scan import ProvenanceReport
from finetrace.run import RunConfig
from finetrace.train.config import FinetuneConfig
from finetrace.train.examples import Example, build_examples, pack
from finetrace.train.loop import TrainingRun, mean_loss, train

SCHEMA_VERSION = 2


PROBE_MIN, PROBE_MAX = 16, 256


@dataclass(frozen=True)
class DataFile:
    """A data file that went into training."""

    path: str
    role: str  # "finetune" or "mix-general"
    sha256: str
    bytes: int
    records: int  # records in the file
    used: int  # records that went into training


@dataclass(frozen=True)
class FinetuneResult(Result):
    """The provenance manifest written next to the weights as `provenance.json`."""

    adapter: bool  # True: a PEFT adapter directory; False: full model weights
    base_model: str
    base_weights_sha256: str
    data: list[DataFile]
    config: FinetuneConfig
    run: RunConfig
    examples: int
    loss_before: float  # on the first `probe_examples` fine-tuning examples
    loss_after: float
    training: TrainingRun
    environment: dict[str, str]
    provenance: ProvenanceReport | None = None  # the data's provenance report
    # The base's files as `models.weights_digest` hashes them, whatever dtype loads them: an
    # analysis that applies this adapter to another base can tell.
    base_files_sha256: str = ""
    probe_examples: int = 0  # fine-tuning examples the losses before and after are measured on
    base_gguf: GgufSource | None = None  # the base, when it was given as a GGUF file
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def load(cls, directory: str | Path) -> "FinetuneResult | None":
        """The manifest `finetrace finetune` wrote in `directory`; None where there is none, or where
        its `provenance.json` is not one this finetrace version wrote (another tool's, or corrupt)."""
        path = Path(directory) / MANIFEST_NAME
        try:
            return cls.read(path) if path.is_file() else None
        except FinetraceError:
            return None


class TrainingMonitor(Protocol):
    """What watches a fine-tune while it trains (`finetrace.verbs.live.LiveWatch` is one)."""

    @property
    def inputs(self) -> dict[str, str | Path | None]:
        """The files it reads, by name: the fine-tune's output must not replace them."""

    def begin(self, base: nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
        """Read what it needs of the base: the model before its first step."""

    def after_step(self, model: nn.Module, step: int, seed: int) -> bool:
        """Look at the model after optimizer step `step`; True stops training there."""

    def write(self, out: Path, base: str, run: RunConfig, device: torch.device) -> object:
        """Save its record in the model's directory."""


def finetune(
    base: str | Path,
    data: str | Path,
    out: str | Path,
    config: FinetuneConfig = FinetuneConfig(),
    run: RunConfig = RunConfig(),
    mix_general: str | Path | None = None,
    overwrite: bool = False,
    licence: str | None = None,
    source: str | None = None,
    monitor: TrainingMonitor | None = None,
) -> FinetuneResult | None:
    """Fine-tune `base` on `data` and save the model (or adapter) and its manifest to `out`.

    Under `torchrun` or `accelerate launch` the processes train data-parallel (DDP); the main
    process writes and returns the result, the others return None.

    Args:
        base: a model directory or a hub id.
        data: `.jsonl` (`text` or chat `messages`) or `.txt` (one document per line).
        out: output directory; loadable with `from_pretrained` (or `PeftModel.from_pretrained`).
        config: training settings.
        run: the device, the dtype (auto: float32) and the seed of the data's order and the initialisation.
        mix_general: a plain-text corpus to mix in, `config.mix_ratio` documents per document.
        overwrite: replace a non-empty `out`.
        licence, source: the data's SPDX licence and origin, for its provenance report.
        monitor: watches the run (`finetrace.verbs.live.LiveWatch`): it reads the base before the first
            step, audits after any step and may stop training; its record is saved beside the model.
    """
    out = Path(out)
    share = processes(run.device)
    main = share.is_main_process  # under a launcher, only the main process writes
    if parse_flag_from_env("ACCELERATE_USE_FSDP"):  # `accelerate launch --use_fsdp`
        raise FinetraceError(
            "finetrace finetune trains data-parallel (DDP), each process holding the whole model; it "
            "does not shard a model with FSDP: train a LoRA adapter, or launch without --use_fsdp"
        )
    if config.training.batch_size < share.num_processes:  # every process takes a slice of each batch
        raise FinetraceError(
            f"a batch of {config.training.batch_size} examples cannot be split over {share.num_processes} "
            f"processes: give --batch-size {share.num_processes} or more"
        )
    if main:
        inputs = {"base model": base, "data": data, "general corpus": mix_general}
        _check_output(out, overwrite, inputs | (monitor.inputs if monitor is not None else {}))
    records = read_records(data)
    paper_trail = provenance(data, licence, source, base, evaluation_sets(COMMON_FACTS)) if main else None
    general = _general_records(mix_general, config.mix_ratio, len(records), run.seed)
    # Built beside `out` and swapped in whole: a failed or killed run leaves the old output as it
    # was, and a rerun starts afresh (the same seed gives the same weights; see `_check_output`).
    with staged_dir(out) if main else nullcontext() as staging:
        device = resolve_device(run.device)
        tokenizer = load_tokenizer(base)
        model = load_model(base, device, resolve_dtype("float32" if run.dtype == "auto" else run.dtype))
        base_digest = weights_sha256(model)
        examples, probe = _examples(tokenizer, records, general, config, run.seed)
        pad_id = pad_token_id(tokenizer)
        if monitor is not None:
            monitor.begin(model, tokenizer)  # before the first step, the model is the base
        torch.manual_seed(run.seed)
        if config.lora:
            model = peft.get_peft_model(model, config.lora.peft_config())
        after_step = (lambda step: monitor.after_step(model, step, run.seed)) if monitor else None
        if not main:  # another process of a launched run: it trains on its share of each batch
            train(model, examples, config.training, pad_id, run.seed, after_step)
            return None
        loss_before = mean_loss(model, probe, pad_id)
        curve = train(model, examples, config.training, pad_id, run.seed, after_step)
        loss_after = mean_loss(model, probe, pad_id)
        files = [_data_file(data, "finetune", len(records), len(records))]
        if mix_general is not None:
            files.append(_data_file(mix_general, "mix-general", len(read_texts(mix_general)), len(general)))
        result = FinetuneResult(
            adapter=config.lora is not None,
            base_model=str(base),
            base_weights_sha256=base_digest,
            base_files_sha256=weights_digest(base),
            base_gguf=gguf_sources(base=base).get("base"),
            data=files,
            config=config,
            run=run,
            examples=len(examples),
            loss_before=loss_before,
            loss_after=loss_after,
            probe_examples=len(probe),
            training=curve,
            environment=environment(device),
            provenance=paper_trail,
        )
        if config.lora:  # the base's own head is unchanged: keep it out of the adapter
            model.save_pretrained(staging, save_embedding_layers=False)
        else:
            model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        write_json(staging / MANIFEST_NAME, result.to_dict(), indent=2)
        if monitor is not None:
            monitor.write(staging, str(base), run, device)
    return result


class _Examples(NamedTuple):
    training: list[Example]  # the data and the general text, shuffled by the seed
    probe: list[Example]  # the first fine-tuning examples, scored before and after training


def _examples(tokenizer, records: list[Record], general: list[Record], config: FinetuneConfig, seed: int) -> _Examples:
    training = config.training
    mixed = records + general
    random.Random(seed).shuffle(mixed)
    examples = build_examples(tokenizer, mixed, training.context_length)
    if training.pack:
        examples = pack(examples, training.context_length)
    size = config.loss_probe_examples or probe_size(training.total_steps(len(examples)) * training.batch_size)
    return _Examples(examples, build_examples(tokenizer, records[:size], training.context_length))


def probe_size(trained: int) -> int:
    """Examples to score before and after a run that trains on `trained` examples: an eighth of
    them, so the two forward passes cost about a twelfth of training (a forward pass is a third
    of a training step), and at least 16, whose mean loss is already far steadier than the drop
    it reports; at most 256."""
    return min(max(trained // 8, PROBE_MIN), PROBE_MAX)


def _check_output(out: Path, overwrite: bool, inputs: dict[str, str | Path | None]) -> None:
    """Refuse an output that would destroy an input or a previous run, before any work."""
    refuse_overlap(out, inputs, containing=True)
    check_output_dir(out)
    recover_dir(out)  # a killed run's leftovers: the unfinished build goes, an older output returns
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FinetraceError(f"output directory {out} is not empty; choose another or overwrite it")


def _general_records(corpus: str | Path | None, ratio: float, n_finetune: int, seed: int) -> list[Record]:
    """`ratio * n_finetune` documents drawn without replacement from the general corpus."""
    if corpus is None:
        return []
    texts = read_texts(corpus)
    wanted = round(ratio * n_finetune)
    if wanted > len(texts):
        raise FinetraceError(
            f"{corpus} has {len(texts)} documents; mixing {ratio} per document of "
            f"{n_finetune} needs {wanted}: give a larger corpus or a smaller --mix-ratio"
        )
    return [{"text": text} for text in random.Random(seed).sample(texts, wanted)]


def _data_file(path: str | Path, role: str, records: int, used: int) -> DataFile:
    path = Path(path)
    return DataFile(str(path), role, file_sha256(path), path.stat().st_size, records, used)
