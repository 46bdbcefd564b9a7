"""`finetrace weights`: what the fine-tune did to each weight matrix of the decoder layers,
read from the weights alone, written as `weights.json`.

pair the matrices (`models.matrices`: whole models tensor by tensor, an adapter from its factors)
-> per matrix the relative change, the change's effective rank and the intruder dimensions
(`spectra.intruders`).
"""

from pathlib import Path

from finetrace._util.fingerprints import environment
from finetrace._util.outputs import check_output_dir, refuse_overlap, write_json
from finetrace._util.progress import progress_bar
from finetrace._util.timing import Stopwatch
from finetrace.models.gguf import gguf_sources
from finetrace.models.load import resolve_device
from finetrace.models.matrices import layer_matrices
from finetrace.models.pair import is_adapter, text_config
from finetrace.run import RunConfig
from finetrace.spectra.intruders import SpectraConfig, matrix_change
from finetrace.spectra.records import RESULT_NAME, WeightsResult
from finetrace.verbs.inputs import input_digests


def weights(
    base: str | Path,
    finetuned: str | Path,
    out: str | Path | None = None,
    config: SpectraConfig = SpectraConfig(),
    run: RunConfig = RunConfig(),
) -> WeightsResult:
    """Each decoder-layer weight matrix's change, its effective rank and its intruder dimensions.

    Args:
        base: the base model (a directory, a GGUF file or a hub id).
        finetuned: the fine-tuned model, or a PEFT adapter directory for `base`.
        out: where to write `weights.json` (nothing is written when None).
        config: how many leading singular vectors are examined, and the similarity threshold.
        run: `strict` refuses an adapter finetrace trained on another base; the SVDs run on the CPU.
    """
    if out is not None:
        refuse_overlap(out, {"base model": base, "fine-tuned model": finetuned})
        check_output_dir(out)
    clock = Stopwatch()
    pairs, matrices = layer_matrices(base, finetuned, run.strict), []
    with progress_bar("weights (layers)", text_config(base).num_hidden_layers) as advance:
        for pair in pairs:
            if matrices and pair.layer != matrices[-1].layer:
                advance()
            matrices.append(matrix_change(pair.layer, pair.module, pair.base, pair.finetuned, config))
        advance()
    clock.lap("spectra")
    result = WeightsResult(
        base=str(base),
        finetuned=str(finetuned),
        adapter=is_adapter(finetuned),
        matrices=matrices,
        config=config,
        environment=environment(resolve_device("cpu")),
        seconds=clock.laps,
        gguf=gguf_sources(base=base, finetuned=finetuned),
        inputs=input_digests({"base": base, "finetuned": finetuned}, {}),
    )
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        write_json(Path(out) / RESULT_NAME, result.to_dict())
    return result
