"""Caltech101 (paper: classification utility). Anonymizes the training split; the test split stays original."""

from common import DatasetSpec, run

SPEC = DatasetSpec(name="Caltech101", image_column="image", splits=("train",), example_source="a local folder train/<category>/*.jpg")

if __name__ == "__main__":
    run(SPEC)
