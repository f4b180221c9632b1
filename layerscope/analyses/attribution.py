"""Direct logit attribution: how much the embedding, each block's attention and MLP, and each attention head
write the answer's logit (or the logit difference answer - contrast) at the last position.

The final norm is linearised with its scale frozen from the clean run, as TransformerLens does: with s the
norm's scale on the last block's output x (`readout.NormForm.scale`), the logit before the soft-cap is

    logit = logit_scale * (u . x / s) + bias,    x = embedding + sum over blocks of (attention + MLP outputs)

where u is the answer's readout direction (`readout.readout_matrix`) and `bias` what the final norm's bias and
the unembedding's bias add (`readout.readout_bias`). So the parts sum to the logit minus `bias` exactly, up to
float error. Gemma's soft-cap comes after: the attribution is of the logit before it. A block's attention and
MLP parts are what they add to the residual stream: the module's output, times Granite's residual multiplier,
or through Gemma 2's and OLMo 2's post-norms (linearised the same way, their scale frozen). A head's part is its
slice of the output projection's input times that projection's columns for the head; what the heads leave of
the attention part is the projection's bias (`head_bias`). Families whose blocks do not add up this way, or
whose attention has no output projection to split by head, are refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from layerscope.analyses.activations import last_logits_only
from layerscope.analyses.readout import NormForm, module_norm_form, norm_form, readout_bias, readout_matrix
from layerscope.arguments import check_ids, check_int, check_lm
from layerscope.errors import LayerscopeError
from layerscope.models.adapter import ModelAdapter
from layerscope.models.hooks import hook_input, hook_output
from layerscope.models.loading import LoadedModel
from layerscope.records import Records

if TYPE_CHECKING:
    import pandas

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_OUTPUT_PROJECTIONS = ("o_proj", "c_proj", "dense", "out_proj")


@dataclass
class LogitAttribution:
    """Each part's direct contribution to `logit` (the answer's logit before any soft-cap, or the difference
    answer - contrast): logit = embedding + sum(attention) + sum(mlp) + bias, and attention[b] =
    sum(heads[b]) + head_bias[b]."""

    model: str
    tokens: list[str]
    token_ids: list[int]
    answer: str
    answer_id: int
    contrast: str | None
    contrast_id: int | None
    logit: float
    bias: float
    embedding: float
    attention: list[float]
    mlp: list[float]
    heads: list[list[float]]
    head_bias: list[float]
    norm_scale: float

    def plot(self) -> Figure:
        """Each block's attention and MLP contribution, and each head's: a matplotlib Figure (layerscope[plot])."""
        from layerscope.figures.parts import attribution_figure

        return attribution_figure(self)

    def to_dict(self) -> dict:
        return dict(vars(self))

    def records(self) -> Records:
        def parts() -> Iterator[tuple]:
            yield "embedding", None, None, self.embedding
            for block, (attention, mlp) in enumerate(zip(self.attention, self.mlp)):
                yield "attention", block, None, attention
                yield from (("head", block, head, value) for head, value in enumerate(self.heads[block]))
                yield "head_bias", block, None, self.head_bias[block]
                yield "mlp", block, None, mlp
            yield "bias", None, None, self.bias

        return Records.of(("part", "block", "head", "contribution"), parts())

    def to_pandas(self) -> pandas.DataFrame:
        return self.records().to_pandas()


def token_id(lm: LoadedModel, text: str, name: str) -> int:
    """The one token `text` is, as it follows a prompt (give ' Paris' with its space); more is refused."""
    ids = lm.tokenizer(text, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise LayerscopeError(f"{name}={text!r} is {len(ids)} tokens ({lm.token_texts(ids)}); give exactly one.")
    return int(ids[0])


def attention_projection(adapter: ModelAdapter, block: int) -> nn.Module:
    """The attention's output projection, whose input holds the heads' outputs side by side: the attention
    module itself where the adapter names the projection (Bloom), else its child o_proj, c_proj, dense or
    out_proj. Refused where there is none that maps n_heads equal slices to the hidden size."""
    attention = adapter.attention(block)
    found = (
        attention
        if _maps_to(attention, adapter)
        else next(
            (
                getattr(attention, name)
                for name in _OUTPUT_PROJECTIONS
                if _maps_to(getattr(attention, name, None), adapter)
            ),
            None,
        )
    )
    if found is None:
        raise LayerscopeError(
            f"The attention of a {adapter.family} model ({type(attention).__name__}) has no output "
            "projection that splits by head, so heads cannot be attributed."
        )
    return found


def _maps_to(module: nn.Module | None, adapter: ModelAdapter) -> bool:
    hidden = int(adapter.config.hidden_size)
    if isinstance(module, Conv1D):
        size_in, size_out = module.weight.shape
    elif isinstance(module, nn.Linear):
        size_in, size_out = module.in_features, module.out_features
    else:
        return False
    return size_out == hidden and size_in % adapter.n_heads == 0


def _columns(projection: nn.Module) -> torch.Tensor:
    """(hidden, heads x head_dim) float32: the projection's matrix, whatever its layout."""
    weight = projection.weight.float()
    return weight.T if isinstance(projection, Conv1D) else weight


def _post_norms(adapter: ModelAdapter, block: int) -> tuple[nn.Module, nn.Module] | None:
    """The norms Gemma 2/3 and OLMo 2/3 apply to the attention and MLP outputs before adding them (a block with a
    `post_feedforward_layernorm`; Llama's `post_attention_layernorm` alone is the MLP's input norm)."""
    layer = adapter.blocks[block]
    if not hasattr(layer, "post_feedforward_layernorm"):
        return None
    return layer.post_attention_layernorm, layer.post_feedforward_layernorm


def _last(hidden: torch.Tensor) -> torch.Tensor:
    """The last position's state, of a (1, tokens, hidden) tensor or a flattened (tokens, hidden) one (OPT's MLP),
    copied: a block may add to the tensor in place (Falcon)."""
    return hidden.reshape(-1, hidden.shape[-1])[-1].detach().to(torch.float32, copy=True)


@torch.inference_mode()
def logit_attribution(
    lm: LoadedModel, input_ids: torch.Tensor, answer: int | None = None, contrast: int | None = None
) -> LogitAttribution:
    """The direct contributions to the answer's logit (default answer: the model's own next token), or to the
    logit difference answer - contrast, at the last position of `input_ids` (1, tokens): see the module
    docstring. `answer` and `contrast` are token ids."""
    lm = check_lm(lm)
    adapter = lm.adapter
    ids = check_ids(lm, input_ids)
    vocab = adapter.unembed.weight.shape[0]
    if answer is not None:
        check_int(answer, "answer", 0, vocab - 1)
    if contrast is not None:
        check_int(contrast, "contrast", 0, vocab - 1)
    projections = [attention_projection(adapter, block) for block in range(adapter.n_blocks)]  # refuses first
    captured: dict[tuple[str, int], torch.Tensor] = {}

    def keep(name: str, block: int) -> Callable[[torch.Tensor], None]:
        def store(hidden: torch.Tensor) -> None:
            captured[name, block] = _last(hidden)

        return store

    with ExitStack() as stack:
        for block in range(adapter.n_blocks):
            hook_input(stack, adapter.blocks[block], keep("in", block))
            hook_output(stack, adapter.blocks[block], keep("out", block))
            hook_input(stack, projections[block], keep("heads", block))
            post = _post_norms(adapter, block)
            hook_output(stack, post[0] if post else adapter.attention(block), keep("attention", block))
            hook_output(stack, post[1] if post else adapter.mlp(block), keep("mlp", block))
            if post:
                hook_output(stack, adapter.attention(block), keep("attention_raw", block))
        logits = adapter.model(input_ids=ids.to(adapter.input_device), use_cache=False, **last_logits_only(lm)).logits
    final = logits[0, -1].float()
    answer = int(final.argmax()) if answer is None else answer
    form = norm_form(adapter)
    device = form.gain.device
    last = captured["out", adapter.n_blocks - 1].to(device)
    scale = float(form.scale(adapter.final_norm, last)[0])
    readout = readout_matrix(adapter, form)
    biases = readout_bias(adapter, form)
    direction = readout[answer] - (readout[contrast] if contrast is not None else 0)
    bias = biases[answer] - (biases[contrast] if contrast is not None else 0)

    def contribution(vector: torch.Tensor) -> float:
        return float(adapter.logit_scale * (direction @ vector.to(device)) / scale)

    multiplier = float(getattr(adapter.config, "residual_multiplier", None) or 1.0)
    tolerance = 1e-5 if adapter.unembed.weight.dtype == torch.float32 else 2e-2  # of the residual's size
    attention, mlp, heads, head_bias = [], [], [], []
    for block in range(adapter.n_blocks):
        attention_part = captured["attention", block] * multiplier
        mlp_part = captured["mlp", block] * multiplier
        added = captured["out", block] - captured["in", block]
        size = float(captured["out", block].abs().max()) + float(added.abs().max())
        if not float((attention_part + mlp_part - added).abs().max()) <= tolerance * size:
            raise LayerscopeError(
                f"The blocks of a {adapter.family} model do not add their attention and MLP "
                "outputs to the residual stream as they are, so they cannot be attributed."
            )
        per_head = _head_outputs(adapter, projections[block], captured["heads", block], block, captured)
        attention.append(contribution(attention_part))
        mlp.append(contribution(mlp_part))
        heads.append([contribution(head * multiplier) for head in per_head])
        head_bias.append(attention[-1] - sum(heads[-1]))
    ids_list = ids[0].tolist()
    texts = lm.token_texts([answer] + ([contrast] if contrast is not None else []))
    logit = final[answer] - (final[contrast] if contrast is not None else 0)
    return LogitAttribution(
        lm.name,
        lm.token_texts(ids_list),
        ids_list,
        texts[0],
        answer,
        texts[1] if contrast is not None else None,
        contrast,
        float(_before_softcap(adapter, logit, final, answer, contrast)),
        float(adapter.logit_scale * bias),
        contribution(captured["in", 0]),
        attention,
        mlp,
        heads,
        head_bias,
        scale,
    )


def _head_outputs(
    adapter: ModelAdapter,
    projection: nn.Module,
    inputs: torch.Tensor,
    block: int,
    captured: dict[tuple[str, int], torch.Tensor],
) -> list[torch.Tensor]:
    """Each head's part of what the attention adds to the residual stream (without the projection's bias);
    through a post-norm linearised with the scale of the whole attention output."""
    columns = _columns(projection).to(inputs.device)
    size = columns.shape[1] // adapter.n_heads
    outputs = [
        columns[:, head * size : (head + 1) * size] @ inputs[head * size : (head + 1) * size]
        for head in range(adapter.n_heads)
    ]
    post = _post_norms(adapter, block)
    if post is None:
        return outputs
    raw = captured["attention_raw", block]
    form: NormForm = module_norm_form(post[0], len(raw), raw.device, f"Block {block}'s post-attention norm")
    scale = form.scale(post[0], raw)
    return [form.gain * form.project(output) / scale for output in outputs]


def _before_softcap(
    adapter: ModelAdapter, logit: torch.Tensor, final: torch.Tensor, answer: int, contrast: int | None
) -> torch.Tensor:
    """The logit (difference) the parts add up to: the model's, with Gemma's soft-cap undone."""
    cap = adapter.logit_softcap
    if not cap:
        return logit
    uncapped = cap * torch.atanh((final / cap).clamp(-1 + 1e-7, 1 - 1e-7))
    return uncapped[answer] - (uncapped[contrast] if contrast is not None else 0)
