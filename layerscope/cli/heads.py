"""`layerscope patchscope` and `layerscope heads retrieval|activity|induction|ablate|pattern`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from layerscope.cli.common import (
    INT_MAX,
    BosModelOptions,
    ModelOptions,
    OccurrenceOption,
    Output,
    PromptInput,
    Reads,
    StderrProgress,
    TopKOption,
    command,
    spec_option,
)
from layerscope.cli.lens import with_intervention_options
from layerscope.cli.tables import (
    ablation_table,
    activity_table,
    heads_table,
    patchscope_table,
    pattern_table,
    retrieval_table,
)
from layerscope.errors import LayerscopeError
from layerscope.locations import DEFAULT_HAYSTACK, DEFAULT_NEEDLES
from layerscope.specs import parse_heads, whole_number_in

if TYPE_CHECKING:
    from layerscope.analyses.head_pattern import AttentionPattern
    from layerscope.analyses.needles import Needle
    from layerscope.records import Records

heads_app = typer.Typer(
    help="Attention-head analyses: retrieval, induction and previous-token heads, masking, attention patterns.",
    no_args_is_help=True,
)

HaystackOption = Annotated[
    Path | None, typer.Option(help="Haystack text file (default: the shipped one)."), Reads((DEFAULT_HAYSTACK,))
]
NeedlesOption = Annotated[
    Path | None,
    typer.Option(help="Needles JSONL: needle, question, answer (default: shipped)."),
    Reads((DEFAULT_NEEDLES,)),
]
DepthsOption = Annotated[str, typer.Option(help="Needle depths in percent, e.g. 0,25,50,75,100.")]
AnswerTokensOption = Annotated[
    int,
    typer.Option(
        "--max-new-tokens", min=1, max=200, help="Greedy answer length limit; decoding also stops at a newline."
    ),
]
ScoresOption = Annotated[Path, typer.Option("--scores", help="Head scores JSON written by `heads retrieval`."), Reads()]
ShowOption = Annotated[int, typer.Option("--show", min=1, help="Heads listed in the table.")]


@command
def patchscope(
    *,
    model: ModelOptions,
    prompt: PromptInput,
    target_prompt: Annotated[
        str | None,
        typer.Option(
            help="Target prompt (default: the few-shot identity prompt "
            "'cat -> cat\\n1135 -> 1135\\nhello -> hello\\n?')."
        ),
    ] = None,
    placeholder: Annotated[
        str | None,
        typer.Option(
            help="Marker word in --target-prompt whose token is overwritten (default 'x'; the default prompt uses its "
            "last token)."
        ),
    ] = None,
    occurrence: OccurrenceOption = None,
    target_layer: Annotated[str, typer.Option(help="'same' (target row = source row) or a grid row 0..L.")] = "same",
    max_new_tokens: Annotated[int, typer.Option(min=0, max=50, help="Greedy description length per cell.")] = 0,
    top_k: TopKOption = 5,
    output: Output,
) -> None:
    """Patchscopes: the model says what each layer's state at each token encodes, with precision@1 beside the lens.

    Example: layerscope patchscope --model demo --prompt "The Eiffel Tower is in Paris"
    Example: layerscope patchscope -p "France" --target-prompt "The capital city of x is" --target-layer 8
    """
    from layerscope.analyses.patchscope import check_target_layer, parse_target, run_patchscope

    text = prompt.read()
    layer = None if target_layer == "same" else row_number(target_layer)
    if target_prompt is not None and placeholder is None:
        placeholder = "x"
    lm = model.load()
    target = parse_target(lm, target_prompt, placeholder, occurrence)
    check_target_layer(lm, layer)
    ids = lm.encode(text)
    with StderrProgress() as progress:
        report = run_patchscope(lm, ids, target, layer, top_k, max_new_tokens, progress)
    output.write(report.to_dict, report.records, lambda: patchscope_table(report), report.plot)


def row_number(text: str) -> int:
    """--target-layer's row: ASCII digits, within what any option takes (checked against the model later)."""
    row = whole_number_in(text, 0, INT_MAX)
    if row is None:
        raise LayerscopeError(f"--target-layer must be 'same' or a row number, not '{text}'.")
    return row


def needle_inputs(
    haystack: Path | None, needles: Path | None, lengths: str, depths: str
) -> tuple[str, list[Needle], tuple[int, ...], tuple[int, ...]]:
    """The haystack, the needles, --lengths and --depths (percent, 0..100), read and checked before the model
    loads: `build_tests`'s inputs."""
    from layerscope.analyses.needles import load_haystack, load_needles

    return (
        load_haystack(haystack) if haystack else load_haystack(),
        load_needles(needles) if needles else load_needles(),
        spec_option("--lengths", lengths, "length"),
        spec_option("--depths", depths, "depth", 101),
    )


@heads_app.command("retrieval")
@command
def retrieval(
    *,
    model: ModelOptions,
    haystack: HaystackOption = None,
    needles: NeedlesOption = None,
    lengths: Annotated[str, typer.Option(help="Haystack lengths in tokens, e.g. 512,1024,2048.")] = "512,1024,2048",
    depths: DepthsOption = "0,25,50,75,100",
    max_new_tokens: AnswerTokensOption = 50,
    span: Annotated[
        str,
        typer.Option(
            help="Tokens the copy-paste rule scores: 'needle' (the whole needle sentence, "
            "the paper's formula) or 'answer' (only the answer words inside it, as "
            "the authors' code and its published figures)."
        ),
    ] = "needle",
    show: ShowOption = 20,
    output: Output,
) -> None:
    """Retrieval heads: needle-in-a-haystack tests scored per query head with the copy-paste rule.

    Example: layerscope heads retrieval --model demo --lengths 512,1024 --format json --out scores.json
    """
    from layerscope.analyses.needles import build_tests, check_span
    from layerscope.analyses.retrieval import needle_results, retrieval_from_results

    checked_span = check_span(span)
    inputs = needle_inputs(haystack, needles, lengths, depths)
    lm = model.load()
    tests = build_tests(lm, *inputs, checked_span)
    lm.check_generation(max(test.ids.shape[1] for test in tests), max_new_tokens)
    results = []
    with StderrProgress() as progress:
        try:
            for result in needle_results(lm, tests, max_new_tokens, progress):
                results.append(result)
        except KeyboardInterrupt:
            if not results:
                raise
    settings = {
        "lengths": list(inputs[2]),
        "depths": list(inputs[3]),
        "max_new_tokens": max_new_tokens,
        "span": span,
        "interrupted": len(results) < len(tests),
    }
    scores = retrieval_from_results(lm, results, settings)
    output.write(
        scores.to_dict, scores.records, lambda: retrieval_table(results, scores, len(tests), span, show), scores.plot
    )


@heads_app.command("activity")
@command
def activity(
    *,
    scores: ScoresOption,
    model: ModelOptions,
    prompt: PromptInput,
    max_new_tokens: AnswerTokensOption = 30,
    output: Output,
) -> None:
    """Per generated token, how many known retrieval heads copy-pasted it from the prompt (quiet heads can
    signal hallucination).

    Example: layerscope heads activity --model demo --scores scores.json --prompt-file question.txt
    """
    from layerscope.analyses.head_activity import head_activity
    from layerscope.analyses.head_scores import load_head_scores

    text = prompt.read()
    head_scores = load_head_scores(scores, kind="retrieval")
    lm = model.load()
    head_scores.check_model(lm)
    result = head_activity(lm, lm.encode(text), head_scores, max_new_tokens)
    output.write(result.to_dict, result.records, lambda: activity_table(result), result.plot)


@heads_app.command("induction")
@command
def induction(
    *,
    model: ModelOptions,
    seq_len: Annotated[int, typer.Option(min=2, help="Length of the random token block.")] = 50,
    repeats: Annotated[int, typer.Option(min=2, help="Times the block is repeated.")] = 2,
    samples: Annotated[int, typer.Option(min=1, help="Random sequences averaged.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the random tokens.")] = 0,
    show: ShowOption = 10,
    output: Output,
) -> None:
    """Induction (prefix-matching) heads on repeated random tokens, and previous-token heads on ordinary text.

    Example: layerscope heads induction --model demo --seq-len 50 --repeats 2 --samples 10 --format json
    """
    from layerscope.analyses.induction import induction_scores, previous_token_scores
    from layerscope.figures.heads import head_scores_figure

    lm = model.load()
    with StderrProgress() as progress:
        prefix = induction_scores(lm, seq_len, repeats, samples, seed, progress)
        previous = previous_token_scores(lm, progress=progress)
    output.write(
        lambda: {**prefix.to_dict(), "previous_token": previous.to_dict()},
        lambda: prefix.records() + previous.records(),
        lambda: heads_table(prefix, show) + "\n\n" + heads_table(previous, show),
        lambda: head_scores_figure([prefix, previous]),
    )


@heads_app.command("ablate")
@command
def ablate(
    *,
    scores: ScoresOption,
    top: Annotated[int, typer.Option("--top", min=1, help="K: how many top heads (and random heads) to mask.")],
    model: ModelOptions,
    seed: Annotated[int, typer.Option(help="Seed for the random heads.")] = 0,
    haystack: HaystackOption = None,
    needles: NeedlesOption = None,
    lengths: Annotated[str, typer.Option(help="Haystack lengths in tokens.")] = "512,1024",
    depths: DepthsOption = "0,50,100",
    max_new_tokens: AnswerTokensOption = 50,
    output: Output,
) -> None:
    """Mask the top-K heads of a scores file, then K random heads, in both modes; NIAH accuracy for each.

    Example: layerscope heads ablate --model demo --scores scores.json --top 10
    """
    from layerscope.analyses.head_ablation import ablation_experiment, ablation_heads
    from layerscope.analyses.head_scores import load_head_scores
    from layerscope.analyses.needles import build_tests

    inputs = needle_inputs(haystack, needles, lengths, depths)
    head_scores = load_head_scores(scores, kind="retrieval")
    lm = model.load()
    head_scores.check_model(lm)
    ablation_heads(head_scores, top, seed)
    tests = build_tests(lm, *inputs)
    lm.check_generation(max(test.ids.shape[1] for test in tests), max_new_tokens)
    with StderrProgress() as progress:
        report = ablation_experiment(lm, head_scores, top, tests, seed, max_new_tokens, progress)
    output.write(report.to_dict, report.records, lambda: ablation_table(report), report.plot)


def pattern_records(runs: dict[str, AttentionPattern]) -> Records:
    """Each run's lines, led by its name (baseline, intervened)."""
    parts = [pattern.records().with_columns({"run": name}) for name, pattern in runs.items()]
    return sum(parts[1:], parts[0])


@heads_app.command("pattern")
@command
@with_intervention_options
def pattern(
    *,
    heads: Annotated[str, typer.Option(help="Query heads as block.head, e.g. 18.6,17.3.")],
    model: BosModelOptions,
    prompt: PromptInput,
    keys: Annotated[int, typer.Option(min=1, max=100, help="Strongest keys shown per query in the table.")] = 3,
    output: Output,
    **chosen: Any,
) -> None:
    """Attention patterns: the weights of the chosen heads over the prompt (queries x keys), for the baseline and,
    with intervention options, under them.

    Example: layerscope heads pattern --heads 18.6,17.3 --prompt "The capital of France is"
    Example: layerscope heads pattern --heads 5.0 -p "When Mary and John went out, John gave" --drop 3 -f json
    """
    from layerscope.analyses.heads import attention_pattern
    from layerscope.interventions import ModelShape, check_interventions
    from layerscope.interventions.core import interventions_from_options

    text = prompt.read()
    chosen_heads = head_option(heads)
    interventions_from_options(chosen, 0)  # a bad spec is refused before the model loads
    lm = model.load()
    interventions = interventions_from_options(chosen, lm.n_blocks)
    ids = lm.encode(text)
    check_interventions(interventions, ModelShape(lm.n_blocks, lm.adapter.n_heads, ids.shape[1]))
    runs = {"baseline": attention_pattern(lm, ids, chosen_heads)}
    if interventions:
        runs["intervened"] = attention_pattern(lm, ids, chosen_heads, interventions)
    output.write(
        lambda: {
            **runs["baseline"].to_dict(),
            "interventions": [i.to_dict() for i in interventions],
            "intervened": runs["intervened"].to_dict()["weights"] if interventions else None,
        },
        lambda: pattern_records(runs),
        lambda: pattern_table(runs, keys),
        runs[list(runs)[-1]].plot,
    )


def head_option(spec: str) -> tuple[tuple[int, int], ...]:
    """--heads parsed before the model loads; its error names the flag."""
    try:
        return parse_heads(spec)
    except LayerscopeError as error:
        raise LayerscopeError(f"--heads: {error}") from None
