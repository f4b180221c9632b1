"""Every command's table (`--format table`, the default): the text a person reads; the JSON is each result's
`to_dict()` and the CSV its `records()`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from layerscope.cli.common import shorten

if TYPE_CHECKING:
    from layerscope.analyses.attribution import LogitAttribution
    from layerscope.analyses.causal_trace import CausalTrace
    from layerscope.analyses.compare import InterventionReport
    from layerscope.analyses.early_exit import EarlyExit
    from layerscope.analyses.grid import DecodeGrid
    from layerscope.analyses.head_ablation import AblationReport
    from layerscope.analyses.head_activity import HeadActivity
    from layerscope.analyses.head_pattern import AttentionPattern
    from layerscope.analyses.head_scores import HeadScores
    from layerscope.analyses.influence import InfluenceReport
    from layerscope.analyses.neurons import NeuronCensus
    from layerscope.analyses.patchscope import PatchscopeReport
    from layerscope.analyses.probes import ProbeReport
    from layerscope.analyses.retrieval import NeedleResult
    from layerscope.analyses.stages import StageMap
    from layerscope.analyses.sweep_result import SweepResult
    from layerscope.analyses.tuned_lens import LensComparison

GRID_CELL = 12  # a decode grid's cell: the top-1 token and its probability
TRACE_CELL = 7  # a causal trace's cell: the indirect effect
GENERATED_MARK = "+"  # leads a generated token's header in a decode grid


def grid_table(grid: DecodeGrid) -> str:
    """Rows are layers, columns are prompt tokens; each cell the top-1 token and its probability. Generated
    tokens (`lens --generate`) are marked `+` in the header, and a last line says so."""
    marks = [GENERATED_MARK if grid.generated(p) else "" for p in range(len(grid.tokens))]
    head = f"{'layer':>5} | " + " ".join(
        f"{mark + shorten(t, GRID_CELL - len(mark)):<{GRID_CELL}}" for mark, t in zip(marks, grid.tokens)
    )
    lines = [head, "-" * len(head)]
    for label, row in zip(grid.layers, grid.cells):
        cells = " ".join(
            f"{shorten(c.top[0].token, GRID_CELL - 5) + f' {c.top[0].prob:.2f}':<{GRID_CELL}}" for c in row
        )
        lines.append(f"{label:>5} | {cells}")
    if grid.prompt_length is not None:
        generated = len(grid.tokens) - grid.prompt_length
        lines.append(
            f"{GENERATED_MARK} marks the {generated} generated tokens after the {grid.prompt_length}-token prompt"
        )
    return "\n".join(lines)


def report_table(report: InterventionReport) -> str:
    comparison = report.comparison
    lines = [
        f"interventions: {', '.join(i['kind'] for i in report.interventions) or 'none'}",
        "",
        "intervened logit lens:",
        grid_table(report.intervened),
        "",
        f"{'pos':>4} {'token':<14} {'KL':>8} {'top1':>5} {'dH bits':>8} {'dloss':>8}",
    ]
    for p in comparison.positions:
        loss = "" if p.loss_delta is None else f"{p.loss_delta:8.3f}"
        lines.append(
            f"{p.position:>4} {shorten(p.token, 14):<14} {p.kl:8.4f} {'yes' if p.top1_agree else 'NO':>5} "
            f"{p.entropy_delta:8.3f} {loss:>8}"
        )
    lines.append(f"mean KL {comparison.mean_kl:.4f} nats, top-1 agreement {comparison.top1_agreement:.0%}")
    for name, continuation in report.continuation.items():
        lines.append(f"{name:>10}: {continuation.text!r}")
    if report.baseline.prompt_length is not None:
        at = report.diverges_at
        lines.append("the continuations agree" if at is None else f"the continuations diverge at position {at}")
    return "\n".join(lines)


METRIC_WORDS = {
    "prob": ("p(answer)", "p(answer) with the state restored - corrupted"),
    "logit-diff": ("logit diff", "logit difference with the state restored - corrupted"),
    "kl": ("KL(clean||run)", "KL(clean||corrupted) - KL(clean||restored), nats"),
}


def _grid(trace: CausalTrace, names: list[str], number: str) -> list[str]:
    """One grid of the table: a row per layer, a cell per prompt token, each cell's attribute `number`."""
    header = f"{'layer':>5} | " + " ".join(f"{name:>{TRACE_CELL}}" for name in names)
    lines = [header, "-" * len(header)]
    for label, row in zip(trace.layers, trace.cells):
        lines.append(f"{label:>5} | " + " ".join(f"{getattr(cell, number):>{TRACE_CELL}.3f}" for cell in row))
    return lines


def trace_table(trace: CausalTrace) -> str:
    """Rows are layers, columns prompt tokens (* marks the subject); each cell the indirect effect, and with noise
    samples a second grid of their standard errors."""
    subject = range(*trace.subject_positions) if trace.subject_positions else range(0)
    names = [("*" if i in subject else "") + shorten(t, TRACE_CELL - 1) for i, t in enumerate(trace.tokens)]
    site = f"{trace.site}, window {trace.window}" if trace.site in ("attn", "mlp") else trace.site
    kind = "attribution patching (approx)" if trace.approx else "restoring one state at a time"
    measured, effect_rule = METRIC_WORDS[trace.metric]
    what = (
        "the next-token distribution"
        if trace.metric == "kl"
        else repr(trace.answer) + (f" - {trace.contrast!r}" if trace.contrast is not None else "")
    )
    noise = trace.noise
    corruption = (
        trace.corrupt
        if noise is None
        else (
            f"noise, std {noise['std']:.4g} = {noise['scale']:g} x {noise['base_std']:.4g} (rule {noise['rule']}), "
            f"mean of {trace.samples} sample{'s' * (trace.samples > 1)}"
        )
    )
    corrupted = f"{trace.corrupted['value']:.4f}" + (
        f" ± {trace.corrupted['stderr']:.4f}" if trace.corrupted["stderr"] is not None else ""
    )
    lines = [
        f"causal trace of {what} ({site}; metric {trace.metric}; {kind})",
        f"corruption: {corruption}",
        (f"{measured} clean {trace.clean['value']:.4f}, corrupted {corrupted}; cells: indirect effect = {effect_rule}"),
        "",
    ]
    lines += _grid(trace, names, "indirect_effect")
    if trace.samples > 1:
        lines += ["", f"standard error of each indirect effect over the {trace.samples} noise samples", ""]
        lines += _grid(trace, names, "stderr")
    lines.append("")
    positions = [("last subject token", trace.subject_positions[1] - 1)] if trace.subject_positions else []
    for name, position in [*positions, ("last position", len(trace.tokens) - 1)]:
        peak_row, effect = trace.peak(position)
        lines.append(f"strongest at the {name} ({trace.tokens[position]!r}): row {peak_row}, {effect:.3f}")
    return "\n".join(lines)


def _number(value: float | None, width: int = 8, digits: int = 4) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}.{digits}f}"


def sweep_table(result: SweepResult) -> str:
    """The set average per layer; per-prompt rows are in json, csv and jsonl."""
    kind, rows = result.intervention, list(result.records().dicts())
    follows = kind == "swap-token"
    where = "row" if follows else "layer"  # token-swap patches a grid row, the other sweeps act at a block
    factor = kind == "steer"
    head = (
        f"{where:>5} "
        + (f"{'factor':>7} " if factor else "")
        + f"{'KL':>8} {'top1':>6} {'dH bits':>8} {'dloss':>8} {'acc':>6}"
    )
    head += f" {'donor':>6} {'orig':>6}" if follows else ""
    lines = [f"{kind} sweep, mean over prompts (KL nats, KL(base || intervened))", head, "-" * len(head)]
    for row in (r for r in rows if r["prompt_index"] is None):
        line = (
            f"{row[where]:>5} "
            + (f"{row['factor']:>7g} " if factor else "")
            + f"{_number(row['kl'])} {_number(row['top1_agree'], 6, 2)} "
            f"{_number(row['entropy_delta'], 8, 3)} {_number(row['loss_delta'], 8, 3)} "
            f"{_number(row['accuracy'], 6, 2)}"
        )
        if follows:
            line += f" {_number(row['follows_donor'], 6, 2)} {_number(row['follows_original'], 6, 2)}"
        lines.append(line)
    return "\n".join(lines)


def influence_table(report: InfluenceReport) -> str:
    lines = [
        f"Block Influence (1 - mean cos(in, out)), {report.calibration_tokens} calibration tokens",
        f"{'block':>5} {'BI':>9} {'rank':>5}",
    ]
    rank = {block: r for r, block in enumerate(report.ranking)}
    lines += [f"{b:>5} {value:9.5f} {rank[b]:>5}" for b, value in enumerate(report.bi)]
    lines.append(f"least influential first: {', '.join(map(str, report.ranking))}")
    if report.prune:
        prune = report.prune
        lines += [
            "",
            f"held-out perplexity ({prune.eval_tokens} tokens)",
            f"  baseline                 {prune.perplexity['baseline']:10.3f}",
            f"  lowest BI {str(prune.removed):<14} {prune.perplexity['block_influence']:10.3f}",
            f"  random    {str(prune.random_removed):<14} {prune.perplexity['random']:10.3f}",
            f"  last      {str(prune.last_removed):<14} {prune.perplexity['last']:10.3f}",
        ]
    return "\n".join(lines)


def stages_table(stage_map: StageMap) -> str:
    probed = stage_map.probe is not None
    head = (
        f"{'block':>5} {'dropKL':>7} {'swapKL':>7} {'lensKL':>7} {'H bits':>6} {'attn/mlp':>8} {'mlp norm':>9} "
        f"{'prev5':>5} {'pred/supp':>9}" + (f" {'probe':>7} {'gain':>6}" if probed else "")
    ) + "  stage (heuristic) - evidence"
    lines = [head, "-" * len(head)]
    for b in stage_map.blocks:
        neurons = "-" if b.prediction_neurons is None else f"{b.prediction_neurons}/{b.suppression_neurons}"
        probe = ""
        if probed:
            probe = f" {_percent(b.probe_accuracy)}{'*' if b.probe_rise else ' '} {_percent(b.probe_gain)}"
        lines.append(
            f"{b.block:>5} {_number(b.drop_kl, 7, 3)} {_number(b.swap_kl, 7, 3)} {_number(b.lens_kl, 7, 2)} "
            f"{_number(b.lens_entropy, 6, 2)} {_number(b.attn_mlp_ratio, 8, 3)} {_number(b.mlp_norm, 9, 1)} "
            f"{_number(b.prev5_attention, 5, 2)} {neurons:>9}{probe}  {b.stage} - {b.reason}"
        )
    lines += ["", "pred/supp: the block's prediction and suppression neurons (layerscope neurons)."]
    if stage_map.probe is not None:
        lines.append(
            f'probe: held-out accuracy of the linear probe of "{stage_map.probe["label"]}" at the block\'s output '
            "(layerscope probe); gain: over its shuffled control; *: a significant rise."
        )
    return "\n".join([*lines, stage_map.rule])


def _percent(value: float | None) -> str:
    return f"{'-':>6}" if value is None else f"{value:6.1%}"


def exit_table(result: EarlyExit) -> str:
    positions = sum(map(len, result.stays_from))
    lines = [
        f"early exit over {len(result.stays_from)} prompts, {positions} positions, {result.n_blocks} blocks "
        "(logit lens)",
        f"oracle (exit where the top-1 stays the final top-1): {result.oracle_mean_blocks_skipped:.2f} blocks "
        "skipped on average, same token always",
        "",
        f"{'threshold':>9} {'skipped':>8} {'same top-1':>10}",
    ]
    lines += [f"{t.threshold:>9g} {t.mean_blocks_skipped:8.2f} {t.agreement:10.1%}" for t in result.thresholds]
    return "\n".join(lines)


def patchscope_table(report: PatchscopeReport) -> str:
    target = "same as source" if report.target_layer is None else str(report.target_layer)
    lines = [
        f"target prompt: {report.target_prompt!r}  (placeholder at token {report.placeholder_position}, "
        f"target layer: {target})",
        "",
        grid_table(report.grid),
        "",
        "precision@1 against the model's own next token:",
        f"{'layer':>5} {'patchscope':>10} {'logit lens':>10}",
    ]
    precision = report.precision
    for label, patch, lens in zip(precision.layers, precision.patchscope, precision.logit_lens):
        lines.append(f"{label:>5} {patch:>10.2f} {lens:>10.2f}{'  <- patchscope better' if patch > lens else ''}")
    if report.descriptions is not None:
        lines += ["", "descriptions (greedy, per layer; columns are prompt tokens):"]
        for label, row in zip(report.grid.layers, report.descriptions):
            lines.append(f"{label:>5} | " + " | ".join(shorten(text, 16) for text in row))
    return "\n".join(lines)


def heads_table(scores: HeadScores, show: int) -> str:
    share = f"; share of heads above 0.1: {scores.share_above():.1%}" if scores.kind == "retrieval" else ""
    lines = [
        f"{scores.kind} scores, {scores.model}: {scores.n_blocks} blocks x {scores.n_heads} query heads{share}",
        f"{'layer':>5} {'head':>4} {'kv':>3} {'score':>7}",
    ]
    lines += [f"{h.layer:>5} {h.head:>4} {h.kv_group:>3} {h.score:>7.3f}" for h in scores.top(show)]
    return "\n".join(lines)


def retrieval_table(results: list[NeedleResult], scores: HeadScores, tests: int, span: str, show: int) -> str:
    """Each needle test's answer and recall, then the heads (`tests`: how many there were; fewer ran if
    interrupted)."""
    lines = [f"{'length':>6} {'depth':>5} {'recall':>6}  answer"]
    lines += [
        f"{r.length:>6} {r.depth:>5} {r.recall:>6.2f}  {shorten(r.answer, 60)}"
        f"{'' if r.answered else '  (failed: excluded)'}"
        for r in results
    ]
    stopped = f" (interrupted: {len(results)} of {tests} tests ran)" if len(results) < tests else ""
    lines += [
        "",
        f"answered {scores.meta['answered']} of {len(results)} tests{stopped}; scored span: {span}",
        heads_table(scores, show),
    ]
    return "\n".join(lines)


def activity_table(trace: HeadActivity) -> str:
    lines = [f"{len(trace.heads)} known retrieval heads (score > 0.1)", f"{'step':>4} {'token':<16} active"]
    lines += [
        f"{i:>4} {shorten(step.token, 16):<16} {step.active:>3} {'#' * step.active}"
        for i, step in enumerate(trace.steps)
    ]
    return "\n".join(lines)


def ablation_table(report: AblationReport) -> str:
    lines = [
        f"NIAH accuracy over {report.tests} tests (answered = ROUGE-1 recall > 0.5)",
        "zero = the head's output removed; uniform = the head attends evenly to all visible tokens",
        f"top-{report.k} heads: {', '.join(f'{h.layer}.{h.head}' for h in report.heads)}",
        f"random-{report.k} heads (seed {report.seed}): "
        f"{', '.join(f'{h.layer}.{h.head}' for h in report.random_heads)}",
        "",
    ]
    lines += [f"{name:<22} {accuracy:>6.0%}" for name, accuracy in report.accuracy.items()]
    return "\n".join(lines)


def census_table(census: NeuronCensus, top: int) -> str:
    lines = [
        f"prediction / suppression neurons: kurtosis > {census.min_kurtosis:g}, skew > {census.min_skew:g} / "
        f"< -{census.min_skew:g} (cosines of W_out with the unembedding, Pearson kurtosis)",
        "",
        f"{'block':>5} {'neurons':>8} {'predict':>8} {'suppress':>8}",
    ]
    for b in census.blocks:
        lines.append(f"{b.block:>5} {len(b.kurtosis):>8} {b.prediction:>8} {b.suppression:>8}")
    for kind in ("prediction", "suppression"):
        chosen = census.top(kind, top)
        if chosen:
            lines += ["", f"top {kind} neurons by kurtosis:", f"{'neuron':>10} {'kurtosis':>9} {'skew':>7}  token"]
        for block, neuron in chosen:
            b = census.block(block)
            token = census.token_texts[b.extreme_tokens[neuron]]
            lines.append(
                f"{f'{block}.{neuron}':>10} {b.kurtosis[neuron]:9.1f} {b.skew[neuron]:7.2f}  {shorten(token, 20)}"
            )
    return "\n".join(lines)


def attribution_table(result: LogitAttribution, top: int) -> str:
    what = repr(result.answer) + (f" - {result.contrast!r}" if result.contrast is not None else "")
    lines = [
        f"direct logit attribution of {what} at the last position (before any soft-cap; final norm scale "
        f"{result.norm_scale:.4g} frozen)",
        f"logit {result.logit:.4f} = embedding {result.embedding:.4f} + attention {sum(result.attention):.4f} "
        f"+ MLP {sum(result.mlp):.4f} + bias {result.bias:.4f}",
        "",
        f"{'block':>5} {'attention':>10} {'mlp':>10}  strongest head",
    ]
    for block, (attention, mlp) in enumerate(zip(result.attention, result.mlp)):
        head = max(range(len(result.heads[block])), key=lambda h: abs(result.heads[block][h]))
        lines.append(f"{block:>5} {attention:10.4f} {mlp:10.4f}  {block}.{head} {result.heads[block][head]:.4f}")
    ranked = sorted(
        (
            (abs(value), block, head, value)
            for block, heads in enumerate(result.heads)
            for head, value in enumerate(heads)
        ),
        reverse=True,
    )[:top]
    if ranked:
        lines += ["", f"top {len(ranked)} heads by |contribution|:"]
        lines += [f"{f'{block}.{head}':>7} {value:10.4f}" for _, block, head, value in ranked]
    return "\n".join(lines)


def comparison_table(comparison: LensComparison) -> str:
    width = max(11, len(comparison.lens_name))
    lines = [
        f"mean KL(final || lens) in nats over {comparison.tokens} held-out tokens",
        f"{'layer':>5} {'logit lens':>11} {comparison.lens_name:>{width}}",
        "-" * (18 + width),
    ]
    for layer, logit, fitted in zip(comparison.layers, comparison.logit_lens_kl, comparison.lens_kl):
        lines.append(f"{layer:>5} {logit:>11.3f} {fitted:>{width}.3f}")
    return "\n".join(lines)


def pattern_table(runs: dict[str, AttentionPattern], keys: int) -> str:
    """Per head and run, each query's strongest keys: position, token and weight."""
    sections = []
    for block, head in next(iter(runs.values())).weights:
        for name, pattern in runs.items():
            lines = [
                f"head {block}.{head}, {name}: the {keys} strongest keys of each query (position token weight)",
                f"{'query':>5} {'token':<14} keys",
            ]
            for query, token in enumerate(pattern.tokens):
                strongest = pattern.strongest((block, head), query, keys)
                cells = " | ".join(
                    f"{key} {shorten(pattern.tokens[key], 10)} {weight:.3f}" for key, weight in strongest
                )
                lines.append(f"{query:>5} {shorten(token, 14):<14} {cells}")
            sections.append("\n".join(lines))
    return "\n\n".join(sections)


SIGNIFICANT = 0.2  # accuracy above both the control and the majority share by this much: the table's marked row


def probe_table(report: ProbeReport) -> str:
    first = report.first_row_above(SIGNIFICANT)
    lines = [
        f'linear probe of "{report.label}" at the last token: {report.prompts} prompts, classes '
        f"{', '.join(report.classes)}; held out over {report.folds} folds (mean ± standard error); control: "
        f"shuffled labels; majority class {report.majority:.1%}",
        f"first row {SIGNIFICANT:.0%} above its control and the majority: {first if first else 'none'}",
        "",
        f"{'row':>4} {'accuracy':>15} {'control':>15}",
    ]
    lines += [
        f"{row.row:>4} {row.accuracy:8.1%} ± {row.accuracy_se:4.1%} {row.control:8.1%} ± {row.control_se:4.1%}"
        for row in report.rows
    ]
    return "\n".join(lines)
