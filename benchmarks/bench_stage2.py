"""Stage 2 throughput and memory: the diffusion editors, batched vs one image at a time.

The pipelines are built with random weights from the real configs in benchmarks/configs - InstructPix2Pix
(SD1.5 UNet with 8 input channels, SD1.5 VAE, CLIP ViT-L/14 text encoder) and SD3-medium (MMDiT transformer,
16-channel VAE, CLIP-L, CLIP-G and T5-XXL encoders) - directly on the device in the benchmark dtype, and
driven through the project's own editor classes (``InstructPix2PixEditor``, ``FlowEditEditor``: bucketing,
per-row generators, the batched FlowEdit loop). Only ``load_pipeline`` is replaced (no checkpoint to load).
Settings are the presets': InstructPix2Pix at ``fast`` (20 steps, longer side 512), FlowEdit at ``paper``
(50 steps of which the last n_max = 33 edit, source/target guidance 3.5/13.5, longer side 1024).

Rows measured per editor: the one-image-at-a-time loop (batch 1, benchmark dtype), each batch size, and for
FlowEdit a "reference-like" loop: batch 1 in float16 without compilation, as the published FlowEdit code runs.

``--extrapolate A,B`` times every call at A and at B work units (FlowEdit: edited steps n_max; InstructPix2Pix:
steps) instead of the full count and extrapolates linearly: t(N) = t(B) + (N - B) * (t(B) - t(A)) / (B - A).
A step's cost does not depend on which step it is (skipped FlowEdit steps cost nothing), so this is exact up to
noise; ``--validate`` also runs the batch-1 row at the full count and reports the extrapolation's error.

    python benchmarks/bench_stage2.py --out benchmarks/_work/stage2                     # on a GPU
    python benchmarks/bench_stage2.py --device cpu --tiny --out /tmp/s2                 # smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_common as bc  # noqa: E402

EDITOR_PRESET = {"instruct-pix2pix": "fast", "flowedit": "paper"}
WORK_FIELD = {"instruct-pix2pix": "steps", "flowedit": "n_max"}

TINY_CLIP = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4, "projection_dim": 32}
TINY_VAE = {
    "block_out_channels": [32, 64], "layers_per_block": 1, "norm_num_groups": 8,
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"], "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
}
TINY = {
    "instruct-pix2pix/unet": {
        "block_out_channels": [32, 64], "layers_per_block": 1, "cross_attention_dim": 32, "norm_num_groups": 8, "sample_size": 16,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"], "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    },
    "instruct-pix2pix/vae": TINY_VAE,
    "instruct-pix2pix/text_encoder": TINY_CLIP,
    "sd3-medium/transformer": {
        "sample_size": 32, "num_layers": 1, "attention_head_dim": 8, "num_attention_heads": 4, "caption_projection_dim": 32,
        "joint_attention_dim": 64, "pooled_projection_dim": 64, "pos_embed_max_size": 32,
    },
    "sd3-medium/vae": TINY_VAE,
    "sd3-medium/text_encoder": TINY_CLIP,
    "sd3-medium/text_encoder_2": TINY_CLIP,
    "sd3-medium/text_encoder_3": {"d_model": 64, "d_ff": 128, "d_kv": 16, "num_heads": 4, "num_layers": 2, "num_decoder_layers": 2},
}

T5_SPECIALS = {"<pad>": 0, "</s>": 1, "<unk>": 2}

# what the editors are asked: instructions (InstructPix2Pix) or target/source captions (FlowEdit)
INSTRUCTIONS = [
    "give the man a short grey beard, darker skin and a calm smile, change his jacket to green and make the car plate blank",
    "turn both people into older women with curly hair and glasses, change the laptop sticker to a plain circle, blur the document text",
]
TARGETS = [
    "An older person with a grey beard and a green jacket stands at a street corner beside a parked car with a blank plate.",
    "Two older women with curly hair and glasses sit at a wooden table in a bright cafe with a laptop and a blank sheet of paper.",
]
SOURCES = [
    "A person in a dark jacket stands at a busy street corner beside a parked car, holding a phone to the ear.",
    "Two people sit at a wooden table in a bright cafe, one reading a printed document while the other types on a laptop.",
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--editors", default="instruct-pix2pix,flowedit")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when there is one)")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default=None, help="default: bfloat16 on GPU, float32 on CPU")
    p.add_argument("--reference-dtype", choices=("float16", "float32"), default=None, help="dtype of FlowEdit's reference-like row (default float16 on GPU, float32 on CPU)")
    p.add_argument("--tiny", action="store_true", help="one- or two-block versions of the models (CPU smoke run)")
    p.add_argument("--batch-sizes", default=None, help="default: 1,2,4,8,16,32 (tiny: 1,2)")
    p.add_argument("--loop-images", type=int, default=None, help="images for the one-at-a-time rows (default 2)")
    p.add_argument("--image-size", default=None, help="WxH of the test photos (default 640x480; tiny 64x48)")
    p.add_argument("--extrapolate", default=None, help="A,B: time at A and B work units and extrapolate to the full count (see the module doc)")
    p.add_argument("--validate", action="store_true", help="with --extrapolate: also time the batch-1 loop at the full count")
    p.add_argument("--time-budget", type=float, default=0.0, help="seconds per editor; batch sizes not started by then are skipped (0 = no limit)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: 1 with --tiny on CPU, else torch's default)")
    p.add_argument("--out", default=None, help="folder for <name>.json / <name>.md")
    p.add_argument("--name", default="stage2", help="file name stem of the outputs (default stage2)")
    args = p.parse_args(argv)
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.threads = args.threads or (1 if args.tiny and args.device == "cpu" else None)
    gpu = args.device.startswith("cuda")
    args.dtype = args.dtype or ("bfloat16" if gpu else "float32")
    args.reference_dtype = args.reference_dtype or ("float16" if gpu else "float32")
    args.editors = [e for e in args.editors.split(",") if e]
    args.batch_sizes = bc.parse_ints(args.batch_sizes or ("1,2" if args.tiny else "1,2,4,8,16,32"))
    args.loop_images = args.loop_images or 2
    args.image_size = bc.parse_size(args.image_size or ("64x48" if args.tiny else "640x480"))
    args.extrapolate = bc.parse_ints(args.extrapolate) if args.extrapolate else None
    if args.extrapolate and (len(args.extrapolate) != 2 or not 0 < args.extrapolate[0] < args.extrapolate[1]):
        p.error(f"Got {args.extrapolate} for --extrapolate; expected A,B with 0 < A < B")
    return args


def component(name: str, tiny: bool) -> dict:
    cfg = bc.load_config(name)
    if tiny:
        cfg.update(TINY[name])
    return cfg


def text_model(cls, cfg: dict):
    import transformers

    cfg = {k: v for k, v in cfg.items() if k != "architectures"}
    return cls(transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg))


def build_instruct_pix2pix(device: str, dtype, tiny: bool):
    import torch
    from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    with torch.device(device), bc.default_dtype(dtype):
        unet = UNet2DConditionModel.from_config(component("instruct-pix2pix/unet", tiny))
        vae = AutoencoderKL.from_config(component("instruct-pix2pix/vae", tiny))
        text_encoder = text_model(CLIPTextModel, component("instruct-pix2pix/text_encoder", tiny))
    return StableDiffusionInstructPix2PixPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=bc.byte_level_clip_tokenizer(), unet=unet,
        scheduler=EulerAncestralDiscreteScheduler.from_config(bc.load_config("instruct-pix2pix/scheduler")),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def build_sd3(device: str, dtype, tiny: bool):
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, T5EncoderModel

    torch.manual_seed(0)
    with torch.device(device), bc.default_dtype(dtype):
        transformer = SD3Transformer2DModel.from_config(component("sd3-medium/transformer", tiny))
        vae = AutoencoderKL.from_config(component("sd3-medium/vae", tiny))
        clip_l = text_model(CLIPTextModelWithProjection, component("sd3-medium/text_encoder", tiny))
        clip_g = text_model(CLIPTextModelWithProjection, component("sd3-medium/text_encoder_2", tiny))
        t5 = text_model(T5EncoderModel, component("sd3-medium/text_encoder_3", tiny))
    t5_tokenizer = bc.word_tokenizer(T5_SPECIALS, "</s>", "<pad>", INSTRUCTIONS + TARGETS + SOURCES, split=r"\s+|[^\s\w]|\w+")
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler.from_config(bc.load_config("sd3-medium/scheduler")), vae=vae,
        text_encoder=clip_l, tokenizer=bc.byte_level_clip_tokenizer(), text_encoder_2=clip_g, tokenizer_2=bc.byte_level_clip_tokenizer(),
        text_encoder_3=t5, tokenizer_3=t5_tokenizer,
    )


def make_editor(name: str, config, device: str, tiny: bool):
    """The project's editor class with ``load_pipeline`` building random weights on the device (everything else,
    ``edit`` and the FlowEdit loop included, is the project's code)."""
    from hf_unsafe2safe.editing.instruct_pix2pix import InstructPix2PixEditor
    from hf_unsafe2safe.editing.flowedit import FlowEditEditor

    base, build = {"instruct-pix2pix": (InstructPix2PixEditor, build_instruct_pix2pix), "flowedit": (FlowEditEditor, build_sd3)}[name]

    class RandomWeightsEditor(base):
        def load_pipeline(self, config, dtype):
            return build(self.device, dtype, tiny)

    return RandomWeightsEditor(config, device)


def editor_config(name: str, args):
    from hf_unsafe2safe.config import PipelineConfig

    config = PipelineConfig.from_preset(EDITOR_PRESET[name]).diffusion
    assert config.name == name, (config.name, name)
    changes = {"dtype": args.dtype, "batch_size": 1}
    if args.tiny:
        changes["max_side"] = 64
    return dataclasses.replace(config, **changes)


class EditorTimer:
    """Times ``editor.edit`` over ``n`` rows at a batch size, at the full work count or extrapolated from two."""

    def __init__(self, name: str, editor, args, images, measure, splits):
        self.name, self.editor, self.args, self.images = name, editor, args, images
        self.measure, self.splits = measure, splits
        self.field = WORK_FIELD[name]
        self.full = getattr(editor.config, self.field)

    def _edit(self, n: int) -> None:
        k = len(INSTRUCTIONS)
        prompts = [(INSTRUCTIONS if self.name == "instruct-pix2pix" else TARGETS)[i % k] for i in range(n)]
        sources = [SOURCES[i % k] for i in range(n)] if self.editor.uses_source_prompt else None
        out = self.editor.edit(self.images[:n], prompts, seeds=list(range(n)), source_prompts=sources)
        assert len(out) == n and all(img.size == self.images[0].size for img in out)

    def _at(self, units: int, n: int) -> dict:
        setattr(self.editor.config, self.field, units)
        try:
            m = self.measure(lambda: self._edit(n))
        finally:
            setattr(self.editor.config, self.field, self.full)
        split = self.splits.take()
        if split:
            m["oom_splits"] = split
        return m

    def __call__(self, n: int, batch: int, full: bool = False) -> dict:
        self.editor.config.batch_size = batch
        if full or not self.args.extrapolate:
            m = self._at(self.full, n)
            m["units"] = self.full
        else:
            a, b = self.args.extrapolate
            ma, mb = self._at(a, n), self._at(b, n)
            if ma["oom"] or mb["oom"]:
                return {"oom": True, "measured": {a: ma, b: mb}}
            per_unit = (mb["seconds"] - ma["seconds"]) / (b - a)
            if per_unit <= 0:
                # noise larger than the cost of B - A units: no usable slope, so measure the full count
                m = self._at(self.full, n)
                m.update(units=self.full, extrapolation_failed={a: ma["seconds"], b: mb["seconds"]})
            else:
                m = {"oom": False, "seconds": mb["seconds"] + (self.full - b) * per_unit, "peak_gib": mb["peak_gib"],
                     "extrapolated_from": {a: ma["seconds"], b: mb["seconds"]}, "seconds_per_unit": per_unit, "units": self.full}
            if ma.get("oom_splits") or mb.get("oom_splits"):
                m["oom_splits"] = (ma.get("oom_splits") or []) + (mb.get("oom_splits") or []) + (m.get("oom_splits") or [])
        m.update(rows=n, batch=batch)
        if not m["oom"]:
            m["images_per_s"] = n / m["seconds"]
        return m


def bench_editor(name: str, args, images, measure, checkpoint) -> dict:
    import torch

    config = editor_config(name, args)
    print(f"[build] {name}{' (tiny)' if args.tiny else ''} on {args.device} in {args.dtype}", flush=True)
    editor = make_editor(name, config, args.device, args.tiny)
    from hf_unsafe2safe.editing.compositing import working_size

    result = {
        "settings": {k: getattr(config, k) for k in ("steps", "guidance_scale", "image_guidance_scale", "max_side", "source_guidance", "target_guidance", "n_min", "n_max", "n_avg", "without_t5")},
        "working_size": list(working_size(images[0].size, config.max_side, editor.multiple)),
        "parameters_b": {k: round(sum(p.numel() for p in m.parameters()) / 1e9, 3) for k, m in editor.pipe.components.items() if isinstance(m, torch.nn.Module)},
        "rows": [],
    }
    checkpoint(result)
    if args.device.startswith("cuda"):
        result["weights_gib"] = round(torch.cuda.memory_allocated(args.device) / 2**30, 2)
    timer = EditorTimer(name, editor, args, images, measure, bc.WarningCounter("hf_unsafe2safe.editing.base"))
    budget = bc.TimeBudget(args.time_budget)

    # warm-up: one short call (kernels, allocator)
    setattr(editor.config, timer.field, min(2, timer.full))
    editor.edit(images[:1], TARGETS[:1], [0], source_prompts=SOURCES[:1] if editor.uses_source_prompt else None)
    setattr(editor.config, timer.field, timer.full)

    print(f"[{name}] one at a time over {args.loop_images} images ...", flush=True)
    loop = timer(args.loop_images, 1)
    loop["what"] = "one at a time"
    result["rows"].append(loop)
    checkpoint(result)
    if args.extrapolate and args.validate:
        print(f"[{name}] validating the extrapolation at batch 1, full count ...", flush=True)
        full = timer(1, 1, full=True)
        full["what"] = "validation: batch 1, full count measured"
        if not full["oom"] and not loop["oom"]:
            full["extrapolation_error"] = (loop["seconds"] / loop["rows"]) / full["seconds"] - 1
        result["rows"].append(full)
        checkpoint(result)
    stop = None
    for b in args.batch_sizes:
        if stop is None and budget.exceeded():
            stop = "time budget"
        if stop:
            result["rows"].append({"what": "batched", "batch": b, "skipped": stop})
            continue
        print(f"[{name}] batch {b} ...", flush=True)
        m = timer(b, b)
        m["what"] = "batched"
        result["rows"].append(m)
        checkpoint(result)
        if m["oom"]:
            stop = f"out of memory at batch {b}"
    if name == "flowedit":
        # the published FlowEdit code runs one image at a time in float16 without compilation
        editor.pipe.to(dtype=bc.torch_dtype(args.reference_dtype))
        editor.config.dtype = args.reference_dtype
        print(f"[{name}] reference-like: batch 1, {args.reference_dtype}, over {args.loop_images} images ...", flush=True)
        ref = timer(args.loop_images, 1)
        ref["what"] = f"reference-like: one at a time, {args.reference_dtype}, no compile"
        result["rows"].append(ref)
        checkpoint(result)
    base = loop.get("images_per_s")
    ref_ips = result["rows"][-1].get("images_per_s") if name == "flowedit" else None
    batched = [r for r in result["rows"] if r.get("what") == "batched" and r.get("images_per_s")]
    best = max(batched, key=lambda r: r["images_per_s"]) if batched else None
    result["best"] = best and {"batch": best["batch"], "images_per_s": best["images_per_s"], "peak_gib": best["peak_gib"],
                               "vs_loop": best["images_per_s"] / base if base else None,
                               "vs_reference_like": best["images_per_s"] / ref_ips if ref_ips else None}
    del editor, timer
    gc.collect()
    if args.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return result


def main(argv=None) -> dict:
    args = parse_args(argv)
    bc.quiet_and_threads(args.device, args.threads)
    images = bc.sample_images(max(args.batch_sizes + [args.loop_images]), args.image_size)
    measure = bc.Measurement(args.device)
    results = {
        "benchmark": "stage2", "tiny": args.tiny, "env": bc.environment(args.device),
        "settings": {"dtype": args.dtype, "reference_dtype": args.reference_dtype, "image_size": list(args.image_size),
                     "batch_sizes": args.batch_sizes, "loop_images": args.loop_images, "extrapolate": args.extrapolate,
                     "time_budget_s": args.time_budget},
        "editors": {},
    }
    for name in args.editors:

        def checkpoint(editor_result, name=name):
            results["editors"][name] = editor_result
            bc.save_json(args.out, args.name, results)

        results["editors"][name] = bench_editor(name, args, images, measure, checkpoint)
    write_outputs(results, args)
    return results


def write_outputs(results: dict, args) -> None:
    lines = [f"## Stage 2{' (TINY smoke run, not a performance figure)' if results['tiny'] else ''}", ""]
    env = results["env"]
    lines.append(f"Device: {env.get('gpu') or 'cpu'}; {env['versions']}; commit {env['commit']}; photos {args.image_size[0]}x{args.image_size[1]}"
                 + (f"; times extrapolated from {args.extrapolate[0]} and {args.extrapolate[1]} work units" if args.extrapolate else "") + ".")
    for name, r in results["editors"].items():
        s = r["settings"]
        what = (f"{s['steps']} steps, guidance {s['guidance_scale']}/{s['image_guidance_scale']}" if name == "instruct-pix2pix"
                else f"{s['steps']} steps, n_max {s['n_max']}, n_min {s['n_min']}, n_avg {s['n_avg']}, guidance {s['source_guidance']}/{s['target_guidance']}")
        lines += ["", f"### {name} ({what}; working size {r['working_size'][0]}x{r['working_size'][1]}; parameters (B) {r['parameters_b']})", ""]
        base = next(x for x in r["rows"] if x["what"] == "one at a time").get("images_per_s")
        rows = []
        for x in r["rows"]:
            if x.get("skipped") or x.get("oom"):
                rows.append([x["what"], x.get("batch"), "-", "-", "-", x.get("skipped") or "OOM", "-", "-", ""])
                continue
            note = "batch split after OOM" if x.get("oom_splits") else ""
            if x.get("extrapolation_failed"):
                note = "measured at the full count (no usable slope)"
            if "extrapolation_error" in x:
                note = f"extrapolation error {x['extrapolation_error']:+.1%}"
            dtype = args.reference_dtype if x["what"].startswith("reference") else args.dtype
            rows.append([x["what"], x["batch"], x["rows"], dtype, x["seconds"], x["images_per_s"], f"{x['images_per_s'] / base:.2f}x" if base else "-", x["peak_gib"], note])
        lines.append(bc.markdown_table(["row", "batch", "images", "dtype", "seconds", "images/s", "vs one-at-a-time", "peak GiB", "note"], rows))
        if r["best"]:
            b = r["best"]
            goal = f"; vs reference-like {b['vs_reference_like']:.2f}x (goal >= 10x: {'met' if b['vs_reference_like'] >= 10 else 'not met'})" if b.get("vs_reference_like") else ""
            lines.append(f"\nBest: batch {b['batch']}, {b['images_per_s']:.3f} images/s, {b['vs_loop']:.2f}x the one-at-a-time loop{goal}.")
    bc.write_outputs(args.out, args.name, results, "\n".join(lines))


if __name__ == "__main__":
    main()
