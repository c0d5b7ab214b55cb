"""VLM judge metrics: VLMScore (the paper's 0-100 unlinkability rubric, original and anonymized side by side).

The judge is any ``transformers`` image-text-to-text chat model (Hub id with a pinned revision, or a local
folder), run through the project's ``ChatGenerator`` (or its vLLM twin): batched, greedy, loaded once and shared with the race
question of the demographics metric. No VLM ships in a package, so offline the figures are ``unavailable``
unless a local model is given. Answers are parsed robustly; an answer without a usable score is counted as
invalid and reported, never guessed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np

from ..config import _check, check_chat_backend
from ..inspection.parsing import AnswerError, extract_json_object
from .base import Pair, PairMetric, first_line, hub_model
from .stats import mean_figure, ratio_figure

SCORE_PROMPT = "vlm_score_v1.txt"
DTYPES = ("auto", "bfloat16", "float16", "float32")
NO_JUDGE = "no VLM judge configured (no package ships one offline): pass --vlm-model ID_OR_PATH (a local folder offline)"
_LABELLED = re.compile(r"ANONYMI[SZ]ATION[ _]?SCORE\W{0,4}?\s*(-?\d+(?:\.\d+)?)", re.I)
_BARE = re.compile(r"^\s*\**\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*100)?\s*\.?\s*\**\s*$")
_SCORE_KEYS = ("anonymization_score", "anonymisation_score", "score")
INVALID_EXAMPLES = 3  # raw invalid answers kept in the report (truncated)


@dataclass
class VLMJudgeConfig:
    """The VLM that judges pairs (VLMScore) and names apparent race (demographics). Validates itself."""

    model: str  # Hub id (pin `revision`) or a local folder saved with save_pretrained; the paper: InternVL3.5-8B
    revision: str | None = None
    dtype: str = "auto"  # bfloat16 / float16 on a GPU, float32 on the CPU
    device: str | None = None  # None: the first GPU when there is one, else the CPU
    batch_size: int = 4  # conversations per generate call
    max_side: int = 448  # each image is shown with its longer side at most this (aspect kept)
    min_side: int = 28
    score_max_new_tokens: int = 24
    race_max_new_tokens: int = 96
    trust_remote_code: bool = False
    # "transformers" or "vllm" (the same prompts and parsing on a vLLM engine; see VLLMChatGenerator)
    backend: str = "transformers"
    vllm_options: dict = field(default_factory=dict)  # extra vllm.LLM arguments, with backend "vllm" only

    def __post_init__(self) -> None:
        check_chat_backend("judge", self.backend, self.vllm_options)
        _check(isinstance(self.model, str) and bool(self.model.strip()), "judge.model", self.model, "a Hub model id or a local folder")
        _check(self.dtype in DTYPES, "judge.dtype", self.dtype, f"one of {DTYPES}")
        _check(self.device is None or (isinstance(self.device, str) and bool(self.device)), "judge.device", self.device, "None, 'cpu' or 'cuda:N'")
        for name in ("batch_size", "score_max_new_tokens", "race_max_new_tokens"):
            _check(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, f"judge.{name}", getattr(self, name), "an int >= 1")
        _check(isinstance(self.max_side, int) and isinstance(self.min_side, int) and 1 <= self.min_side <= self.max_side, "judge.max_side / judge.min_side", (self.max_side, self.min_side), "ints with 1 <= min_side <= max_side")


class Judge:
    """The judge VLM, loaded on first use, once, and shared by the metrics that ask it."""

    def __init__(self, config: VLMJudgeConfig | None):
        self.config = config
        self._generator = None
        self.error: str | None = None if config else NO_JUDGE
        if config is None:
            self.model = "no VLM judge"
        elif os.path.isdir(config.model):
            self.model = f"{config.model} (local folder)"
        else:
            self.model = hub_model(config.model, config.revision)

    def generator(self):
        """The ChatGenerator, or None with ``self.error`` saying why."""
        if self._generator is None and self.error is None:
            from ..inspection.vlm import ChatGenerator, VLLMChatGenerator, pick_device

            cfg = self.config
            try:
                if cfg.backend == "vllm":
                    # VLMScore shows the original and the anonymized image in one turn
                    self._generator = VLLMChatGenerator(cfg.model, cfg.revision, cfg.dtype, cfg.device or pick_device(), True, cfg.trust_remote_code, cfg.vllm_options, images_per_prompt=2)
                else:
                    self._generator = ChatGenerator(cfg.model, cfg.revision, cfg.dtype, cfg.device or pick_device(), vision=True, trust_remote_code=cfg.trust_remote_code)
            except (OSError, ValueError, ImportError) as exc:  # not on disk / offline, unknown architecture, missing extra
                self.error = f"VLM {cfg.model!r} could not be loaded ({first_line(exc)})"
        return self._generator

    def images(self, *arrays):
        from PIL import Image

        from ..inspection.vlm import fit_image

        return [fit_image(Image.fromarray(a), self.config.max_side, self.config.min_side) for a in arrays]

    def ask(self, conversations: list[list[dict]], max_new_tokens: int) -> list[str]:
        out: list[str] = []
        for start in range(0, len(conversations), self.config.batch_size):
            out += self._generator.generate(conversations[start : start + self.config.batch_size], max_new_tokens)
        return out


def parse_score(text: str) -> tuple[float | None, str | None]:
    """(score, None) from ``ANONYMIZATION_SCORE: <n>``, a JSON object with a score field, or a bare number; (None,
    why) for anything else, for several different scores, and for a score outside 0-100."""
    if not isinstance(text, str) or not text.strip():
        return None, "empty answer"
    labelled = {float(v) for v in _LABELLED.findall(text)}
    if len(labelled) > 1:
        return None, f"several different scores {sorted(labelled)}"
    if labelled:
        value = labelled.pop()
    elif _BARE.match(text):
        value = float(_BARE.match(text).group(1))
    else:
        try:
            data = extract_json_object(text)
        except AnswerError as err:
            return None, f"no ANONYMIZATION_SCORE line, JSON score or bare number ({err})"
        key = next((k for k in data if isinstance(k, str) and k.strip().lower().replace(" ", "_") in _SCORE_KEYS), None)
        if key is None:
            return None, f"JSON without a score field (keys {sorted(map(str, data))})"
        raw = data[key]
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            return None, f"score {raw!r} is not a number"
        try:
            value = float(raw)
        except ValueError:
            return None, f"score {raw!r} is not a number"
    if not np.isfinite(value) or not 0.0 <= value <= 100.0:
        return None, f"score {value:g} out of range 0-100"
    return value, None


class VLMScoreMetric(PairMetric):
    name = "vlm_score"
    figures = {
        "vlm_score": "mean unlinkability score (0-100, higher is better) a VLM judge gives each flagged pair shown side by side (original first), with the paper's rubric (prompts/vlm_score_v1.txt), over valid answers",
        "vlm_score_invalid_share": "share of the judged (flagged) pairs whose answer held no usable score (no score, several scores, out of 0-100): counted, never guessed",
    }

    def __init__(self, judge: Judge) -> None:
        from ..prompts import load_text, prompt_sha256

        super().__init__()
        self.judge = judge
        self.prompt = load_text(SCORE_PROMPT)
        self.model = f"{judge.model}, prompt {SCORE_PROMPT} (sha256 {prompt_sha256(SCORE_PROMPT)[:16]})"
        self.models = {"vlm judge": judge.model} if judge.config else {}
        if judge.generator() is None:
            self.unavailable = judge.error
        self.per_pair = {"vlm_score": []}
        self.invalid: list[tuple[int, str, str]] = []  # row, why, raw answer
        self.pending: list[tuple[int, list]] = []  # (row, conversation) not yet asked

    def add(self, pairs: list[Pair]) -> None:
        # conversations wait until a whole generate batch is there (pairs arrive in smaller chunks)
        self.pending += [(p.row, self.conversation(*self.judge.images(p.original, p.anonymized))) for p in pairs if p.flagged]
        if len(self.pending) >= self.judge.config.batch_size:
            self._flush()

    def _flush(self) -> None:
        answers = self.judge.ask([conv for _, conv in self.pending], self.judge.config.score_max_new_tokens)
        for (row, _), answer in zip(self.pending, answers):
            self.record(row, answer)
        self.pending = []

    def conversation(self, original, anonymized) -> list[dict]:
        """One user turn: both images, original first, then the rubric."""
        content = [{"type": "image", "image": original}, {"type": "image", "image": anonymized}, {"type": "text", "text": self.prompt}]
        return [{"role": "user", "content": content}]

    def record(self, row: int, answer: str) -> None:
        score, why = parse_score(answer)
        if score is None:
            self.invalid.append((row, why, answer))
        else:
            self.keep("vlm_score", row, score)

    def finish(self, seed: int) -> dict[str, dict]:
        if self.pending:
            self._flush()
        valid = len(self.per_pair["vlm_score"])
        invalid = self.figures["vlm_score_invalid_share"]
        hits = [1] * len(self.invalid) + [0] * valid
        out = {
            "vlm_score": mean_figure(self.per_pair["vlm_score"], self.figures["vlm_score"], seed, self.model),
            "vlm_score_invalid_share": ratio_figure(hits, [1] * len(hits), invalid, seed, self.model),
        }
        out["vlm_score_invalid_share"]["invalid_examples"] = [
            {"row": row, "why": why, "answer": answer[:200]} for row, why, answer in self.invalid[:INVALID_EXAMPLES]
        ]
        return out
