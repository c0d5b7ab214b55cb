"""Fine-tuning editors on the triplets an anonymization run generated.

- ``finetune``: ``finetune_editor``, InstructPix2Pix / MagicBrush (full, safe cross-attention or LoRA); a FLUX
  Kontext base goes on to ``kontext_lora``;
- ``kontext_lora``: ``finetune_kontext``, LoRA on a FLUX.1 Kontext transformer;
- ``common``: what both trainers share (``FinetuneConfig``, ``FinetuneResult``, the held-out split, the schedule,
  the optimizer, the loss plot, the names of the files a run writes);
- ``pairs``: the usable rows of a run and the training pairs as tensors;
- ``triplet_filter``: the paper's CLIP filter of the pairs.
"""
