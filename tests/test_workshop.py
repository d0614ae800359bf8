"""The workshop benchmarks that measure the code store (benchmarks/train.py, benchmarks/store.py), run
in their --quick mode so a change to the store's API cannot leave them broken unnoticed (both were,
when the per-clip cache was removed). Their figures are not checked: only that every section ran."""
import pytest

from conftest import run_script


@pytest.mark.slow
def test_train_benchmark_quick_runs_every_section(tmp_path):
    out = run_script("benchmarks.train", "--quick", "--work_dir", tmp_path).stdout
    for line in ("tiny       2 audio", "tiny       2 store", "store/audio =", "pre-tokenisation (store_update",
                 "finding 20 cached 1 s clips in the store", "ratio 300 / 100 clips"):
        assert line in out, out
    # The peak-RSS children found every clip in the store by the memo: nothing encoded nor hashed.
    assert out.count("0 encoded, 0 hashed") == 2, out


@pytest.mark.slow
def test_store_benchmark_quick_runs_every_section(tmp_path):
    out = run_script("benchmarks.store", "--quick", "--work_dir", tmp_path).stdout
    for line in ("synthetic store: 5,000 clips", "open 5,000 clips", "peak RSS after opening",
                 "a safetensors file per clip read whole", "descriptions of all", "disk per hour of audio"):
        assert line in out, out
