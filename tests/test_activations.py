"""`capture` against plain forward hooks written here, Hugging Face's hidden states and the residual sum."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch

import layerscope as ls
from layerscope.analyses.activations import Activations, capture, site_names
from layerscope.errors import LayerscopeError
from tests.tiny import tiny_model
from tests.tolerance import model_delta

TEXTS = ["the cat sat on the mat", "a dog", "one two three four five six seven eight nine"]
FAMILIES = ("llama", "gemma2", "qwen2_moe", "gpt2", "gpt_neox", "bloom", "opt", "falcon", "phi", "mpt")


def hooked_reference(lm, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every site of one unpadded prompt (1, T), with hooks written out by hand."""
    seen: dict[str, torch.Tensor] = {}

    def first(output):
        return output[0] if isinstance(output, tuple) else output

    def block_input(name):
        def hook(module, args, kwargs):
            seen[name] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

        return hook

    def module_output(name):
        def hook(module, args, output):
            seen[name] = first(output).detach().clone().reshape(*ids.shape, -1)  # OPT's fc2: (T, hidden)

        return hook

    handles = []
    blocks = lm.adapter.blocks
    for b, block in enumerate(blocks):
        handles.append(block.register_forward_pre_hook(block_input(f"resid.{b}"), with_kwargs=True))
        handles.append(lm.adapter.attention(b).register_forward_hook(module_output(f"attn.{b}")))
        handles.append(lm.adapter.mlp(b).register_forward_hook(module_output(f"mlp.{b}")))
    handles.append(blocks[-1].register_forward_hook(module_output(f"resid.{len(blocks)}")))
    try:
        with torch.no_grad():
            lm.model(input_ids=ids, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return seen


@pytest.mark.parametrize("family", FAMILIES)
def test_every_site_matches_hand_hooks_alone_and_in_a_batch(family):
    lm = tiny_model(family)
    batch = lm.encode(TEXTS)
    assert batch.lengths == [6, 2, 9] and batch.ids.shape == (3, 9)
    captured = capture(lm, batch, ["resid", "attn", "mlp"])
    assert len(captured.sites) == 3 * lm.n_blocks + 1
    for index in range(len(TEXTS)):
        reference = hooked_reference(lm, lm.encode(TEXTS[index]))
        alone = capture(lm, TEXTS[index], ["resid", "attn", "mlp"]).prompt(0)
        batched = captured.prompt(index)
        assert set(reference) == set(alone) == set(batched)
        for site, expected in reference.items():
            torch.testing.assert_close(alone[site], expected[0], rtol=0, atol=1e-6)
            torch.testing.assert_close(batched[site], expected[0], rtol=0, atol=1e-5)


def test_demo_sites_match_hand_hooks_alone_and_in_a_batch(demo_lm):
    texts = ["The capital of France is", "Hi", "One, two, three, four"]
    sites = ["resid.0", "resid.17", "resid.30", "attn.0", "attn.29", "mlp.5", "mlp.29"]
    captured = ls.capture(demo_lm, texts, sites)
    assert list(captured.sites) == ["resid.0", "resid.17", "resid.30", "attn.0", "attn.29", "mlp.5", "mlp.29"]
    for index, text in enumerate(texts):
        reference = hooked_reference(demo_lm, demo_lm.encode(text))
        for site, values in captured.prompt(index).items():
            # fp32 noise scales with the site's largest value (the residual stream holds outliers of ~2e4)
            expected = reference[site][0]
            atol = model_delta(demo_lm, float(expected.abs().max()))
            torch.testing.assert_close(values, expected, rtol=0, atol=atol)


def test_residual_rows_are_hf_hidden_states(tiny_lm):
    """Rows 0..L-1 are output_hidden_states; HF's last one is after the final norm, row L before it."""
    ids = tiny_lm.encode("the cat sat on the mat a dog ran to the park")
    captured = capture(tiny_lm, ids)
    with torch.no_grad():
        hf = tiny_lm.model(ids, output_hidden_states=True).hidden_states
    rows = captured.stacked("resid")
    assert rows.shape == (tiny_lm.n_blocks + 1, 1, ids.shape[1], tiny_lm.model.config.get_text_config().hidden_size)
    for row in range(tiny_lm.n_blocks):
        torch.testing.assert_close(rows[row], hf[row], rtol=0, atol=1e-6)
    torch.testing.assert_close(
        tiny_lm.adapter.after_norm(tiny_lm.adapter.final_norm(rows[-1])), hf[-1], rtol=0, atol=1e-5
    )


def test_demo_block_adds_its_attention_and_mlp(demo_lm):
    """Llama blocks are x + attn(norm x) + mlp(norm(...)): each captured row is the previous plus both outputs."""
    captured = ls.capture(demo_lm, ["The capital of France is", "Paris"], ["resid", "attn", "mlp"])
    with torch.no_grad():
        hf = demo_lm.model(
            **{"input_ids": captured.input_ids, "attention_mask": captured.attention_mask}, output_hidden_states=True
        ).hidden_states
    for block in range(demo_lm.n_blocks):
        total = captured[f"resid.{block}"] + captured[f"attn.{block}"] + captured[f"mlp.{block}"]
        torch.testing.assert_close(captured[f"resid.{block + 1}"], total, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(captured[f"resid.{block}"], hf[block], rtol=0, atol=1e-5)


def test_only_the_requested_sites_are_kept_and_the_hooks_removed(tiny_lm):
    def hook_count():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in tiny_lm.model.modules())

    before = hook_count()
    captured = capture(tiny_lm, "the cat", ["mlp.1", "resid.-1", "resid.0", "attn.0"])
    assert list(captured.sites) == ["resid.0", f"resid.{tiny_lm.n_blocks}", "attn.0", "mlp.1"]
    assert hook_count() == before


def test_save_load_and_export(tmp_path, tiny_lm):
    captured = capture(tiny_lm, ["the cat sat", "a dog"], ["resid.2", "mlp"])
    path = tmp_path / "acts.safetensors"
    captured.save(path)
    plain = safetensors.torch.load_file(path)  # a plain safetensors file: no pickle
    assert set(plain) == {"input_ids", "attention_mask", "resid.2", *(f"mlp.{b}" for b in range(tiny_lm.n_blocks))}
    loaded = Activations.load(path)
    assert loaded.model == captured.model and list(loaded.sites) == list(captured.sites)
    for name, values in captured.to_dict().items():
        torch.testing.assert_close(loaded.to_dict()[name], values, rtol=0, atol=0)
    half = captured.to("cpu", torch.float16)
    assert half["resid.2"].dtype == torch.float16 and half.input_ids.dtype == captured.input_ids.dtype
    assert captured.lengths == [3, 2]


@pytest.mark.parametrize(
    "sites, message",
    [
        ("embed", "Unknown site"),
        ("resid.x", "not a whole number"),
        (["attn.4"], "out of range"),
        (["resid.5"], "out of range"),
        ([], "No sites"),
    ],
)
def test_bad_sites(sites, message):
    with pytest.raises(LayerscopeError, match=message):
        site_names(sites, n_blocks=4)


def test_a_site_that_does_not_run_is_named(monkeypatch):
    lm = tiny_model("llama")
    monkeypatch.setattr(lm.adapter, "mlp", lambda block: torch.nn.Identity())  # a module the model never calls
    with pytest.raises(LayerscopeError, match="mlp.1, mlp.2 did not run"):
        capture(lm, "the cat", ["resid.1", "mlp.1", "mlp.2"])


def test_bad_inputs(tmp_path, tiny_lm):
    with pytest.raises(LayerscopeError, match="empty"):
        capture(tiny_lm, [])
    with pytest.raises(LayerscopeError, match="not captured"):
        capture(tiny_lm, "the cat", "resid.1")["mlp.0"]
    not_ours = tmp_path / "other.safetensors"
    safetensors.torch.save_file({"x": torch.zeros(2)}, not_ours)
    with pytest.raises(LayerscopeError, match="not an activations file"):
        Activations.load(not_ours)
    for site in ("resid.²", "resid.٣", "resid.1_0"):  # int() takes the last two
        with pytest.raises(LayerscopeError, match="is not a whole number"):
            capture(tiny_lm, "the cat", site)


def test_an_activations_file_cut_short_or_of_other_tensors_is_one_error_naming_it(tmp_path, tiny_lm):
    path = tmp_path / "acts.safetensors"
    capture(tiny_lm, "the cat sat", ["resid.1", "mlp.0"]).save(path)
    whole = path.read_bytes()
    for length in (0, 9, len(whole) // 2, len(whole) - 1):
        path.write_bytes(whole[:length])
        with pytest.raises(LayerscopeError, match=f"The activations file '{path}' cannot be read"):
            Activations.load(path)
    path.write_bytes(whole)
    tensors = safetensors.torch.load_file(path)
    with safetensors.safe_open(str(path), "pt") as file:
        metadata = file.metadata()
    for broken in ({k: v for k, v in tensors.items() if k != "input_ids"}, {**tensors, "resid.x": torch.zeros(1)}):
        safetensors.torch.save_file(broken, path, metadata)
        with pytest.raises(LayerscopeError, match="not an activations file"):
            Activations.load(path)


def test_package_names_are_lazy_listed_and_seen_by_type_checkers():
    """`dir(layerscope)` lists every export; the TYPE_CHECKING imports name exactly the lazy exports."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(ls))
    guarded = next(node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    imported = {alias.name: node.module for node in guarded.body for alias in node.names}
    assert imported == ls._EXPORTS
    assert set(ls.__all__) <= set(dir(ls))
    assert all(getattr(ls, name) is not None for name in ls.__all__)


def test_the_old_name_trace_is_capture_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="use layerscope.capture"):
        old = ls.trace
    assert old is ls.capture and "trace" not in ls.__all__
    with pytest.raises(AttributeError, match="no attribute 'tracer'"):
        _ = ls.tracer
