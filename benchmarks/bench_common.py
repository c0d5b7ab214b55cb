"""Shared pieces of the GPU benchmarks (bench_stage1.py, bench_stage2.py).

Models are built with random weights from the real configs in ``benchmarks/configs`` (speed and memory do
not depend on the weights' values), tokenizers are synthetic but give realistic sequence lengths, and every
figure is measured around the project's own classes. Heavy imports stay inside functions.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import subprocess
import time
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
REPO_ROOT = Path(__file__).resolve().parent.parent

# Qwen2/Qwen3's pre-tokenizer split (their tokenizer.json "Split" pattern). A word-level tokenizer over these
# pieces gives one token per piece; Qwen's 151k BPE vocabulary keeps common English words whole, so the real
# count is the same or a little higher (rare words split into 2-3 tokens).
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Qwen2 / Qwen2.5-VL / Qwen3's special tokens at their real ids (image and end-of-turn ids in the configs)
QWEN_SPECIALS = {
    "<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|vision_start|>": 151652,
    "<|vision_end|>": 151653, "<|image_pad|>": 151655, "<|video_pad|>": 151656,
}

# Qwen chat format (<|im_start|>role ... <|im_end|>), the structure of Qwen2.5 / Qwen3 / Qwen3-VL's templates
# without their tool-calling branches; `image_markup` is what the model's own template writes for an image.
QWEN_CHAT_TEMPLATE = (
    "{% if default_system and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n' + default_system + '<|im_end|>\\n' }}{% endif %}"
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}{% if c['type'] == 'image' %}{{ image_markup }}"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def chat_template(image_markup: str = "", default_system: str = "") -> str:
    """The Qwen chat template with the image markup and default system prompt filled in."""
    return (
        "{% set image_markup = " + json.dumps(image_markup) + " %}"
        "{% set default_system = " + json.dumps(default_system) + " %}" + QWEN_CHAT_TEMPLATE
    )


def load_config(name: str) -> dict:
    """A config JSON from benchmarks/configs (``name`` relative to it, without .json)."""
    with open(CONFIG_DIR / f"{name}.json") as f:
        return json.load(f)


def prompt_corpus() -> list[str]:
    """The project's prompt files: the text every Stage 1 request is built from."""
    folder = REPO_ROOT / "hf_unsafe2safe" / "prompts"
    return [p.read_text() for p in sorted(folder.glob("*.txt"))] + [p.read_text() for p in sorted(folder.glob("*.json"))]


def word_tokenizer(specials: dict[str, int], eos: str, pad: str, corpus: list[str], template: str | None = None,
                   named_specials: dict[str, str] | None = None, unk: str = "<unk>", split: str = QWEN_SPLIT):
    """A fast tokenizer built offline: one token per pre-token piece (``split`` regex, byte-level), the words of
    ``corpus`` in the vocabulary (anything else is ``unk``, still one token), and the special tokens at the real
    model's ids, so the real configs' image / end-of-turn token ids are valid. Specials at the top of the
    vocabulary (Qwen) get filler entries below them; specials at the bottom (T5) come first."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(split), behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    at_bottom = min(specials.values()) < 1024
    vocab: dict[str, int] = dict(specials) if at_bottom else {}
    next_id = max(specials.values()) + 1 if at_bottom else 0
    for piece in [unk] + [p for text in corpus for p, _ in pre.pre_tokenize_str(text)]:
        if piece not in vocab:
            vocab[piece], next_id = next_id, next_id + 1
    if not at_bottom:
        first_special = min(specials.values())
        if next_id > first_special:
            raise ValueError(f"corpus vocabulary ({next_id}) collides with the special ids (from {first_special})")
        vocab.update({f"<filler_{i}>": i for i in range(next_id, first_special)})
        vocab.update(specials)
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([s for s in specials if s != unk])
    extra = {"extra_special_tokens": named_specials} if named_specials else {}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=pad, unk_token=unk, **extra)
    if template is not None:
        fast.chat_template = template
    return fast


def image_only(processor_cls):
    """``processor_cls`` without its video processor: requests here hold images only, and video processors
    cannot be built without torchvision (absent on the CPU machines). Everything else is the real processor."""

    class ImageOnlyProcessor(processor_cls):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    ImageOnlyProcessor.__name__ = f"ImageOnly{processor_cls.__name__}"
    return ImageOnlyProcessor


def byte_level_clip_tokenizer(model_max_length: int = 77):
    """CLIPTokenizer without a download: one token per byte (the 256 byte characters, the same with ``</w>``,
    then start/end of text = 514 entries, no merges). Diffusion pipelines pad CLIP prompts to 77 tokens, so the
    text encoder's work does not depend on the vocabulary."""
    import tempfile

    from transformers import CLIPTokenizer

    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable + [256 + i for i, b in enumerate(b for b in range(256) if b not in printable)]
    chars = [chr(c) for c in codes]
    vocab = {c: i for i, c in enumerate(chars)} | {c + "</w>": 256 + i for i, c in enumerate(chars)}
    vocab |= {"<|startoftext|>": 512, "<|endoftext|>": 513}
    with tempfile.TemporaryDirectory() as folder:
        vocab_file, merges_file = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
        Path(vocab_file).write_text(json.dumps(vocab))
        Path(merges_file).write_text("#version: 0.2\n")
        return CLIPTokenizer(vocab_file, merges_file, pad_token="<|endoftext|>", model_max_length=model_max_length)


@contextlib.contextmanager
def default_dtype(dtype):
    """Parameters created inside are of ``dtype`` (no float32 copy of a multi-billion-parameter model)."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def quiet_and_threads(device: str, threads: int | None) -> None:
    """Library warnings off (the byte-level CLIP tokenizer truncates every prompt at 77 tokens and says so); on
    CPU, ``threads`` intra-op threads (a smoke run on a shared 2-core machine is several times faster on one)."""
    import diffusers
    import torch
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    if device == "cpu" and threads:
        torch.set_num_threads(threads)


def torch_dtype(name: str):
    import torch

    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def sample_images(n: int, size: tuple[int, int], seed: int = 0) -> list:
    """``n`` distinct RGB photos-like images (smooth colour fields plus noise) of one size."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    images = []
    for _ in range(n):
        a, b, c = rng.uniform(0, 6, 3)
        base = np.stack([np.sin(a * xx + b * yy), np.cos(b * xx - c * yy), np.sin(c * (xx + yy))], -1)
        pixels = (base * 80 + 128 + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype(np.uint8)
        images.append(Image.fromarray(pixels))
    return images


def parse_size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


class Measurement:
    """Wall time and peak accelerator memory of one call, with the device synchronised on both ends."""

    def __init__(self, device: str):
        import torch

        self.torch, self.cuda = torch, device.startswith("cuda")

    def __call__(self, fn) -> dict:
        torch = self.torch
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        try:
            fn()
            if self.cuda:
                torch.cuda.synchronize()
        except torch.cuda.OutOfMemoryError as err:
            if self.cuda:
                torch.cuda.empty_cache()
            return {"oom": True, "error": str(err).splitlines()[0][:200]}
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() / 2**30 if self.cuda else None
        return {"oom": False, "seconds": seconds, "peak_gib": peak}


class WarningCounter(logging.Handler):
    """Counts the warnings a logger emits during a measurement (e.g. the editor's out-of-memory batch splits)."""

    def __init__(self, logger_name: str):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        logging.getLogger(logger_name).addHandler(self)

    def emit(self, record):
        self.messages.append(record.getMessage())

    def take(self) -> list[str]:
        out, self.messages = self.messages, []
        return out


class TimeBudget:
    """Seconds left for the optional parts of a run (0 = unlimited)."""

    def __init__(self, seconds: float):
        self.seconds, self.start = seconds, time.perf_counter()

    def left(self) -> float:
        return float("inf") if not self.seconds else self.seconds - (time.perf_counter() - self.start)

    def exceeded(self) -> bool:
        return self.left() <= 0


def environment(device: str) -> dict:
    """What ran the benchmark: versions, device, the project's commit."""
    import importlib.metadata as md

    import torch

    versions = {}
    for name in ("torch", "transformers", "diffusers", "accelerate", "tokenizers", "huggingface_hub"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    try:
        commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    info = {"python": platform.python_version(), "versions": versions, "device": device, "commit": commit or None}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    else:
        info["cpu_count"] = os.cpu_count()
    return info


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def save_json(out: str | None, stem: str, results: dict) -> None:
    """Results so far (also after every measurement: a run stopped by a timeout keeps what it measured)."""
    if not out:
        return
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{stem}.json"), "w") as f:
        json.dump(results, f, indent=2, default=str)


def write_outputs(out: str | None, stem: str, results: dict, markdown: str) -> None:
    print(markdown, flush=True)
    if not out:
        return
    save_json(out, stem, results)
    with open(os.path.join(out, f"{stem}.md"), "w") as f:
        f.write(markdown + "\n")
