"""Sphinx configuration for the taskservice documentation."""

import re
from pathlib import Path

# Read the version without importing taskservice (and so Twisted).
_VERSION_FILE = Path(__file__).resolve().parent.parent / "taskservice" / "_version.py"
_match = re.search(
    r"""^__version__\s*=\s*["']([^"']+)["']""",
    _VERSION_FILE.read_text(encoding="utf-8"),
    re.MULTILINE,
)
if _match is None:
    raise RuntimeError(f"no __version__ in {_VERSION_FILE}")

project = "taskservice"
author = "the taskservice maintainers"
copyright = "the taskservice maintainers"
version = release = _match.group(1)

extensions: list[str] = []
templates_path: list[str] = []
exclude_patterns = ["_build"]
root_doc = "index"
language = "en"
highlight_language = "none"
pygments_style = "sphinx"

html_theme = "alabaster"
html_static_path: list[str] = []
html_theme_options = {
    "description": "Run heavy work in worker processes, called over JSON-RPC lines.",
    "fixed_sidebar": True,
}
