"""Plain dataclasses Stage 1 hands to Stage 2 and to the output row."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..columns import CAPTION_NONE


@dataclass
class Region:
    """One sensitive region, in pixel coordinates of the image as displayed (EXIF rotation applied)."""

    label: str  # detector label, e.g. "face", "text:phone_number"
    category: str  # taxonomy category id
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (x1/y1 exclusive), clipped to the image
    score: float
    source: str  # which detector produced it, e.g. "retinaface", "ppocr-det"
    text: str | None = None  # recognised text, kept for the private caption only
    # other categories that editing this region takes care of (a text line read as an address also covers
    # location_time; faces of a group cover interactions); its own category always counts
    covers: tuple[str, ...] = ()

    def covered(self) -> set[str]:
        return {self.category, *self.covers}

    def to_row(self) -> dict:
        return {"label": self.label, "category": self.category, "box": list(self.box), "score": float(self.score), "source": self.source}


@dataclass
class ReviewItem:
    item: str
    reason: str


@dataclass
class Inspection:
    """Everything Stage 1 says about one image."""

    flagged: bool
    categories: list[str] = field(default_factory=list)
    regions: list[Region] = field(default_factory=list)
    review: list[ReviewItem] = field(default_factory=list)
    private_caption: str = ""
    public_caption: str = ""
    edit_instruction: str = ""
    # one caption of the edited image, for single-prompt editors (the public caption merged with the instruction)
    target_caption: str = ""
    caption_source: str = "template"
    error: str | None = None  # set when inspection itself failed (the row is then flagged: fail closed)
    # categories that removing the file's metadata takes care of (GPS -> location_time, ...)
    metadata_categories: list[str] = field(default_factory=list)
    # what the stages dropped, clipped or fixed on the way (e.g. a VLM box of zero width), for the row's audit
    notes: list[str] = field(default_factory=list)

    def add(self, other: "Inspection") -> None:
        """Add another component's findings about the same image: flagged if either is; categories, regions, review,
        notes and metadata categories joined (these first); ``other``'s captions and instruction where it wrote any
        (``caption_source`` not ``none``); the first error kept."""
        self.flagged = self.flagged or other.flagged
        self.categories = list(dict.fromkeys(self.categories + other.categories))
        self.regions = self.regions + other.regions
        self.review = self.review + other.review
        self.notes = self.notes + other.notes
        self.metadata_categories = sorted(set(self.metadata_categories) | set(other.metadata_categories))
        if other.caption_source != CAPTION_NONE:
            self.private_caption, self.public_caption = other.private_caption, other.public_caption
            self.edit_instruction, self.target_caption = other.edit_instruction, other.target_caption
            self.caption_source = other.caption_source
        self.error = self.error or other.error

    def uncovered(self) -> list[str]:
        """Flagged categories that no region and no metadata removal takes care of: such a row cannot be edited
        region by region (fail closed: the whole image is edited)."""
        covered = set(self.metadata_categories)
        for region in self.regions:
            covered |= region.covered()
        return [c for c in self.categories if c not in covered]

    def require_coverage(self) -> None:
        """Fail closed: a flagged row with a category that nothing takes care of gets an error, so that the whole
        image is edited instead of only the regions that were found."""
        missing = self.uncovered() if self.flagged and self.error is None else []
        if missing:
            self.error = f"flagged {', '.join(missing)} without a located region: the whole image is edited"


def box_iou(a, b) -> float:
    """Intersection over union of two [x0, y0, x1, y1] boxes."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0
