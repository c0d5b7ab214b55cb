"""Versioned prompt and template files (package data). Their hashes are part of the transform's fingerprint."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from importlib import resources

PROMPT_FILES = (
    "lite_templates.json",
    "inspect_v1.txt",
    "repair_v1.txt",
    "instruct_v1.txt",
    "target_caption_v1.txt",
    "box_formats.json",
    "grounding_queries.json",
    # the two-pass Stage 1 of the `paper` preset (vlm.passes = 2)
    "flag_v1.txt",
    "caption_v1.txt",
    "caption_repair_v1.txt",
    "class_context_v1.txt",
)
# prompts of the evaluation suite: their hashes go into the report, not into the transform's fingerprint (they do
# not change what the transform writes)
EVAL_PROMPT_FILES = ("vlm_score_v1.txt", "demographics_v1.txt")


def read_prompt(name: str) -> bytes:
    return resources.files(__name__).joinpath(name).read_bytes()


@lru_cache(maxsize=None)
def load_text(name: str) -> str:
    return read_prompt(name).decode("utf-8")


@lru_cache(maxsize=None)
def load_json(name: str) -> dict:
    return json.loads(read_prompt(name))


def prompt_sha256(name: str) -> str:
    return hashlib.sha256(read_prompt(name)).hexdigest()


def prompts_digest(folder=None) -> str:
    """One sha256 over every prompt/template file, in a fixed order (``folder``: another copy of them)."""
    from pathlib import Path

    h = hashlib.sha256()
    for name in PROMPT_FILES:
        content = (Path(folder) / name).read_bytes() if folder is not None else read_prompt(name)
        h.update(name.encode() + b"\0" + content + b"\0")
    return h.hexdigest()
