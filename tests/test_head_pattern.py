"""A head's attention pattern (analyses.heads.attention_pattern) equals transformers' eager `output_attentions`."""

from __future__ import annotations

import pytest
import torch

from layerscope.analyses.heads import attention_pattern
from layerscope.errors import LayerscopeError
from layerscope.interventions import DropBlocks, MaskHeads
from tests.tiny import random_ids, tiny_model

HEADS = [(0, 0), (1, 3), (3, 1)]


def eager_attentions(family: str, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The same tiny model (same seed), run by transformers itself with eager attention."""
    lm = tiny_model(family)
    lm.model.set_attn_implementation("eager")
    with torch.no_grad():
        return lm.model(ids, output_attentions=True, use_cache=False).attentions


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2", "qwen2"])
def test_pattern_equals_eager_output_attentions(family):
    ids = random_ids(11)
    pattern = attention_pattern(tiny_model(family), ids, HEADS)
    want = eager_attentions(family, ids)
    assert list(pattern.weights) == HEADS and pattern.token_ids == ids[0].tolist()
    for block, head in HEADS:
        torch.testing.assert_close(torch.tensor(pattern.weights[block, head]), want[block][0, head].float(),
                                   atol=1e-5, rtol=0)
    strongest = pattern.strongest((1, 3), 10, k=3)
    row = want[1][0, 3, 10]
    assert [key for key, _ in strongest] == row.topk(3).indices.tolist()


def test_with_interventions():
    """Dropping block 0 changes what block 1's heads see, as in a model run without block 0; the dropped block's
    own heads still see their input (their output is what the drop discards); a head mask acts on the output,
    not on the pattern the head computes."""
    ids = random_ids(9)
    lm = tiny_model("llama")
    dropped = attention_pattern(lm, ids, [(0, 1), (1, 2)], [DropBlocks((0,))])
    assert dropped.weights[0, 1] == attention_pattern(lm, ids, [(0, 1)]).weights[0, 1]
    reference = tiny_model("llama")
    reference.model.set_attn_implementation("eager")
    reference.model.model.layers = torch.nn.ModuleList(list(reference.model.model.layers)[1:])
    for index, layer in enumerate(reference.model.model.layers):
        layer.self_attn.layer_idx = index
    with torch.no_grad():
        want = reference.model(ids, output_attentions=True, use_cache=False).attentions[0][0, 2]
    torch.testing.assert_close(torch.tensor(dropped.weights[1, 2]), want.float(), atol=1e-5, rtol=0)
    masked = attention_pattern(lm, ids, [(2, 0)], [MaskHeads(((2, 0),), "zero")])
    assert masked.weights == attention_pattern(lm, ids, [(2, 0)]).weights


def test_bad_heads_and_families_say_so():
    with pytest.raises(LayerscopeError, match="Head 9.0 is outside"):
        attention_pattern(tiny_model("llama"), random_ids(5), [(9, 0)])
    with pytest.raises(LayerscopeError, match="not available for bloom"):
        attention_pattern(tiny_model("bloom"), random_ids(5), [(0, 0)])
