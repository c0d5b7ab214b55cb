"""COCO captions (paper: captioning utility). Anonymizes the training split; validation stays original."""

from common import DatasetSpec, run

SPEC = DatasetSpec(name="COCO", image_column="image", splits=("train",), example_source="a save_to_disk copy of COCO 2017 with an `image` column")

if __name__ == "__main__":
    run(SPEC)
