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
    shorten,
    spec_option,
)
from layerscope.cli.lens import with_intervention_options
from layerscope.errors import LayerscopeError
from layerscope.locations import DEFAULT_HAYSTACK, DEFAULT_NEEDLES
from layerscope.specs import parse_heads, whole_number_in

if TYPE_CHECKING:
    from layerscope.analyses.head_pattern import AttentionPattern
    from layerscope.analyses.head_scores import HeadScores
    from layerscope.analyses.patchscope import PatchscopeReport
    from layerscope.analyses.retrieval import AblationReport, ActivityTrace, Needle
    from layerscope.models.loading import LoadedModel

heads_app = typer.Typer(help="Attention-head analyses: retrieval, induction and previous-token heads, masking, "
                             "attention patterns.", no_args_is_help=True)

HaystackOption = Annotated[Path | None, typer.Option(help="Haystack text file (default: the shipped one)."),
                           Reads((DEFAULT_HAYSTACK,))]
NeedlesOption = Annotated[Path | None, typer.Option(help="Needles JSONL: needle, question, answer (default: shipped)."),
                          Reads((DEFAULT_NEEDLES,))]
DepthsOption = Annotated[str, typer.Option(help="Needle depths in percent, e.g. 0,25,50,75,100.")]
AnswerTokensOption = Annotated[int, typer.Option("--max-new-tokens", min=1, max=200,
                                                 help="Greedy answer length limit; decoding also stops at a newline.")]
ScoresOption = Annotated[Path, typer.Option("--scores", help="Head scores JSON written by `heads retrieval`."), Reads()]
ShowOption = Annotated[int, typer.Option("--show", min=1, help="Heads listed in the table.")]


def patchscope_table(report: PatchscopeReport) -> str:
    from layerscope.cli.lens import grid_table

    target = "same as source" if report.target_layer is None else str(report.target_layer)
    lines = [f"target prompt: {report.target_prompt!r}  (placeholder at token {report.placeholder_position}, "
             f"target layer: {target})", "", grid_table(report.grid), "",
             "precision@1 against the model's own next token:", f"{'layer':>5} {'patchscope':>10} {'logit lens':>10}"]
    precision = report.precision
    for label, patch, lens in zip(precision.layers, precision.patchscope, precision.logit_lens):
        lines.append(f"{label:>5} {patch:>10.2f} {lens:>10.2f}{'  <- patchscope better' if patch > lens else ''}")
    if report.descriptions is not None:
        lines += ["", "descriptions (greedy, per layer; columns are prompt tokens):"]
        for label, row in zip(report.grid.layers, report.descriptions):
            lines.append(f"{label:>5} | " + " | ".join(shorten(text, 16) for text in row))
    return "\n".join(lines)


@command
def patchscope(
    *,
    model: ModelOptions,
    prompt: PromptInput,
    target_prompt: Annotated[str | None, typer.Option(
        help="Target prompt (default: the few-shot identity prompt 'cat -> cat\\n1135 -> 1135\\nhello -> hello\\n?').")
    ] = None,
    placeholder: Annotated[str | None, typer.Option(
        help="Marker word in --target-prompt whose token is overwritten (default 'x'; the default prompt uses its "
             "last token).")] = None,
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
    progress = StderrProgress()
    try:
        report = run_patchscope(lm, ids, target, layer, top_k, max_new_tokens, progress)
    finally:
        progress.close()
    output.write(report.to_dict, report.grid.csv_rows, lambda: patchscope_table(report))


def row_number(text: str) -> int:
    """--target-layer's row: ASCII digits, within what any option takes (checked against the model later)."""
    row = whole_number_in(text, 0, INT_MAX)
    if row is None:
        raise LayerscopeError(f"--target-layer must be 'same' or a row number, not '{text}'.")
    return row


def heads_table(scores: HeadScores, show: int) -> str:
    share = f"; share of heads above 0.1: {scores.share_above():.1%}" if scores.kind == "retrieval" else ""
    lines = [f"{scores.kind} scores, {scores.model}: {scores.n_blocks} blocks x {scores.n_heads} query heads{share}",
             f"{'layer':>5} {'head':>4} {'kv':>3} {'score':>7}"]
    lines += [f"{h.layer:>5} {h.head:>4} {h.kv_group:>3} {h.score:>7.3f}" for h in scores.top(show)]
    return "\n".join(lines)


def head_rows(scores: HeadScores) -> list[dict]:
    return [{"kind": scores.kind, "layer": h.layer, "head": h.head, "kv_group": h.kv_group, "score": h.score}
            for h in scores.heads]


def needle_inputs(haystack: Path | None, needles: Path | None, lengths: str, depths: str
                  ) -> tuple[str, list[Needle], tuple[int, ...], tuple[int, ...]]:
    """The haystack, the needles, --lengths and --depths (percent, 0..100), read and checked before the model
    loads: `build_tests`'s inputs."""
    from layerscope.analyses.retrieval import load_haystack, load_needles

    return (load_haystack(haystack) if haystack else load_haystack(),
            load_needles(needles) if needles else load_needles(),
            spec_option("--lengths", lengths, "length"), spec_option("--depths", depths, "depth", 101))


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
    span: Annotated[str, typer.Option(help="Tokens the copy-paste rule scores: 'needle' (the whole needle sentence, "
                                           "the paper's formula) or 'answer' (only the answer words inside it, as "
                                           "the authors' code and its published figures).")] = "needle",
    show: ShowOption = 20,
    output: Output,
) -> None:
    """Retrieval heads: needle-in-a-haystack tests scored per query head with the copy-paste rule.

    Example: layerscope heads retrieval --model demo --lengths 512,1024 --format json --out scores.json
    """
    from layerscope.analyses.retrieval import build_tests, check_span, needle_results, retrieval_from_results

    checked_span = check_span(span)
    inputs = needle_inputs(haystack, needles, lengths, depths)
    lm = model.load()
    tests = build_tests(lm, *inputs, checked_span)
    lm.check_generation(max(test.ids.shape[1] for test in tests), max_new_tokens)
    progress = StderrProgress()
    results = []
    try:
        for result in needle_results(lm, tests, max_new_tokens, progress):
            results.append(result)
    except KeyboardInterrupt:
        if not results:
            raise
    finally:
        progress.close()
    settings = {"lengths": list(inputs[2]), "depths": list(inputs[3]),
                "max_new_tokens": max_new_tokens, "span": span, "interrupted": len(results) < len(tests)}
    scores = retrieval_from_results(lm, results, settings)
    lines = [f"{'length':>6} {'depth':>5} {'recall':>6}  answer"]
    lines += [f"{r.length:>6} {r.depth:>5} {r.recall:>6.2f}  {shorten(r.answer, 60)}"
              f"{'' if r.answered else '  (failed: excluded)'}" for r in results]
    stopped = f" (interrupted: {len(results)} of {len(tests)} tests ran)" if len(results) < len(tests) else ""
    lines += ["", f"answered {scores.meta['answered']} of {len(results)} tests{stopped}; scored span: {span}",
              heads_table(scores, show)]
    output.write(scores.to_dict, lambda: head_rows(scores), lambda: "\n".join(lines))


def activity_table(trace: ActivityTrace) -> str:
    lines = [f"{len(trace.heads)} known retrieval heads (score > 0.1)", f"{'step':>4} {'token':<16} active"]
    lines += [f"{i:>4} {shorten(step.token, 16):<16} {step.active:>3} {'#' * step.active}"
              for i, step in enumerate(trace.steps)]
    return "\n".join(lines)


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
    from layerscope.analyses.head_scores import load_head_scores
    from layerscope.analyses.retrieval import activity_trace

    text = prompt.read()
    head_scores = load_head_scores(scores, kind="retrieval")
    lm = model.load()
    head_scores.check_model(lm)
    trace = activity_trace(lm, lm.encode(text), head_scores, max_new_tokens)
    output.write(trace.to_dict, lambda: ({"step": i, "token": s.token, "id": s.id, "active": s.active}
                                         for i, s in enumerate(trace.steps)), lambda: activity_table(trace))


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

    lm = model.load()
    progress = StderrProgress()
    try:
        prefix = induction_scores(lm, seq_len, repeats, samples, seed, progress)
        previous = previous_token_scores(lm, progress=progress)
    finally:
        progress.close()
    output.write(lambda: {**prefix.to_dict(), "previous_token": previous.to_dict()},
                 lambda: head_rows(prefix) + head_rows(previous),
                 lambda: heads_table(prefix, show) + "\n\n" + heads_table(previous, show))


def ablation_table(report: AblationReport) -> str:
    lines = [f"NIAH accuracy over {report.tests} tests (answered = ROUGE-1 recall > 0.5)",
             "zero = the head's output removed; uniform = the head attends evenly to all visible tokens",
             f"top-{report.k} heads: {', '.join(f'{h.layer}.{h.head}' for h in report.heads)}",
             f"random-{report.k} heads (seed {report.seed}): "
             f"{', '.join(f'{h.layer}.{h.head}' for h in report.random_heads)}",
             ""]
    lines += [f"{name:<22} {accuracy:>6.0%}" for name, accuracy in report.accuracy.items()]
    return "\n".join(lines)


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
    from layerscope.analyses.head_scores import load_head_scores
    from layerscope.analyses.retrieval import ablation_experiment, ablation_heads, build_tests

    inputs = needle_inputs(haystack, needles, lengths, depths)
    head_scores = load_head_scores(scores, kind="retrieval")
    lm = model.load()
    head_scores.check_model(lm)
    ablation_heads(head_scores, top, seed)
    tests = build_tests(lm, *inputs)
    lm.check_generation(max(test.ids.shape[1] for test in tests), max_new_tokens)
    progress = StderrProgress()
    try:
        report = ablation_experiment(lm, head_scores, top, tests, seed, max_new_tokens, progress)
    finally:
        progress.close()
    output.write(report.to_dict, lambda: ({"run": name, "accuracy": accuracy} for name, accuracy in report.accuracy.items()),
                 lambda: ablation_table(report))


def pattern_table(runs: dict[str, AttentionPattern], keys: int) -> str:
    """Per head and run, each query's strongest keys: position, token and weight."""
    sections = []
    for block, head in next(iter(runs.values())).weights:
        for name, pattern in runs.items():
            lines = [f"head {block}.{head}, {name}: the {keys} strongest keys of each query (position token weight)",
                     f"{'query':>5} {'token':<14} keys"]
            for query, token in enumerate(pattern.tokens):
                strongest = pattern.strongest((block, head), query, keys)
                cells = " | ".join(f"{key} {shorten(pattern.tokens[key], 10)} {weight:.3f}" for key, weight in strongest)
                lines.append(f"{query:>5} {shorten(token, 14):<14} {cells}")
            sections.append("\n".join(lines))
    return "\n\n".join(sections)


def pattern_rows(runs: dict[str, AttentionPattern]) -> list[dict]:
    return [{"run": name, **row} for name, pattern in runs.items() for row in pattern.csv_rows()]


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
    output.write(lambda: {**runs["baseline"].to_dict(), "interventions": [i.to_dict() for i in interventions],
                          "intervened": runs["intervened"].to_dict()["weights"] if interventions else None},
                 lambda: pattern_rows(runs), lambda: pattern_table(runs, keys))


def head_option(spec: str) -> tuple[tuple[int, int], ...]:
    """--heads parsed before the model loads; its error names the flag."""
    try:
        return parse_heads(spec)
    except LayerscopeError as error:
        raise LayerscopeError(f"--heads: {error}") from None
