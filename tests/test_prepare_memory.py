"""Preparation memory does not grow with a track's length (issue 29): benchmarks.prepare_memory --quick
prepares a 20 s and a 5 min 44.1 kHz stereo track through both routes, each in its own process, and its
peak RSS ratio must stay within RATIO_LIMIT. Only the memory ratio is checked; its times are printed."""
import re

import pytest

from benchmarks.prepare_memory import RATIO_LIMIT

from conftest import run_script


@pytest.mark.slow
def test_peak_memory_of_a_5_min_track_is_that_of_a_20_s_one_on_both_routes(tmp_path):
    proc = run_script("benchmarks.prepare_memory", "--quick", "--work_dir", tmp_path, subprocess=True)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("peak RSS 20 s / 5 min"))
    ratios = dict(re.findall(r"(WAV route|--codes_only) ([0-9.]+)x", line))
    assert set(ratios) == {"WAV route", "--codes_only"}, line
    assert all(float(r) <= RATIO_LIMIT for r in ratios.values()), proc.stdout
