"""Every place layerscope reads or writes files: the shipped data, the user's config, the cache.

The shipped themes and sample prompts live in the repository's top-level `themes/` and
`sample_prompts/` folders; a wheel carries copies as `layerscope/data/...` (see setup.py).
An installed wheel is read through `importlib.resources`; a source checkout (editable install)
reads the top-level folders in place. The engine imports this module: no textual or rich here.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from platformdirs import user_cache_dir, user_config_dir

APP_NAME = "layerscope"
DEMO_NAME = "SmolLM2-135M-Instruct"


def _shipped(folder: str) -> Path:
    """The packaged copy of a data folder when there is one, else the source checkout's folder."""
    packaged = resources.files("layerscope") / "data" / folder
    if packaged.is_dir():
        return Path(str(packaged))  # wheels install unzipped, so the resource is a real folder
    return Path(__file__).resolve().parents[1] / folder


SHIPPED_THEMES = _shipped("themes")
SAMPLE_PROMPTS = _shipped("sample_prompts")


def sample_file(name: str) -> Path:
    """A shipped sample file, e.g. `general.txt` (the path may not exist if the data was removed)."""
    return SAMPLE_PROMPTS / name


DEFAULT_HAYSTACK = sample_file("haystack.txt")
DEFAULT_NEEDLES = sample_file("needles.jsonl")


def user_config_folder() -> Path:
    return Path(user_config_dir(APP_NAME))


def user_theme_folder() -> Path:
    return user_config_folder() / "themes"


def user_keymap_path() -> Path:
    return user_config_folder() / "keymap.toml"


def cache_dir() -> Path:
    """The user cache; LAYERSCOPE_CACHE_DIR overrides it."""
    return Path(os.environ.get("LAYERSCOPE_CACHE_DIR") or user_cache_dir(APP_NAME))


def demo_dir() -> Path:
    """The demo model's safetensors folder, once prepared."""
    return cache_dir() / "demo" / DEMO_NAME


def model_path(source: str) -> Path:
    """Where a model source's files are on this machine, without the network: the demo's folder, a hub id's
    cached snapshot, or the path as given (a folder or a .gguf file; it may not exist)."""
    path = Path(source)
    if source == "demo":
        return demo_dir()
    if path.exists() or source.count("/") != 1 or source.startswith((".", "/")):
        return path
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(source, "config.json")
    except ValueError:  # not a hub id after all
        return path
    return Path(cached).parent if isinstance(cached, str) else path
