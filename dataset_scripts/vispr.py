"""VISPR (paper: flag recall). Every split is anonymized; a `vispr_private` column keeps the ground truth.

VISPR labels an image private when its attribute labels lack `a0_safe`. The source needs a `labels` column
(list of attribute ids), e.g. a folder per split whose metadata.jsonl has {"file_name": ..., "labels": [...]}.
"""

from common import DatasetSpec, run


def vispr_private(row: dict) -> dict:
    labels = row.get("labels")
    if labels is None:
        raise ValueError("VISPR rows need a `labels` column (list of attribute ids such as 'a0_safe')")
    return {"vispr_private": "a0_safe" not in labels}


SPEC = DatasetSpec(name="VISPR", image_column="image", splits=("train", "test"), add_columns=vispr_private, example_source="a local folder with train/ and test/, each holding its images and a metadata.jsonl")

if __name__ == "__main__":
    run(SPEC)
