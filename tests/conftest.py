"""Shared fixtures: one loaded demo model per test session, tiny models per family."""

from __future__ import annotations

import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub

import pytest

from tests.tiny import FAMILIES, tiny_model

pytest_plugins = ["tests.studies"]  # its fixtures (tiny_dir, cli_demo) are every test module's


def pytest_report_header(config):
    """The versions a run tested (also in `-q` runs, by `pytest_sessionstart`)."""
    return _versions()


def _versions() -> str:
    from importlib.metadata import version

    return "layerscope tested with " + ", ".join(
        f"{name} {version(name)}" for name in ("torch", "transformers", "textual", "typer")
    )


def pytest_sessionstart(session):
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and session.config.get_verbosity() < 0:
        reporter.write_line(_versions())


class _Deprecations(logging.Handler):
    """transformers logs some deprecations (`warning_once`) instead of warning: collected for the autouse
    fixture below, which fails the test that caused one."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "deprecated" in message.lower():
            self.messages.append(message)


@pytest.fixture(autouse=True)
def no_logged_deprecations():
    handler = _Deprecations()
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    yield
    logger.removeHandler(handler)
    assert not handler.messages, f"transformers logged a deprecation: {handler.messages}"


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
