"""Caltech101 (paper: classification utility). Anonymizes the training split; the test split stays original."""

from common import DatasetSpec, run

SPEC = DatasetSpec(name="Caltech101", image_column="image", splits=("train",), example_source="a local imagefolder of 101_ObjectCategories")

if __name__ == "__main__":
    run(SPEC)
