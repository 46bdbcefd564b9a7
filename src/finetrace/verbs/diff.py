"""`finetrace diff`: the whole Activation Difference Lens on one model pair.

collect the mean differences -> decode each reported position (logit lens
through both heads, Patchscope) -> score (with the fine-tuning data: relevant
lens tokens against the null of `adl.score`) -> steer with the difference.
"""

import json
from dataclasses import replace
from itertools import islice
from pathlib import Path

import torch

from finetrace._util.distributed import is_main
from finetrace._util.fingerprints import environment
from finetrace._util.outputs import check_output_dir, refuse_overlap, write_json
from finetrace._util.progress import progress_bar
from finetrace._util.timing import Stopwatch
from finetrace.adl.collect import BASE_STORE, Collected, collect
from finetrace.adl.decode import lens_tokens, patchscopes
from finetrace.adl.domain import (
    DomainTokens,
    base_embedding,
    layer_significance,
    mark_relevant,
    pair_trace_test,
    read_domain,
    readable_tokens,
    text_positions,
)
from finetrace.adl.moments import save_tensors
from finetrace.adl.records import RESULT_NAME, TENSORS_NAME, DiffConfig, DiffResult, PositionTrace
from finetrace.adl.score import Significance, embedding_similarities
from finetrace.adl.steer import Steering, steer
from finetrace.corpus import Record, iter_texts, read_records, record_texts
from finetrace.errors import FinetraceError
from finetrace.models.gguf import gguf_sources
from finetrace.models.load import resolve_device
from finetrace.models.pair import ModelPair, load_pair
from finetrace.models.residual import Readout
from finetrace.run import RunConfig
from finetrace.verbs.inputs import corpus_for, input_digests


def diff(
    base: str | Path,
    finetuned: str | Path,
    corpus: str | Path | None = None,
    out: str | Path = "finetrace-diff",
    config: DiffConfig = DiffConfig(),
    run: RunConfig = RunConfig(),
    data: str | Path | None = None,
    control: str | Path | None = None,
    pair: ModelPair | None = None,
) -> DiffResult | None:
    """Read what the fine-tune was about from activation differences on `corpus`.

    Under `torchrun` or `accelerate launch`, every process collects its share of the corpus;
    the main process then decodes, scores, steers, writes and returns the result, and the
    others return None once the collection is done.

    Args:
        base: the base model (a directory or a hub id).
        finetuned: the fine-tuned model, or a PEFT adapter directory for `base`.
        corpus: unrelated text: `.txt`, `.jsonl`, `.parquet` or a dataset id (streamed); for a zoo
            organism, the zoo's held-out text by default.
        out: output directory (differences, `diff.json`, and a checkpoint to resume from).
        config: settings of every stage.
        run: the device, dtype, seed and text field the whole run shares.
        data: the fine-tuning data, when known: relevance from it, and similarity scores.
        control: a control fine-tune of `base` (same recipe, unrelated data), tested against the
            same data: where it passes too, the test cannot tell this trace from a generic shift.
        pair: `base` and `finetuned` already loaded (`load_pair`), to share one load between analyses.
    """
    corpus = corpus_for(finetuned, corpus)
    inputs = {"base model": base, "fine-tuned model": finetuned, "corpus": corpus, "data": data, "control": control}
    refuse_overlap(out, inputs)
    out = check_output_dir(out, "--out")
    if control is not None and data is None:
        raise FinetraceError("a control is scored against the fine-tuning data: give --data as well")
    out.mkdir(parents=True, exist_ok=True)
    clock = Stopwatch()
    pair = pair or load_pair(base, finetuned, run.device, run.dtype, run.strict)
    clock.lap("load")
    records = read_records(data, run.text_field) if data is not None else None
    general = None if data is None else list(islice(iter_texts(corpus, run.text_field), config.collect.samples))
    # What needs the base comes first: it is loaded, and then collection starts with it.
    embedding = base_embedding(pair)
    quantile = config.decode.embedding_norm_quantile
    domain = read_domain(pair.tokenizer, embedding, records, general, config.score, quantile) if records else None
    allowed = domain.allowed if domain else readable_tokens(pair.tokenizer, embedding, quantile, None)
    clock.lap("relevance")
    store = out / BASE_STORE
    collected = collect(pair, corpus, config.collect, out, run.text_field, store, keep_base=control is not None)
    clock.lap("collect")
    control_significance = None
    if control is not None:  # collected next, so that every process's part ends here
        pair.release()  # one model in memory at a time, even when the caller holds the pair
        control_pair = load_pair(base, control, run.device, run.dtype, run.strict)
        control_collected = collect(control_pair, corpus, config.collect, out / "control", run.text_field, store)
        if is_main():
            control_significance = pair_trace_test(
                control_pair, control_collected, domain, config.reported_positions, config.score, run.seed
            )
        control_pair.release()
        clock.lap("control")
    if not is_main():
        return None
    traces, total = _decode_and_score(pair, collected, config, domain, allowed, run.seed)
    clock.lap("decode")
    steer_index = _steered_index(collected, config)
    steering = _steered(pair, collected, steer_index, config, run.seed)
    clock.lap("steer")
    similarity = _similarity(steering, records, general) if records is not None else None
    clock.lap("similarity")
    result = DiffResult(
        base=str(base),
        finetuned=str(finetuned),
        adapter=pair.adapter,
        corpus=str(corpus),
        texts=collected.texts,
        data=str(data) if data is not None else None,
        traces=traces,
        steering=steering,
        steered_position=collected.position_labels[steer_index],
        significance=total,
        relevant_unreadable=domain.unreadable if domain else 0,
        config=config,
        run=run,
        environment=environment(resolve_device(run.device)),
        seconds=clock.laps,
        similarity=similarity,
        control=str(control) if control else None,
        control_significance=control_significance,
        warnings=pair.warnings,
        gguf=pair.gguf | gguf_sources(control=control),
        inputs=input_digests(
            {"base": base, "finetuned": finetuned, "control": control}, {"corpus": corpus, "data": data}
        ),
    )
    _write(out, result, collected)
    return result


def _decode_and_score(
    pair: ModelPair,
    collected: Collected,
    config: DiffConfig,
    domain: DomainTokens | None,
    allowed: torch.Tensor,
    seed: int,
) -> tuple[list[PositionTrace], Significance | None]:
    labels = collected.position_labels
    text = text_positions(collected, config.reported_positions)
    decoded = collected.sink_positions + text  # the sink shown, flagged, beside what is read
    base_lens = {
        (li, pi): _lens(pair.base_readout(), collected, (li, pi), allowed, pair, config)
        for li in range(len(collected.layers))
        for pi in decoded
    }
    traces, totals = [], []
    cells = len(collected.layers) * len(decoded)
    with pair.use("finetuned") as (model, layout), progress_bar("decoding (positions)", cells) as advance:
        for li, layer in enumerate(collected.layers):
            typical = collected.typical_norm(li)
            tested = layer_significance(layout, collected, li, text, domain, config.score, seed) if domain else None
            if tested:
                totals.append(tested.total)
            directions = collected.mean_delta[li, decoded].float().to(pair.device)
            scopes = patchscopes(model, layout, pair.tokenizer, layer, directions, typical, allowed, config.decode)
            for pi, direction, scope in zip(decoded, directions, scopes, strict=True):
                lens = _lens(layout, collected, (li, pi), allowed, pair, config)
                if domain is not None:
                    lens = mark_relevant(lens, domain)
                    marked = [replace(s, stable=mark_relevant(s.stable, domain)) for s in scope.scales]
                    scope = replace(scope, scales=marked)
                traces.append(
                    PositionTrace(
                        layer=layer,
                        position=labels[pi],
                        sink=pi in collected.sink_positions,
                        norm=direction.norm().item(),
                        norm_stderr=collected.delta.standard_error[li, pi].norm().item(),
                        relative_norm=direction.norm().item() / typical,
                        lens_finetuned=lens,
                        lens_base=base_lens[(li, pi)],
                        patchscope=scope,
                        significance=tested.positions[text.index(pi)] if tested and pi in text else None,
                        relevant_fraction=sum(t.relevant for t in lens) / max(len(lens), 1) if domain else None,
                    )
                )
                advance()
    return traces, totals[0] if totals else None


def _lens(readout: Readout, collected: Collected, cell: tuple[int, int], allowed, pair: ModelPair, config: DiffConfig):
    direction = collected.mean_delta[cell].float().to(readout.device)
    return lens_tokens(readout, direction, allowed, pair.tokenizer, config.decode.top_k)


def _steered_index(collected: Collected, config: DiffConfig) -> int:
    """The position whose difference steers: the configured one, else the first read."""
    if config.steer_position is None:
        return text_positions(collected, 1)[0]
    return collected.position_labels.index(str(config.steer_position))


def _steered(pair: ModelPair, collected: Collected, steer_index: int, config: DiffConfig, seed: int) -> Steering:
    """Steering of the fine-tune along the mean difference at the steering position of the first layer."""
    with pair.use("finetuned") as (model, layout):
        return steer(
            model,
            layout,
            pair.tokenizer,
            collected.layers[0],
            collected.mean_delta[0, steer_index].float().to(pair.device),
            collected.typical_norm(0),
            config.steer,
            seed,
        )


def _similarity(steering: Steering, records: list[Record], general: list[str]) -> dict[str, float]:
    generated = {
        "steered": [g.prompt + g.text for g in steering.steered],
        "unsteered": [g.prompt + g.text for g in steering.unsteered.generations],
    }
    data = [" ".join(record_texts(record)) for record in records]
    return embedding_similarities(generated, {"data": data, "general": general})


def _write(out: Path, result: DiffResult, collected: Collected) -> None:
    tensors = {
        "mean_delta": collected.mean_delta.float(),
        "delta_stderr": collected.delta.standard_error.float(),
        "base_norm": collected.base_norm.mean[..., 0].float(),
        "finetuned_norm": collected.finetuned_norm.mean[..., 0].float(),
    }
    metadata = {"layers": json.dumps(collected.layers), "positions": json.dumps(collected.position_labels)}
    save_tensors(out / TENSORS_NAME, tensors, metadata)
    write_json(out / RESULT_NAME, result.to_dict())
