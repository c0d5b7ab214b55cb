"""Cards and run records that travel with anonymized data (with the counts they carry, ``summarize``), and
publishing them to the Hugging Face Hub.

``publish`` pushes an anonymized ``Dataset`` / ``DatasetDict`` (the image column, the privacy columns and the
caption triplet) with its dataset card and run record to a dataset repository, private unless asked otherwise;
``load_dataset(repo_id)`` gives the rows back. It fails closed: a dataset that is not an anonymization output,
that still carries the original images, or whose statuses contradict its flags is refused before anything is
uploaded, and an existing repository is never switched between private and public.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from importlib import resources

from . import columns as C

RUN_RECORD = "unsafe2safe_run.json"
CARD = "README.md"


def run_record(anonymize, source: str, summary: dict, local: bool | None = None) -> dict:
    """What a run leaves beside its data: source, config, version, prompt/template hashes and the counts.
    ``local``: the source is a path on this machine (default: whether ``source`` exists here); a publication
    without the private text withholds such a path, which can name people as file names do."""
    if local is None:
        local = os.path.exists(source)
    return {"source": source, "source_local": bool(local), **anonymize.fingerprint_state(), "summary": summary}


def summarize(dataset) -> dict:
    """Counts per status and per category of an anonymized ``Dataset`` (or ``DatasetDict``)."""
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        return {name: summarize(part) for name, part in dataset.items()}
    table = dataset.select_columns([C.PRIVACY_FLAG, C.PRIVACY_CATEGORIES, C.ANONYMIZATION])
    statuses, categories = Counter(), Counter()
    flagged = 0
    for row in table.iter(batch_size=1000):
        flagged += sum(bool(f) for f in row[C.PRIVACY_FLAG])
        statuses.update(a["status"] for a in row[C.ANONYMIZATION])
        for cats in row[C.PRIVACY_CATEGORIES]:
            categories.update(cats)
    return {
        "rows": len(dataset),
        "flagged": flagged,
        "statuses": {s: statuses.get(s, 0) for s in C.STATUSES},
        "categories": dict(sorted(categories.items(), key=lambda kv: -kv[1])),
    }


def total_summary(summary: dict) -> dict:
    """A ``DatasetDict`` summary ({split: summary}) added up; a ``Dataset`` summary as it is."""
    parts = list(summary.values()) if "rows" not in summary else [summary]
    total = {
        "rows": sum(p["rows"] for p in parts),
        "flagged": sum(p["flagged"] for p in parts),
        "statuses": {s: sum(p["statuses"][s] for p in parts) for s in C.STATUSES},
        "categories": {},
    }
    for p in parts:
        for cat, n in p["categories"].items():
            total["categories"][cat] = total["categories"].get(cat, 0) + n
    return total


def evaluation_rows(report: dict) -> list[dict]:
    """The figures of an evaluation report (``report.json`` of ``unsafe2safe evaluate``) as card rows: name,
    value, interval, n, definition. Numbers only: no per-pair values, thumbnails or model answers, which
    describe the private originals."""
    rows = []
    for name, m in report.get("metrics", {}).items():
        value = m.get("value")
        if m.get("unavailable"):
            shown = "unavailable"
        elif value is None:
            shown = "n/a"
        else:
            shown = f"{value:.4f}"
        ci = m.get("ci95")
        rows.append({"name": name, "value": shown, "ci95": "-" if ci is None else f"[{ci[0]:.4f}, {ci[1]:.4f}]", "n": m.get("n", 0), "definition": m.get("definition", "")})
    return rows


def render_dataset_card(record: dict, title: str | None = None, repo_id: str | None = None, private_text: bool = True, report: dict | None = None, public: bool = False) -> str:
    """The dataset card (README.md) of an anonymized dataset from its run record (``run_record``), from
    ``cards/dataset_card.md``; with ``repo_id`` it shows how to load the published dataset, with ``report``
    (an evaluation's ``report.json``) the figures measured on it. ``private_text``: whether the publication holds
    the private text (see ``without_private_text``); ``public`` with it adds a warning at the top."""
    import jinja2
    from huggingface_hub import DatasetCardData

    template = resources.files("hf_unsafe2safe.cards").joinpath("dataset_card.md").read_text(encoding="utf-8")
    source = record["source"]
    preset = record["config"]["preset"]
    state = {k: v for k, v in record.items() if k not in ("source", "summary")}
    header = DatasetCardData(
        pretty_name=title or f"{source} (anonymized)",
        tags=["privacy", "anonymization", "unsafe2safe", f"unsafe2safe-{preset}"],
        task_categories=None,
    ).to_yaml()
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.from_string(template).render(
        yaml_header=header,
        title=title or f"{source} (anonymized)",
        source=source,
        version=record["version"],
        preset=preset,
        summary=total_summary(record["summary"]),
        statuses=", ".join(C.STATUSES),
        config_json=json.dumps(state, indent=2, sort_keys=True),
        repo_id=repo_id,
        private_text=private_text,
        public=public,
        evaluation=evaluation_rows(report) if report else [],
        evaluation_warnings=[f"{w['kind']}: {w['message']}" for w in (report or {}).get("warnings", [])],
        evaluated_pairs=(report or {}).get("pairs", 0),
        paper_differences=_paper_differences(record["config"]),
    )


def _paper_differences(config: dict) -> list[str]:
    """How a model run's configuration differs from the paper (``config.paper_differences``); none for lite, and
    none for a record that this version cannot read back (an older run)."""
    from .config import PipelineConfig, paper_differences

    if config.get("vlm") is None:
        return []
    try:
        return paper_differences(PipelineConfig.from_dict(config))
    except (TypeError, ValueError):
        return []


# The private text, which a publication holds only when its owner says so (``private_text``): everything that can
# quote what was found in the images (names, numbers, addresses read from them; a VLM's description of people):
# - the private caption (lite: the text read from the image; a VLM's: the sensitive attributes);
# - the privacy review (a VLM's items name and quote what it saw);
# - region labels a model wrote freely (a detector's labels and grounding phrases are a fixed vocabulary);
# - anonymization.error and .notes (an unusable answer is kept in the error; notes quote dropped items).
LOCAL_SOURCE = "a local dataset (its path is withheld from this publication)"
WITHHELD = "withheld from this publication (it can quote what was found in the image)"


def _fixed_labels() -> frozenset[str]:
    from .prompts import load_json
    from .taxonomy import load_taxonomy

    phrases = {q["phrase"] for q in load_json("grounding_queries.json")["queries"]}
    return frozenset(load_taxonomy().detector_labels) | phrases


def without_private_text(dataset):
    """The dataset without its private text (see above): ``private_caption`` and ``privacy_review`` removed,
    region labels outside the detectors' and grounder's vocabulary replaced by their category, ``error`` withheld
    and ``notes`` emptied. Statuses, flags, categories, boxes and the public captions stay."""
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        return datasets.DatasetDict({name: without_private_text(part) for name, part in dataset.items()})
    fixed = _fixed_labels()

    def redact(batch):
        regions = [[dict(r, label=r["label"] if r["label"] in fixed else r["category"]) for r in row] for row in batch[C.PRIVACY_REGIONS]]
        runs = [dict(a, error=None if a["error"] is None else WITHHELD, notes=[]) for a in batch[C.ANONYMIZATION]]
        return {C.PRIVACY_REGIONS: regions, C.ANONYMIZATION: runs}

    changed = [C.PRIVACY_REGIONS, C.ANONYMIZATION]
    order = [c for c in dataset.column_names if c not in (C.PRIVATE_CAPTION, C.PRIVACY_REVIEW)]
    # only the two small columns are rewritten, in memory: nothing lands in a cache folder, the images are not copied
    small = dataset.select_columns(changed).map(redact, batched=True, keep_in_memory=True, desc="leaving out private text")
    rest = dataset.remove_columns([c for c in (C.PRIVATE_CAPTION, C.PRIVACY_REVIEW, *changed) if c in dataset.column_names])
    return datasets.concatenate_datasets([rest, small], axis=1).select_columns(order)


class NotPublishable(ValueError):
    """The dataset must not be published as it is; the message says why and what to do."""


def check_publishable(dataset) -> None:
    """Refuse (``NotPublishable``) what must not reach the Hub: not an anonymization output, the original images
    still in it, or a flagged row whose status says it passed unchanged."""
    import datasets

    parts = dataset.items() if isinstance(dataset, datasets.DatasetDict) else [(None, dataset)]
    for name, part in parts:
        where = f"split {name!r}" if name else "the dataset"
        missing = [c for c in C.ADDED_COLUMNS if c not in part.column_names]
        if missing:
            raise NotPublishable(f"{where} is not an anonymization output (no column {missing[0]!r}): anonymize it first (`unsafe2safe anonymize` or `ds.map(anonymize)`)")
        if C.ORIGINAL_IMAGE in part.column_names:
            raise NotPublishable(f"{where} still holds the source images in {C.ORIGINAL_IMAGE!r} (keep_original is for local review): remove it first, e.g. ds.remove_columns({C.ORIGINAL_IMAGE!r})")
        table = part.select_columns([C.PRIVACY_FLAG, C.ANONYMIZATION])
        offset = 0
        for batch in table.iter(batch_size=1000):
            for i, (flag, info) in enumerate(zip(batch[C.PRIVACY_FLAG], batch[C.ANONYMIZATION])):
                status = (info or {}).get("status")
                if status not in C.STATUSES:
                    raise NotPublishable(f"row {offset + i} of {where} has no valid anonymization status ({status!r})")
                if flag and status == C.STATUS_PASSED:
                    raise NotPublishable(f"row {offset + i} of {where} is flagged but its status is 'passed' (the image would go out unchanged)")
            offset += len(batch[C.PRIVACY_FLAG])


@dataclass
class Published:
    repo_id: str
    url: str
    private: bool
    rows: int
    columns: list[str]


def publish(
    dataset,
    repo_id: str,
    anonymize=None,
    *,
    record: dict | None = None,
    source: str | None = None,
    private: bool = True,
    token: str | None = None,
    private_text: bool | None = None,
    title: str | None = None,
    commit_message: str | None = None,
    max_shard_size: str | int | None = None,
    report: dict | None = None,
) -> Published:
    """Push an anonymized dataset, its card and its run record to the dataset repository ``repo_id``.

    The run record comes from ``record`` (e.g. a saved ``unsafe2safe_run.json``) or from ``anonymize`` and
    ``source`` (counts from the dataset itself). The repository is created private unless ``private=False``; an
    existing one must already have the requested visibility. ``private_text`` (the private
    caption, the privacy review, free-text region labels, errors and notes, which can quote what was found in the
    images) is published by default in a private repository only: a public one gets it only with
    ``private_text=True``, and its card then says so at the top; ``private_text=False`` leaves it out of a private
    one too.
    ``report`` (an evaluation's ``report.json``, loaded) adds its figures to the card, numbers only.
    """
    import datasets
    from huggingface_hub import CommitOperationAdd, HfApi

    if (anonymize is None) == (record is None):
        raise ValueError("Got both or neither of `anonymize` and `record`; expected one: the transform that made the dataset, or its saved run record")
    check_publishable(dataset)
    if private_text is None:
        private_text = private
    if not private_text:
        dataset = without_private_text(dataset)
    if record is None:
        record = run_record(anonymize, source or "unknown source", summarize(dataset))
    if not private_text and record.get("source_local"):
        record = {**record, "source": LOCAL_SOURCE}

    api = HfApi(token=token)
    url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    repo_id = url.repo_id
    info = api.dataset_info(repo_id)
    if bool(info.private) != private:
        now, asked = ("private", "public") if info.private else ("public", "private")
        raise NotPublishable(f"{repo_id} exists and is {now}; refusing to push a dataset meant to be {asked} to it (change its visibility on the Hub first, or push to another repository)")

    card = render_dataset_card(record, title=title, repo_id=repo_id, private_text=private_text, report=report, public=not private)
    message = commit_message or f"Anonymized with hf_unsafe2safe {record['version']} ({record['config']['preset']} preset)"
    # the card first: push_to_hub keeps its text and adds the data files' metadata (configs, dataset_info) to it
    api.create_commit(
        repo_id,
        repo_type="dataset",
        operations=[
            CommitOperationAdd(CARD, card.encode("utf-8")),
            CommitOperationAdd(RUN_RECORD, json.dumps(record, indent=2, sort_keys=True).encode("utf-8")),
        ],
        commit_message=f"{message}: card and run record",
    )
    dataset.push_to_hub(repo_id, private=private, token=token, commit_message=message, max_shard_size=max_shard_size)
    parts = list(dataset.values()) if isinstance(dataset, datasets.DatasetDict) else [dataset]
    columns = list(parts[0].column_names) if parts else []
    return Published(repo_id=repo_id, url=str(url), private=private, rows=sum(len(p) for p in parts), columns=columns)


def publish_from_disk(path: str, repo_id: str, report_dir: str | None = None, **kwargs) -> Published:
    """``publish`` a folder written by ``unsafe2safe anonymize`` (``save_to_disk`` data + ``unsafe2safe_run.json``),
    with the figures of ``report_dir`` (written by ``unsafe2safe evaluate``) in the card when given."""
    import datasets

    if report_dir is not None:
        report_path = os.path.join(report_dir, "report.json")
        if not os.path.isfile(report_path):
            raise NotPublishable(f"{report_dir!r} has no report.json: it is not a folder written by `unsafe2safe evaluate --report`")
        with open(report_path, encoding="utf-8") as f:
            kwargs["report"] = json.load(f)

    record_path = os.path.join(path, RUN_RECORD)
    if not os.path.isfile(record_path):
        raise NotPublishable(f"{path!r} has no {RUN_RECORD}: it is not a folder written by `unsafe2safe anonymize`")
    with open(record_path, encoding="utf-8") as f:
        record = json.load(f)
    return publish(datasets.load_from_disk(path), repo_id, record=record, **kwargs)
