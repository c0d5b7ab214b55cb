"""The report's first lines tell a real anonymization from a copy of the originals and from a blackout, on the demo
photos, with the default offline metrics (privacy + cheating)."""

import io
import json

import datasets
import pytest

from hf_unsafe2safe import columns as C

pytest.importorskip("dlib")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from PIL import Image

    from hf_unsafe2safe import Unsafe2Safe, anonymize_dataset
    from hf_unsafe2safe.demo import build_demo_dataset

    root = tmp_path_factory.mktemp("warnings")
    source = build_demo_dataset()
    lite = anonymize_dataset(source, Unsafe2Safe.from_preset("lite"))
    raw = datasets.Image(decode=False)
    originals = source.cast_column("image", raw)["image"]
    flags = lite[C.PRIVACY_FLAG]

    def black(cell):
        size = Image.open(io.BytesIO(cell["bytes"])).size
        buf = io.BytesIO()
        Image.new("RGB", size).save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": None}

    def with_images(images):
        return lite.cast_column("image", raw).remove_columns("image").add_column("image", images, feature=raw).cast_column("image", datasets.Image())

    copies = with_images(originals)  # "anonymized" = the originals, with the run's columns
    blackout = with_images([black(c) if f else c for c, f in zip(originals, flags)])
    source.save_to_disk(str(root / "source"))
    for name, ds in (("lite", lite), ("copy", copies), ("blackout", blackout)):
        ds.save_to_disk(str(root / name))
    return root


def _report(runs, name, tmp_path, capsys):
    from hf_unsafe2safe.cli import main

    out = tmp_path / f"report-{name}"
    assert main(["evaluate", "--original", str(runs / "source"), "--anonymized", str(runs / name), "--report", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    first = (out / "report.md").read_text().splitlines()[:12]
    return report, printed, first


def _kinds(report):
    return {w["kind"] for w in report["warnings"]}


def test_a_lite_run_has_no_over_edit_warning(runs, tmp_path, capsys):
    report, printed, first = _report(runs, "lite", tmp_path, capsys)
    assert "over-edit" not in _kinds(report) and "copy" not in _kinds(report) and "privacy-leak" not in _kinds(report)
    assert {w["message"].split(" was")[0] for w in report["warnings"] if w["kind"] == "unmeasured"} == {"quality", "utility"}  # not asked for


def test_the_originals_themselves_read_as_a_copy_that_leaks(runs, tmp_path, capsys):
    report, printed, first = _report(runs, "copy", tmp_path, capsys)
    assert {"copy", "privacy-leak"} <= _kinds(report)
    assert "WARNING copy" in printed and "WARNING privacy-leak" in printed
    assert any("**copy**" in line for line in first) and any("**privacy-leak**" in line for line in first)


def test_a_blackout_reads_as_an_over_edit_and_agrees_on_nobody(runs, tmp_path, capsys):
    report, printed, first = _report(runs, "blackout", tmp_path, capsys)
    assert "over-edit" in _kinds(report) and "WARNING over-edit" in printed
    assert any("**over-edit**" in line for line in first)
    for name in ("gender_agreement", "age_agreement"):
        m = report["metrics"].get(name)
        if m is not None:
            assert m["value"] != 1.0, (name, m)  # no demographics read from black pixels
