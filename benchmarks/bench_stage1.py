"""Stage 1 throughput and memory: the VLM inspector and the edit-instruction LLM, batched vs one image at a time.

Both models are built with random weights from the real configs in benchmarks/configs (the default models of
the `fast` or `paper` preset), directly on the device in the benchmark dtype; tokenizers are built offline and
give one token per word piece, images go through the real image-processor policy (the preset's image side
limits, Qwen3-VL's 32-px merged patches or InternVL's 448-px tiles), so sequence lengths are realistic. The
measured code is the project's own: ``VLMInspector.inspect`` and ``EditInstructionWriter.write`` over
``ChatGenerator.generate``. Random weights never stop early: every answer is forced to a fixed length
(``min_new_tokens`` = ``max_new_tokens``), and the repair turn is off (random answers are never valid JSON).

    python benchmarks/bench_stage1.py --preset fast --out benchmarks/_work/stage1      # on a GPU
    python benchmarks/bench_stage1.py --device cpu --tiny --out /tmp/s1                # smoke run, seconds
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_common as bc  # noqa: E402

# InternVL3.5's added tokens after Qwen3's: <img> </img> <IMG_CONTEXT> (151669-151671); <video> is only used for
# videos, any free id does
INTERNVL_SPECIALS = {**bc.QWEN_SPECIALS, "<img>": 151669, "</img>": 151670, "<IMG_CONTEXT>": 151671, "<video>": 151680}
QWEN25_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# preset -> (config file, family) of its default VLM and instruction LLM (config.py's presets)
MODELS = {
    "fast": {"vlm": ("qwen3-vl-2b-instruct", "qwen3_vl"), "instructor": ("qwen2.5-1.5b-instruct", "qwen2")},
    "paper": {"vlm": ("internvl3_5-8b-hf", "internvl"), "instructor": ("qwen3-4b-instruct-2507", "qwen3")},
}

# what the tiny mode replaces (a few layers, small widths; vocabularies and token ids stay real)
TINY_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
TINY = {
    "qwen3_vl": {
        "text_config": {**TINY_TEXT, "head_dim": 16, "rope_scaling": {"mrope_interleaved": True, "mrope_section": [4, 2, 2], "rope_type": "default"}},
        "vision_config": {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64, "deepstack_visual_indexes": [0]},
    },
    "internvl": {
        "text_config": {**TINY_TEXT, "head_dim": 16},
        "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": [56, 56]},
        "image_seq_length": 4,
    },
    "qwen2": dict(TINY_TEXT),
    "qwen3": {**TINY_TEXT, "head_dim": 16},
}

# public captions of the kind the VLM writes (about 40 words), cycled over the rows given to the instructor
CAPTIONS = [
    "A person in a dark jacket stands at a busy street corner beside a parked car, holding a phone to the ear "
    "while other pedestrians wait at the crossing under a grey sky and shop fronts line the street.",
    "Two people sit at a wooden table in a bright cafe, one reading a printed document while the other types "
    "on a laptop, with cups of coffee, a notebook and a small plant between them.",
    "A group of four people pose in front of a house with a red door, a dog sitting at their feet, a bicycle "
    "leaning against the fence and a mailbox with a number on the left.",
    "A child in a blue sweater plays with building blocks on a living-room carpet next to a sofa, while an "
    "adult in the background holds a framed photograph and a television shows a news programme.",
]
CATEGORIES = [["people", "location_time"], ["people", "text_symbols"], ["people", "interactions", "location_time"], ["people", "private_belongings"]]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(MODELS), default="fast")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when there is one)")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default=None, help="default: bfloat16 on GPU, float32 on CPU")
    p.add_argument("--tiny", action="store_true", help="2-layer, narrow versions of the models (CPU smoke run)")
    p.add_argument("--batch-sizes", default=None, help="default: 1,2,4,8,16,32,64 (tiny: 1,2,4)")
    p.add_argument("--loop-images", type=int, default=None, help="images for the one-at-a-time baseline (default 4, tiny 2)")
    p.add_argument("--vlm-new-tokens", type=int, default=None, help="tokens per VLM answer (default 192, tiny 4)")
    p.add_argument("--llm-new-tokens", type=int, default=None, help="tokens per instructor answer (default 64, tiny 4)")
    p.add_argument("--image-size", default=None, help="WxH of the test photos (default 640x480, a COCO-sized photo; tiny 128x96)")
    p.add_argument("--stages", default="vlm,instructor", help="which models to measure")
    p.add_argument("--time-budget", type=float, default=0.0, help="seconds; batch sizes not started by then are skipped (0 = no limit)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: 1 with --tiny on CPU, else torch's default)")
    p.add_argument("--out", default=None, help="folder for stage1_<preset>.json / .md")
    args = p.parse_args(argv)
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.threads = args.threads or (1 if args.tiny and args.device == "cpu" else None)
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    tiny = args.tiny
    args.batch_sizes = bc.parse_ints(args.batch_sizes or ("1,2,4" if tiny else "1,2,4,8,16,32,64"))
    args.loop_images = args.loop_images or (2 if tiny else 4)
    args.vlm_new_tokens = args.vlm_new_tokens or (4 if tiny else 192)
    args.llm_new_tokens = args.llm_new_tokens or (4 if tiny else 64)
    args.image_size = bc.parse_size(args.image_size or ("128x96" if tiny else "640x480"))
    args.stages = [s for s in args.stages.split(",") if s]
    return args


def model_config(name: str, family: str, tiny: bool) -> dict:
    cfg = bc.load_config(name)
    if tiny:
        for key, value in TINY[family].items():
            if isinstance(value, dict) and isinstance(cfg.get(key), dict):
                cfg[key].update(value)
            else:
                cfg[key] = value
    return cfg


def build_model(cfg: dict, vision: bool, device: str, dtype):
    """Random weights from a config dict, created on ``device`` in ``dtype`` (no CPU copy, no checkpoint)."""
    import torch
    import transformers

    cfg = dict(cfg)
    config = transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    auto = transformers.AutoModelForImageTextToText if vision else transformers.AutoModelForCausalLM
    torch.manual_seed(0)
    with torch.device(device):
        model = auto.from_config(config, dtype=dtype)
    return model.eval()


def build_processor(family: str, cfg: dict, tiny: bool):
    """The image processor + synthetic tokenizer + chat template of a model family, offline."""
    import transformers

    corpus = bc.prompt_corpus() + CAPTIONS
    facts = bc.load_config("processors")
    if family == "qwen3_vl":
        pf = facts["qwen3-vl"]
        tok = bc.word_tokenizer(bc.QWEN_SPECIALS, "<|im_end|>", "<|endoftext|>", corpus)
        image_processor = transformers.Qwen2VLImageProcessor(
            patch_size=pf["patch_size"], temporal_patch_size=pf["temporal_patch_size"], merge_size=pf["merge_size"],
            size={"shortest_edge": pf["min_pixels"], "longest_edge": pf["max_pixels"]},
            image_mean=pf["image_mean"], image_std=pf["image_std"],
        )
        template = bc.chat_template("<|vision_start|><|image_pad|><|vision_end|>")
        return bc.image_only(transformers.Qwen3VLProcessor)(image_processor=image_processor, tokenizer=tok, video_processor=None, chat_template=template)
    if family == "internvl":
        pf = facts["internvl"]
        named = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}
        tok = bc.word_tokenizer(INTERNVL_SPECIALS, "<|im_end|>", "<|endoftext|>", corpus, named_specials=named)
        side = cfg["vision_config"]["image_size"][0]
        image_processor = transformers.GotOcr2ImageProcessor(
            size={"height": side, "width": side}, crop_to_patches=pf["crop_to_patches"], min_patches=pf["min_patches"],
            max_patches=pf["max_patches"], image_mean=pf["image_mean"], image_std=pf["image_std"],
        )
        template = bc.chat_template("<IMG_CONTEXT>\n")
        return bc.image_only(transformers.InternVLProcessor)(
            image_processor=image_processor, tokenizer=tok, video_processor=None, image_seq_length=cfg["image_seq_length"], chat_template=template
        )
    system = QWEN25_SYSTEM if family == "qwen2" else ""
    return bc.word_tokenizer(bc.QWEN_SPECIALS, "<|im_end|>", "<|endoftext|>", corpus, template=bc.chat_template(default_system=system))


def chat_generator(model, processor, device: str, vision: bool):
    """The project's ChatGenerator (left padding, a pad token) around a model and processor built in memory:
    ``generate`` - the batched call being measured - is the project's own, unchanged."""
    from hf_unsafe2safe.inspection.vlm import ChatGenerator

    return ChatGenerator.from_objects(model, processor, device, vision)


def force_length(gen, n: int) -> None:
    """Every answer exactly ``n`` tokens: random weights would otherwise stop at a random end-of-turn token."""
    gen.model.generation_config.min_new_tokens = n


def prompt_tokens(gen, conversation) -> int:
    inputs = gen.processor.apply_chat_template([conversation], add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
    return int(inputs["input_ids"].shape[1])


def sweep(name: str, run, sizes: list[int], loop_n: int, measure, budget, result: dict, checkpoint) -> None:
    """``run(n_rows, batch_size)`` timed one at a time over ``loop_n`` rows, then once per batch size over as many
    rows as the batch holds, into ``result``. After an out-of-memory error larger batches are not tried; a batch
    that ChatGenerator had to split after running out of memory is measured as it ran and marked ``oom_splits``."""
    splits = bc.WarningCounter("hf_unsafe2safe.inspection.vlm")
    print(f"[{name}] one at a time over {loop_n} rows ...", flush=True)
    m = measure(lambda: run(loop_n, 1))
    m.update(rows=loop_n, batch=1)
    if not m["oom"]:
        m["rows_per_s"] = loop_n / m["seconds"]
    result["loop"] = m
    checkpoint()
    stop = None
    for b in sizes:
        if stop is None and budget.exceeded():
            stop = "time budget"
        if stop:
            result["batches"].append({"batch": b, "skipped": stop})
            continue
        print(f"[{name}] batch {b} ...", flush=True)
        m = measure(lambda: run(b, b))
        m["batch"] = b
        split = [msg for msg in splits.take() if "out of GPU memory" in msg]
        if split:
            m["oom_splits"] = split
        if m["oom"]:
            stop = f"out of memory at batch {b}"
        else:
            m["rows_per_s"] = b / m["seconds"]
        result["batches"].append(m)
        checkpoint()


def main(argv=None) -> dict:
    args = parse_args(argv)
    bc.quiet_and_threads(args.device, args.threads)
    import torch

    from hf_unsafe2safe.config import PipelineConfig
    from hf_unsafe2safe.inspection.vlm import EditInstructionWriter, VLMInspector, fit_image

    preset = PipelineConfig.from_preset(args.preset)
    dtype = bc.torch_dtype(args.dtype)
    measure = bc.Measurement(args.device)
    budget = bc.TimeBudget(args.time_budget)
    n_images = max(args.batch_sizes + [args.loop_images])
    images = bc.sample_images(n_images, args.image_size)
    results = {
        "benchmark": "stage1", "preset": args.preset, "tiny": args.tiny, "env": bc.environment(args.device),
        "settings": {"dtype": args.dtype, "image_size": list(args.image_size), "batch_sizes": args.batch_sizes,
                     "loop_images": args.loop_images, "vlm_new_tokens": args.vlm_new_tokens, "llm_new_tokens": args.llm_new_tokens,
                     "vlm_image_max_side": preset.vlm.image_max_side, "repair": False, "time_budget_s": args.time_budget},
        "models": {},
    }

    # both models stay loaded, as in a real run (Unsafe2Safe.load loads every model before the first row)
    gens = {}
    for role in ("vlm", "instructor"):
        name, family = MODELS[args.preset][role]
        cfg = model_config(name, family, args.tiny)
        vision = role == "vlm"
        print(f"[build] {role}: {name}{' (tiny)' if args.tiny else ''} on {args.device} in {args.dtype}", flush=True)
        model = build_model(cfg, vision, args.device, dtype)
        gens[role] = chat_generator(model, build_processor(family, cfg, args.tiny), args.device, vision)
        results["models"][role] = {"config": name, "parameters_b": round(sum(p.numel() for p in model.parameters()) / 1e9, 3)}
    if args.device.startswith("cuda"):
        results["weights_gib"] = round(torch.cuda.memory_allocated(args.device) / 2**30, 2)

    vcfg = preset.vlm
    inspector = VLMInspector(gens["vlm"], vcfg.category_list(), vcfg.box_format, vcfg.image_max_side, vcfg.image_min_side,
                             max_new_tokens=args.vlm_new_tokens, batch_size=1, repair=False)
    writer = EditInstructionWriter(gens["instructor"], max_new_tokens=args.llm_new_tokens, batch_size=1, target_caption=preset.instructor.target_caption)
    shown = fit_image(images[0], vcfg.image_max_side, vcfg.image_min_side)
    results["prompt_tokens"] = {
        "vlm_request": prompt_tokens(gens["vlm"], inspector._conversation(shown)),
        "vlm_image_shown_as": list(shown.size),
        "instructor_request": prompt_tokens(gens["instructor"], [{"role": "user", "content": [{"type": "text", "text": _instruct_prompt(0)}]}]),
    }
    print(f"[info] prompt tokens: {results['prompt_tokens']}", flush=True)

    def run_vlm(n, b):
        inspector.batch_size = b
        answers = inspector.inspect(images[:n])
        assert len(answers) == n

    def run_instructor(n, b):
        writer.batch_size = b
        instructions, _ = writer.write([CAPTIONS[i % len(CAPTIONS)] for i in range(n)], [CATEGORIES[i % len(CATEGORIES)] for i in range(n)])
        assert len(instructions) == n

    # warm-up (kernels, allocator) on short answers, then every answer at its fixed length
    for role, run, new in (("vlm", run_vlm, args.vlm_new_tokens), ("instructor", run_instructor, args.llm_new_tokens)):
        if role not in args.stages:
            continue
        force_length(gens[role], 2)
        (inspector if role == "vlm" else writer).max_new_tokens = 2
        run(2, 2)
        force_length(gens[role], new)
        (inspector if role == "vlm" else writer).max_new_tokens = new

    def checkpoint():
        bc.save_json(args.out, f"stage1_{args.preset}", results)

    for role, run in (("vlm", run_vlm), ("instructor", run_instructor)):
        if role in args.stages:
            results[role] = {"loop": None, "batches": []}
            sweep(role, run, args.batch_sizes, args.loop_images, measure, budget, results[role], checkpoint)
    results["combined"] = combine(results, args.stages)
    write_outputs(results, args)
    return results


def _instruct_prompt(i: int) -> str:
    from hf_unsafe2safe.prompts import load_text

    return load_text("instruct_v1.txt").format(public_caption=CAPTIONS[i % len(CAPTIONS)], categories=", ".join(CATEGORIES[i % len(CATEGORIES)]))


def combine(results: dict, stages: list[str]) -> dict:
    """Stage 1 per image = VLM time per image + instructor time per image (every flagged image needs both)."""
    parts = [results[s] for s in ("vlm", "instructor") if s in stages]
    loop_s = sum(p["loop"]["seconds"] / p["loop"]["rows"] for p in parts if not p["loop"]["oom"])
    loop_ips = 1 / loop_s if loop_s else None
    rows = []
    for i, b in enumerate(results["settings"]["batch_sizes"]):
        entries = [p["batches"][i] for p in parts]
        if any(e.get("skipped") or e.get("oom") for e in entries):
            rows.append({"batch": b, "images_per_s": None, "speedup": None, "note": "; ".join(e.get("skipped") or "out of memory" for e in entries if e.get("skipped") or e.get("oom"))})
            continue
        per_image = sum(e["seconds"] / b for e in entries)
        peak = max((e["peak_gib"] for e in entries if e["peak_gib"] is not None), default=None)
        rows.append({"batch": b, "images_per_s": 1 / per_image, "speedup": (1 / per_image) / loop_ips if loop_ips else None, "peak_gib": peak})
    measured = [r for r in rows if r["images_per_s"]]
    best = max(measured, key=lambda r: r["images_per_s"]) if measured else None
    return {"loop_images_per_s": loop_ips, "rows": rows, "best": best, "goal_speedup": 5.0,
            "goal_met": bool(best and best["speedup"] and best["speedup"] >= 5.0)}


def write_outputs(results: dict, args) -> None:
    lines = [f"## Stage 1 ({results['preset']} preset{', TINY smoke run, not a performance figure' if results['tiny'] else ''})", ""]
    env = results["env"]
    lines.append(f"Device: {env.get('gpu') or 'cpu'}; {env['versions']}; commit {env['commit']}; dtype {args.dtype}; "
                 f"photos {args.image_size[0]}x{args.image_size[1]}; answers fixed at {args.vlm_new_tokens} (VLM) / {args.llm_new_tokens} (instructor) tokens.")
    lines.append(f"Prompt tokens per request: {results['prompt_tokens']}. Models: {results['models']}.")
    lines.append("")
    headers = ["model", "batch", "rows", "seconds", "rows/s", "vs one-at-a-time", "peak GiB"]
    rows = []
    for role in ("vlm", "instructor"):
        if role not in results:
            continue
        loop = results[role]["loop"]
        base = loop.get("rows_per_s")
        rows.append([role, "1 (loop)", loop["rows"], loop.get("seconds"), base, "1.00x" if base else "OOM", loop.get("peak_gib")])
        for m in results[role]["batches"]:
            if m.get("skipped") or m.get("oom"):
                rows.append([role, m["batch"], "-", "-", "-", m.get("skipped") or "OOM", "-"])
            else:
                batch = f"{m['batch']} (split after OOM)" if m.get("oom_splits") else m["batch"]
                rows.append([role, batch, m["batch"], m["seconds"], m["rows_per_s"], f"{m['rows_per_s'] / base:.2f}x" if base else "-", m["peak_gib"]])
    lines.append(bc.markdown_table(headers, rows))
    c = results["combined"]
    lines += ["", "Stage 1 per image (VLM + instructor):", ""]
    crow = [["1 (loop)", c["loop_images_per_s"], "1.00x", "-"]]
    crow += [[r["batch"], r["images_per_s"], f"{r['speedup']:.2f}x" if r.get("speedup") else r.get("note", "-"), r.get("peak_gib")] for r in c["rows"]]
    lines.append(bc.markdown_table(["batch", "images/s", "vs one-at-a-time", "peak GiB"], crow))
    if c["best"]:
        lines.append(f"\nBest: batch {c['best']['batch']}, {c['best']['speedup']:.2f}x the one-at-a-time loop (goal >= 5x: {'met' if c['goal_met'] else 'not met'}).")
    bc.write_outputs(args.out, f"stage1_{results['preset']}", results, "\n".join(lines))


if __name__ == "__main__":
    main()
