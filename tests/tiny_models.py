"""Tiny random-weight chat models built from config and saved to disk, loaded back through the real
``from_pretrained`` code: a LLaVA-style VLM and a Llama-style text LM, sharing a byte-level BPE tokenizer
trained on the spot (no hub access).

LLaVA rather than Qwen2-VL: in transformers 5.24 every processor with a video processor (Qwen2/2.5/3-VL,
InternVL) refuses to be built without torchvision, which these CPU machines do not have.
"""

from __future__ import annotations

SPECIALS = ["<pad>", "<s>", "</s>", "<image>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}{% if c['type'] == 'image' %}<image>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
CORPUS = '{"private": true, "categories": ["people"], "private_caption": "a face", "public_caption": "a person", "regions": []}'


def _tokenizer(extra_specials: tuple[str, ...] = ()):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIALS + list(extra_specials), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator([CORPUS] * 10, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_vlm(path: str, seed: int = 0) -> str:
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = _tokenizer()
    ids = {s: tok.convert_tokens_to_ids(s) for s in SPECIALS}
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}),
        tokenizer=tok,
        patch_size=14,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        image_token="<image>",
        num_additional_image_tokens=1,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=28, patch_size=14),
        text_config=LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=len(tok), max_position_embeddings=4096,
            bos_token_id=ids["<s>"], eos_token_id=ids["</s>"], pad_token_id=ids["<pad>"],
        ),
        image_token_index=ids["<image>"],
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    torch.manual_seed(seed)
    LlavaForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


def build_tiny_lm(path: str, seed: int = 0, hidden_size: int = 32, num_attention_heads: int = 4) -> str:
    """``hidden_size=128, num_attention_heads=2`` gives the head size of 64 that vLLM's CPU attention needs."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _tokenizer()
    config = LlamaConfig(
        hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2,
        num_attention_heads=num_attention_heads, num_key_value_heads=max(1, num_attention_heads // 2),
        vocab_size=len(tok), max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


IDEFICS3_SPECIALS = ("<fake_token_around_image>", "<global-img>", "<end_of_utterance>")


def build_tiny_idefics3(path: str, seed: int = 0) -> str:
    """A SmolVLM-style VLM (Idefics3: SigLIP-like vision tower, pixel shuffle, Llama text model) that both
    transformers and vLLM run without torchvision: one 56-px tile, 4 image tokens, text head size 64."""
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor, Idefics3VisionConfig, LlamaConfig
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    tok = _tokenizer(IDEFICS3_SPECIALS)
    ids = {s: tok.convert_tokens_to_ids(s) for s in SPECIALS}
    image_processor = Idefics3ImageProcessorPil(size={"longest_edge": 56}, max_image_size={"longest_edge": 56}, do_image_splitting=False)
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=4, chat_template=CHAT_TEMPLATE)
    text = LlamaConfig(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        vocab_size=len(tok), max_position_embeddings=4096,
        bos_token_id=ids["<s>"], eos_token_id=ids["</s>"], pad_token_id=ids["<pad>"],
    )
    config = Idefics3Config(
        vision_config=Idefics3VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=56, patch_size=14),
        text_config=text, image_token_id=ids["<image>"], scale_factor=2, pad_token_id=ids["<pad>"],
    )
    torch.manual_seed(seed)
    Idefics3ForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


def _byte_level_clip_vocab(folder) -> tuple[str, str]:
    """A CLIP BPE vocabulary with no merges: one token per byte (514 entries), built offline."""
    import json
    import os

    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            codes.append(256 + extra)
            extra += 1
    chars = [chr(c) for c in codes]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = 512, 513
    os.makedirs(folder, exist_ok=True)
    vocab_file, merges_file = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
    with open(vocab_file, "w") as f:
        json.dump(vocab, f)
    with open(merges_file, "w") as f:
        f.write("#version: 0.2\n")
    return vocab_file, merges_file


def build_tiny_owlv2(path: str, seed: int = 0) -> str:
    import os

    import torch
    from transformers import CLIPTokenizer, Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    tokenizer = CLIPTokenizer(*_byte_level_clip_vocab(os.path.join(path, "_vocab")), pad_token="<|endoftext|>")
    processor = Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer)
    config = Owlv2Config(
        text_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, vocab_size=514,
                         max_position_embeddings=32, bos_token_id=512, eos_token_id=513, pad_token_id=513),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=16),
        projection_dim=32,
    )
    torch.manual_seed(seed)
    Owlv2ForObjectDetection(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


def build_tiny_instruct_pix2pix(path: str, seed: int = 0) -> str:
    """A 2-block InstructPix2Pix pipeline (UNet with 8 input channels, tiny VAE and CLIP text encoder)."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    return _build_tiny_sd(path, seed, 8, StableDiffusionInstructPix2PixPipeline)


def build_tiny_inpaint(path: str, seed: int = 0) -> str:
    """A 2-block Stable Diffusion inpainting pipeline (UNet with 9 input channels)."""
    from diffusers import StableDiffusionInpaintPipeline

    return _build_tiny_sd(path, seed, 9, StableDiffusionInpaintPipeline)


def _build_tiny_sd(path: str, seed: int, in_channels: int, pipeline_cls) -> str:
    import os

    import torch
    from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=in_channels, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"), up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, vocab_size=514,
        max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513,
    ))
    tokenizer = CLIPTokenizer(*_byte_level_clip_vocab(os.path.join(path, "_vocab")), pad_token="<|endoftext|>", model_max_length=77)
    pipe = pipeline_cls(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=EulerAncestralDiscreteScheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    return path


def build_tiny_sd3(path: str, seed: int = 0) -> str:
    """A one-layer SD3 pipeline (rectified flow) with two tiny CLIP text encoders and no T5 (load it with
    ``without_t5``)."""
    import os

    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=32, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64, out_channels=4,
    )
    text_config = CLIPTextConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, vocab_size=514, max_position_embeddings=77,
        bos_token_id=512, eos_token_id=513, pad_token_id=513, projection_dim=32, hidden_act="gelu",
    )
    vocab = _byte_level_clip_vocab(os.path.join(path, "_vocab"))
    vae = AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"), up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
        text_encoder=CLIPTextModelWithProjection(text_config), tokenizer=CLIPTokenizer(*vocab, pad_token="<|endoftext|>", model_max_length=77),
        text_encoder_2=CLIPTextModelWithProjection(text_config), tokenizer_2=CLIPTokenizer(*vocab, pad_token="<|endoftext|>", model_max_length=77),
        text_encoder_3=None, tokenizer_3=None,
    )
    pipe.save_pretrained(path)
    return path


def build_tiny_clip(path: str, seed: int = 0) -> str:
    import os

    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, vocab_size=514,
                         max_position_embeddings=77, bos_token_id=512, eos_token_id=513, pad_token_id=513),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=30, patch_size=15),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(path)
    tokenizer = CLIPTokenizer(*_byte_level_clip_vocab(os.path.join(path, "_vocab")), pad_token="<|endoftext|>", model_max_length=77)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}), tokenizer=tokenizer).save_pretrained(path)
    return path


def _t5_tokenizer():
    """A T5 (Unigram) tokenizer over printable ASCII, one token per character, built without the Hub."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -1.0)] + [(chr(c), -2.0) for c in range(33, 127)]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def build_tiny_kontext(path: str, seed: int = 0) -> str:
    """A one-block FLUX.1 Kontext pipeline: tiny Flux transformer (guidance-distilled), CLIP + T5 text encoders."""
    import os

    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=True,
    )
    clip = CLIPTextModel(CLIPTextConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, vocab_size=514, max_position_embeddings=77,
        bos_token_id=512, eos_token_id=513, pad_token_id=513, projection_dim=32, hidden_act="gelu",
    ))
    t5 = T5EncoderModel(T5Config(vocab_size=100, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, decoder_start_token_id=0))
    vae = AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"), up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False,
    )
    vocab = _byte_level_clip_vocab(os.path.join(path, "_vocab"))
    pipe = FluxKontextPipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
        text_encoder=clip, tokenizer=CLIPTokenizer(*vocab, pad_token="<|endoftext|>", model_max_length=77),
        text_encoder_2=t5, tokenizer_2=_t5_tokenizer(),
    )
    pipe.save_pretrained(path)
    return path


def build_lpips_weights(folder, net: str, seed: int = 0) -> tuple[str, str]:
    """Random LPIPS weight files in the real formats (no package ships the ImageNet ones): a torchvision-format
    backbone state dict (with a classifier entry, as torchvision files have) and lpips v0.1 calibration weights."""
    import os

    import torch

    from hf_unsafe2safe.evaluation.lpips import CHANNELS, _features

    torch.manual_seed(seed)
    features = _features(net)
    for m in features:
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    backbone = {f"features.{k}": v for k, v in features.state_dict().items()}
    backbone["classifier.1.weight"] = torch.zeros(4, 4)
    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(CHANNELS[net])}
    paths = (os.path.join(folder, f"{net}.pth"), os.path.join(folder, f"{net}_lin.pth"))
    torch.save(backbone, paths[0])
    torch.save(lin, paths[1])
    return paths


def build_tiny_qwen_image_edit(seed: int = 0):
    """A two-layer Qwen-Image-Edit pipeline, in memory: tiny QwenImage transformer and VAE (three 2x downsamples,
    the real vae_scale_factor 8), a tiny Qwen2.5-VL text encoder with Qwen's vocabulary size and vision token ids.

    Not saved and loaded back: ``from_pretrained`` of a Qwen2-VL processor builds its video processor, which
    transformers 5.24 refuses without torchvision (absent here); the processor is the real class without it
    (``bench_common.image_only``). The tokenizer (``bench_common.word_tokenizer``: Qwen's pre-token split, one
    token per piece, Qwen's special ids) gives the pipeline's system prompt the 64 tokens its
    ``prompt_template_encode_start_idx`` drops, as Qwen's own tokenizer does. The image processor reads the
    condition image at 56x56 px (4 visual tokens) instead of the real ~1 megapixel, to keep the test fast."""
    import sys
    from pathlib import Path

    import torch
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageEditPipeline, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor

    benchmarks = str(Path(__file__).resolve().parent.parent / "benchmarks")
    if benchmarks not in sys.path:
        sys.path.insert(0, benchmarks)
    import bench_common as bc

    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=3,
        joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4),
    )
    # one channel width throughout: the VAE encodes the ~1 megapixel condition image, the slow part on a CPU
    vae = AutoencoderKLQwenImage(
        base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
    )
    text_encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
            vocab_size=152064, rope_parameters={"mrope_section": [1, 1, 2], "rope_type": "default", "rope_theta": 1e6},
        ),
        vision_config=dict(depth=2, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16),
        vocab_size=152064,
        image_token_id=bc.QWEN_SPECIALS["<|image_pad|>"], video_token_id=bc.QWEN_SPECIALS["<|video_pad|>"],
        vision_start_token_id=bc.QWEN_SPECIALS["<|vision_start|>"], vision_end_token_id=bc.QWEN_SPECIALS["<|vision_end|>"],
    ))
    pipe = QwenImageEditPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder, tokenizer=None, processor=None, transformer=transformer,
    )
    # the vocabulary: the pipeline's own prompt template (read from it) and words of typical edit instructions
    corpus = [pipe.prompt_template_encode, "Replace the face with a different person, blur the text and make the car blue"]
    tokenizer = bc.word_tokenizer(bc.QWEN_SPECIALS, "<|im_end|>", "<|endoftext|>", corpus)
    image_processor = Qwen2VLImageProcessor(size={"shortest_edge": 56 * 56, "longest_edge": 56 * 56})
    processor = bc.image_only(Qwen2VLProcessor)(image_processor=image_processor, tokenizer=tokenizer, video_processor=None)
    pipe.register_modules(tokenizer=tokenizer, processor=processor)
    return pipe


# the image-processor policy of the published Qwen2-VL-7B-Instruct / Qwen2.5-VL-7B-Instruct checkpoints
# (preprocessor_config.json: 14-px patches merged 2x2, 3136 to 12845056 pixels)
QWEN2_VL_IMAGES = {"patch_size": 14, "merge_size": 2, "temporal_patch_size": 2, "min_pixels": 3136, "max_pixels": 12845056}


def build_tiny_qwen_vl(family: str, seed: int = 0):
    """A one-layer Qwen2-VL (``family="qwen2_vl"``) or Qwen2.5-VL (``"qwen2_5_vl"``) model and its real processor
    class, in memory: Qwen's vocabulary size and special token ids, the published image-processor policy
    (``QWEN2_VL_IMAGES``), a word-level tokenizer (``bench_common.word_tokenizer``) and Qwen's chat format.

    Not saved and loaded back: ``from_pretrained`` of these processors builds their video processor, which
    transformers 5.24+ refuses without torchvision (absent here); the processor is the real class without it
    (``bench_common.image_only``)."""
    import sys
    from pathlib import Path

    import torch
    import transformers

    benchmarks = str(Path(__file__).resolve().parent.parent / "benchmarks")
    if benchmarks not in sys.path:
        sys.path.insert(0, benchmarks)
    import bench_common as bc

    specials = bc.QWEN_SPECIALS
    ids = {"image_token_id": specials["<|image_pad|>"], "video_token_id": specials["<|video_pad|>"],
           "vision_start_token_id": specials["<|vision_start|>"], "vision_end_token_id": specials["<|vision_end|>"]}
    text = dict(hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, vocab_size=151936,
                rope_parameters={"mrope_section": [1, 1, 2], "rope_type": "default", "rope_theta": 1e6})
    p = QWEN2_VL_IMAGES
    torch.manual_seed(seed)
    if family == "qwen2_vl":
        vision = dict(depth=1, embed_dim=16, hidden_size=16, num_heads=2, patch_size=p["patch_size"], spatial_merge_size=p["merge_size"], temporal_patch_size=p["temporal_patch_size"])
        model = transformers.Qwen2VLForConditionalGeneration(transformers.Qwen2VLConfig(text_config=text, vision_config=vision, **ids))
        processor_cls = transformers.Qwen2VLProcessor
    elif family == "qwen2_5_vl":
        vision = dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16, patch_size=p["patch_size"], spatial_merge_size=p["merge_size"], temporal_patch_size=p["temporal_patch_size"])
        model = transformers.Qwen2_5_VLForConditionalGeneration(transformers.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids))
        processor_cls = transformers.Qwen2_5_VLProcessor
    else:
        raise ValueError(f"Got {family!r} for `family`; expected 'qwen2_vl' or 'qwen2_5_vl'.")
    image_processor = transformers.Qwen2VLImageProcessor(
        patch_size=p["patch_size"], merge_size=p["merge_size"], temporal_patch_size=p["temporal_patch_size"], min_pixels=p["min_pixels"], max_pixels=p["max_pixels"]
    )
    tokenizer = bc.word_tokenizer(specials, "<|im_end|>", "<|endoftext|>", bc.prompt_corpus())
    template = bc.chat_template("<|vision_start|><|image_pad|><|vision_end|>")
    processor = bc.image_only(processor_cls)(image_processor=image_processor, tokenizer=tokenizer, video_processor=None, chat_template=template)
    return model.eval(), processor
