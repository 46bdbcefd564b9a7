"""Where finetrace keeps what it builds once and reuses (the organism zoo)."""

import os
from pathlib import Path

import platformdirs


def cache_dir() -> Path:
    """The cache root: `$FINETRACE_CACHE` if set, else the user's cache directory."""
    override = os.environ.get("FINETRACE_CACHE")
    return Path(override) if override else Path(platformdirs.user_cache_dir("finetrace"))
