"""benchmarks/bench_eval.py runs end to end on two pairs (a smoke run: every metric row measured, results written)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("dlib")
pytest.importorskip("rapidfuzz")


@pytest.fixture
def _restore_datasets_settings():
    """The script turns off datasets' caching, progress bars and logging for the whole process: undo that."""
    import datasets

    caching, bars, level = datasets.is_caching_enabled(), datasets.is_progress_bar_enabled(), datasets.logging.get_verbosity()
    yield
    datasets.enable_caching() if caching else datasets.disable_caching()
    datasets.enable_progress_bars() if bars else datasets.disable_progress_bars()
    datasets.logging.set_verbosity(level)


def test_bench_eval_smoke(tmp_path, monkeypatch, _restore_datasets_settings):
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_eval.py"
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts benchmarks/ on it
    spec = importlib.util.spec_from_file_location("bench_eval", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", ["bench_eval.py", "--images", "2", "--repeats", "1", "--skip-lpips", "--out", str(tmp_path)])
    module.main()
    results = json.loads((tmp_path / "results.json").read_text())
    measured = {row["metric"] for row in results["rows"] if "pairs_per_s" in row}
    assert {"FaceSim (faces)", "TextSim (text)", "SSIM / phash / regions (pixels)"} <= measured
    assert results["pairs"] == 2 and (tmp_path / "report" / "report.json").exists()
