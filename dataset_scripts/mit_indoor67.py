"""MIT Indoor67 (paper: scene classification utility). Anonymizes the training split; the test split stays original."""

from common import DatasetSpec, run

SPEC = DatasetSpec(name="MIT Indoor67", image_column="image", splits=("train",), example_source="a local folder train/<scene>/*.jpg")

if __name__ == "__main__":
    run(SPEC)
