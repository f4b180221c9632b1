"""Shared fixtures: one loaded demo model per test session, tiny models per family."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub

import pytest

from tests.tiny import FAMILIES, tiny_model


def pytest_collection_modifyitems(items):
    """Every test that needs the demo model, directly or through another fixture, carries the `demo`
    marker, so `pytest -m "not demo"` is a fast suite that needs no download."""
    for item in items:
        if "demo_lm" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.demo)


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """The models here are small: on a 2-core machine one intra-op thread is as fast as two (measured on
    the whole suite), stays steady when another process shares the cores, and leaves a core for the
    TUI's event loop."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def demo_lm():
    """SmolLM2-135M-Instruct on the CPU, fetched and cached on first use."""
    from layerscope.models.loading import load_model

    return load_model("demo", device="cpu")


@pytest.fixture(scope="session", params=FAMILIES)
def tiny_lm(request):
    return tiny_model(request.param)


@pytest.fixture
def cli_demo_lm(demo_lm, monkeypatch):
    """CLI commands given `--model demo` (without --bos) get the session's demo model instead of loading their
    own; any other model goes through the real loader. Restored after the test."""
    from layerscope.cli.common import ModelOptions

    real_load = ModelOptions.load

    def load(options: ModelOptions):
        return demo_lm if options.model == "demo" and not options.bos else real_load(options)

    monkeypatch.setattr(ModelOptions, "load", load)
    return demo_lm
