"""Shared fixtures: one loaded demo model per test session, tiny models per family."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub

import pytest

from tests.tiny import FAMILIES, tiny_model


@pytest.fixture(scope="session")
def demo_lm():
    """SmolLM2-135M-Instruct on the CPU, fetched and cached on first use."""
    from layerscope.models.loading import load_model

    return load_model("demo", device="cpu")


@pytest.fixture(scope="session", params=FAMILIES)
def tiny_lm(request):
    return tiny_model(request.param)
