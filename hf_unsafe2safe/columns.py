"""Output column names and their ``datasets.Features``: the one place that knows them."""

from __future__ import annotations

PRIVACY_FLAG = "privacy_flag"
PRIVACY_CATEGORIES = "privacy_categories"
PRIVACY_REVIEW = "privacy_review"
PRIVACY_REGIONS = "privacy_regions"
PRIVATE_CAPTION = "private_caption"
PUBLIC_CAPTION = "public_caption"
EDIT_INSTRUCTION = "edit_instruction"
TARGET_CAPTION = "target_caption"
ANONYMIZATION = "anonymization"
METADATA_REMOVED = "metadata_removed"
ORIGINAL_IMAGE = "original_image"

ADDED_COLUMNS = (
    PRIVACY_FLAG,
    PRIVACY_CATEGORIES,
    PRIVACY_REVIEW,
    PRIVACY_REGIONS,
    PRIVATE_CAPTION,
    PUBLIC_CAPTION,
    EDIT_INSTRUCTION,
    TARGET_CAPTION,
    ANONYMIZATION,
    METADATA_REMOVED,
)
TRIPLET_COLUMNS = (PRIVATE_CAPTION, PUBLIC_CAPTION, EDIT_INSTRUCTION)

# values of anonymization.status
STATUS_PASSED = "passed"  # not flagged: image bytes kept (identifying metadata removed losslessly)
STATUS_EDITED = "edited"  # flagged: sensitive regions rewritten (and/or identifying metadata removed)
STATUS_FALLBACK = "fallback"  # flagged, the region edit failed: whole image replaced by the strongest lite edit
STATUS_FAILED = "failed"  # flagged and even the fallback failed: image emptied (None)
STATUS_INVALID = "invalid_input"  # undecodable, too large or missing: image emptied (None)
STATUSES = (STATUS_PASSED, STATUS_EDITED, STATUS_FALLBACK, STATUS_FAILED, STATUS_INVALID)

# values of anonymization.caption_source
CAPTION_TEMPLATE = "template"  # lite: captions written from templates over the detections, not by a model
CAPTION_VLM = "vlm"  # captions from the VLM; instruction from templates (no instructor configured)
CAPTION_VLM_LLM = "vlm+llm"  # captions from the VLM, edit instruction and target caption from the text LLM
CAPTION_NONE = "none"  # no caption could be written (invalid input)


def added_features():
    """``datasets.Features`` of the columns the transform adds."""
    from datasets import Features, List, Value

    return Features(
        {
            PRIVACY_FLAG: Value("bool"),
            PRIVACY_CATEGORIES: List(Value("string")),
            PRIVACY_REVIEW: List({"item": Value("string"), "reason": Value("string")}),
            PRIVACY_REGIONS: List(
                {
                    "label": Value("string"),
                    "category": Value("string"),
                    "box": List(Value("int32"), length=4),
                    "score": Value("float32"),
                    "source": Value("string"),
                }
            ),
            PRIVATE_CAPTION: Value("string"),
            PUBLIC_CAPTION: Value("string"),
            EDIT_INSTRUCTION: Value("string"),
            TARGET_CAPTION: Value("string"),
            ANONYMIZATION: {
                "status": Value("string"),
                "editor": Value("string"),
                "seed": Value("int64"),
                "caption_source": Value("string"),
                "error": Value("string"),
                "notes": List(Value("string")),
            },
            METADATA_REMOVED: List(Value("string")),
        }
    )
