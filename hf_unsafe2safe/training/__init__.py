"""Fine-tuning editors on the triplets an anonymization run generated (``finetune.finetune_editor``)."""
