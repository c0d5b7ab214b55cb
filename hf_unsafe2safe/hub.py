"""Cards and run records that travel with anonymized data."""

from __future__ import annotations

import json
from importlib import resources

from . import columns as C


def render_dataset_card(anonymize, source: str, summary: dict, title: str | None = None) -> str:
    """The dataset card (README.md) of an anonymized dataset, from ``cards/dataset_card.md``."""
    import jinja2
    from huggingface_hub import DatasetCardData

    template = resources.files("hf_unsafe2safe.cards").joinpath("dataset_card.md").read_text(encoding="utf-8")
    state = anonymize.fingerprint_state()
    # a DatasetDict summary is {split: summary}; the card shows the totals
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
    header = DatasetCardData(
        pretty_name=title or f"{source} (anonymized)",
        tags=["privacy", "anonymization", "unsafe2safe", f"unsafe2safe-{state['config']['preset']}"],
        task_categories=None,
    ).to_yaml()
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.from_string(template).render(
        yaml_header=header,
        title=title or f"{source} (anonymized)",
        source=source,
        version=state["version"],
        preset=state["config"]["preset"],
        summary=total,
        statuses=", ".join(C.STATUSES),
        config_json=json.dumps(state, indent=2, sort_keys=True),
    )
