"""benchmarks/gpu_check.py, the command a lent GPU runs first: proved here in its --quick CPU mode
(the tiny model), so it is known to work before a GPU's minutes are spent on it."""
import json

import pytest

from conftest import run_script


@pytest.mark.slow
def test_gpu_check_quick_reports_every_section(tmp_path):
    run_script("benchmarks.gpu_check", "--quick", "--output_dir", tmp_path / "report")
    report = json.loads((tmp_path / "report" / "gpu_check.json").read_text())
    assert not [name for name, s in report.items() if isinstance(s, dict) and "error" in s], report
    runs = report["train"]["runs"]
    assert len(runs) == 2 and all(not r["nan"] and r["loss_moved"] and r["s_per_step"] for r in runs)
    assert report["resume"]["bit_identical"] and report["teacher_forcing"]["percent"] == 100.0
    assert [g["batch"] for g in report["generation"]["runs"]] == [1, 8]
    assert all(report["memory_plans"][m] for m in ("musicgen-medium", "musicgen-large", "musicgen-stereo-large"))
    table = (tmp_path / "report" / "gpu_check.md").read_text()
    assert "| fp32-b1 |" in table and "**resume**" in table
    # A folder it did not make is never cleared.
    (tmp_path / "other" / "work").mkdir(parents=True)
    (tmp_path / "other" / "work" / "mine.txt").write_text("keep")
    proc = run_script("benchmarks.gpu_check", "--quick", "--output_dir", tmp_path / "other", check=False)
    assert proc.returncode == 2 and (tmp_path / "other" / "work" / "mine.txt").read_text() == "keep"
