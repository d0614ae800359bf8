"""compare_runs.py and the review gate on synthetic run directories and on a real tiny training run."""
import csv
import io
import json
import math
import os
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser

import pytest

from musicgen_lora.reporting.review import OVERFIT_RISE, SPIKE_FACTOR, find_spikes, review, review_lines
from musicgen_lora.reporting.table import epoch_losses, load_run, read_metrics

from conftest import SCRIPTS, run_script

LN_2048 = math.log(2048)


def _config(**kw):
    cfg = {"model_path": "/models/musicgen-small", "data_dir": "../data", "output_dir": "x", "lora_rank": 12,
           "lora_alpha": 24, "lora_dropout": 0.05, "learning_rate": 1e-4, "batch_size": 2,
           "gradient_accumulation_steps": 4, "num_epochs": 3, "warmup_steps": 3, "target_duration": 15.0,
           "max_duration": 15.0, "window_seconds": 15.0, "fp16": True, "seed": 42, "train_clips": 80,
           "valid_clips": 20, "steps_per_epoch": 10, "total_steps": 30, "warmup_steps_effective": 3,
           "uniform_loss": LN_2048, "model_vocab_size": 2048}
    cfg.update(kw)
    return cfg


def _records(base, train_by_epoch, valid_by_epoch, steps_per_epoch=10, seconds_per_step=0.5):
    """Train records every step and one eval per epoch end, like the trainer writes them."""
    recs = [{"type": "eval", "step": 0, "epoch": 0, "valid_loss": base, "uniform_loss": LN_2048, "time": 0.0}]
    step, t = 0, 5.0
    for epoch, losses in enumerate(train_by_epoch, 1):
        for loss in losses:
            step += 1
            t += seconds_per_step
            recs.append({"type": "train", "step": step, "epoch": epoch, "train_loss": loss, "learning_rate": 1e-4,
                         "grad_norm": 0.5, "samples_per_s": 16.0, "tokens_per_s": 12000.0,
                         "peak_memory_mb": 9000.0, "time": t})
        if epoch <= len(valid_by_epoch):
            t += 3.0  # validation pause: must not count in steps/s
            recs.append({"type": "eval", "step": step, "epoch": epoch, "valid_loss": valid_by_epoch[epoch - 1],
                         "time": t})
    return recs


def _write_run(path, config, records, finished=True, extra_lines=(), evaluation=None, age_minutes=60):
    (path / "logs").mkdir(parents=True)
    (path / "run_config.json").write_text(json.dumps(config))
    lines = [json.dumps(r) for r in records] + list(extra_lines)  # json writes NaN for float('nan')
    metrics = path / "logs" / "metrics.jsonl"
    metrics.write_text("\n".join(lines) + "\n")
    if finished:
        (path / "final_model").mkdir()
        (path / "best_model").mkdir()
        (path / "logs" / "summary.json").write_text(json.dumps({"base_valid_loss": records[0]["valid_loss"]}))
    if evaluation is not None:
        (path / "evaluation").mkdir()
        (path / "evaluation" / "summary.json").write_text(json.dumps(evaluation))
    old = time.time() - age_minutes * 60
    for written in (metrics, path / "run_config.json"):
        os.utime(written, (old, old))
    return path


def _falling(start, stop, n=10):
    return [start + (stop - start) * i / (n - 1) for i in range(n)]


HEALTHY_TRAIN = [_falling(5.9, 5.6), _falling(5.55, 5.4), _falling(5.38, 5.3)]
OVERFIT_TRAIN = [_falling(5.9, 5.5), _falling(5.4, 5.0), _falling(4.9, 4.5), _falling(4.4, 4.0)]


@pytest.fixture(scope="module")
def synthetic_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    healthy = _write_run(root / "output_healthy", _config(),
                         _records(6.0, HEALTHY_TRAIN, [5.7, 5.5, 5.45]),
                         evaluation={"models": {"base_model": {"num_clips": 8, "flag_counts": {"fades_out": 0}},
                                                "final_model": {"num_clips": 8, "verdict": "0/8 flagged, stable",
                                                                "flag_counts": {"fades_out": 0, "noisy": 0}}}})
    overfit = _write_run(root / "output_overfit", _config(lora_rank=32, lora_alpha=64, learning_rate=3e-4,
                                                          num_epochs=4, total_steps=40),
                         _records(6.0, OVERFIT_TRAIN, [5.6, 5.4, 5.6, 5.9]),
                         evaluation={"models": {"best_model": {"num_clips": 8, "verdict": "best_model: 2/8 fade out"},
                                                "final_model": {"num_clips": 8,
                                                                "flag_counts": {"fades_out": 6, "noisy": 1,
                                                                                "silent": 0}}}})
    # The seeds' gate run gone wrong: base above ln(2048), warm-up 50 of 10 steps, a NaN step, an
    # explicit nonfinite record, a spike, then a crash mid-write in epoch 2 of 3.
    crash_train = [[8.4, 8.3, 8.35, 8.3, 8.25, 8.3, float("nan"), 8.2, 8.2, 8.15], [8.1, 13.0, 8.0]]
    crash_recs = _records(8.19, crash_train, [8.12])
    crash_recs.insert(12, {"type": "nonfinite", "step": 9, "epoch": 1, "loss": float("inf"), "time": 9.0})
    crashed = _write_run(root / "output_crash", _config(warmup_steps=50, warmup_steps_effective=50, total_steps=30),
                         crash_recs, finished=False, extra_lines=['{"type": "train", "step": 14, "epo'])
    return root, healthy, overfit, crashed


def _md_table(text):
    """Rows of a markdown table as lists of cells (splitting on unescaped pipes)."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip().replace("\\|", "|") for c in line.strip().strip("|").replace("\\|", "\0").split("|")]
        rows.append([c.replace("\0", "|") for c in cells])
    header, sep, body = rows[0], rows[1], rows[2:]
    assert all(set(c) <= {"-", ":"} for c in sep)
    assert all(len(r) == len(header) for r in body), "every row has the header's columns"
    return [dict(zip(header, r)) for r in body]


def _arrows(values):
    return " → ".join(f"{v:.4f}" for v in values)


def _mean(xs):
    xs = [x for x in xs if math.isfinite(x)]
    return sum(xs) / len(xs)


def test_markdown_table_rows(synthetic_runs, tmp_path):
    root, healthy, overfit, crashed = synthetic_runs
    out = tmp_path / "report" / "runs.md"
    run_script("compare_runs.py", healthy, overfit, crashed, "--output", out)
    rows = {r["run"]: r for r in _md_table(out.read_text())}
    assert set(rows) == {"output_healthy", "output_overfit", "output_crash"}
    h, o, c = rows["output_healthy"], rows["output_overfit"], rows["output_crash"]
    # Only the differing hyper-parameters are columns: rank, alpha, lr, epochs, warm-up differ; dropout,
    # batch, accumulation and window are the same everywhere.
    assert {"rank", "alpha", "lr", "epochs", "warmup"} <= set(h)
    assert not {"dropout", "batch", "accum", "window s", "output_dir", "total_steps"} & set(h)
    assert (h["rank"], h["alpha"], h["lr"], h["warmup"]) == ("12", "24", "1e-4", "3")
    assert (o["rank"], o["lr"], o["epochs"], c["warmup"]) == ("32", "3e-4", "4", "50")
    assert [h["status"], o["status"], c["status"]] == ["finished", "finished", "crashed"]
    assert h["train loss / epoch"] == _arrows(_mean(e) for e in HEALTHY_TRAIN)
    assert h["valid loss / epoch"] == "5.7000 → 5.5000 → 5.4500"
    assert (h["best epoch"], h["best valid"]) == ("3", "5.4500")
    assert h["base valid (ln V)"] == f"6.0000 ({LN_2048:.4f})"
    assert h["steps/s"] == "2"  # 0.5 s per step; the 3 s validation pauses are excluded
    assert h["evaluation"] == "base_model: 0/8 flagged; final_model: 0/8 flagged, stable"
    assert o["valid loss / epoch"] == "5.6000 → 5.4000 → 5.6000 → 5.9000"
    assert (o["best epoch"], o["best valid"]) == ("2", "5.4000")
    assert o["evaluation"] == "best_model: 2/8 fade out; final_model: 6/8 fade out, 1/8 noisy"
    # The crashed run: NaN left out of the epoch mean, the cut-off line skipped with a note.
    assert c["train loss / epoch"] == f"{_mean([8.4, 8.3, 8.35, 8.3, 8.25, 8.3, 8.2, 8.2, 8.15]):.4f} → " \
                                      f"{_mean([8.1, 13.0, 8.0]):.4f}"
    assert c["valid loss / epoch"] == "8.1200"
    assert "skipped 1 malformed line(s) of metrics.jsonl (line 17)" in c["notes"]
    assert "stopped at step 13 of 30" in c["notes"]
    assert c["evaluation"] == ""
    plot = out.parent / "runs_curves.png"
    import matplotlib.image

    img = matplotlib.image.imread(plot)
    assert img.shape[0] > 200 and img.shape[1] > 300 and img[..., :3].std() > 0.05  # a drawn figure, not blank


def test_csv_parses_with_one_column_per_epoch(synthetic_runs, tmp_path):
    root, healthy, overfit, crashed = synthetic_runs
    out = tmp_path / "runs.csv"
    run_script("compare_runs.py", healthy, overfit, crashed, "--output", out, "--all", "--no_plot")
    rows = {r["run"]: r for r in csv.DictReader(io.StringIO(out.read_text()))}
    assert not (tmp_path / "runs_curves.png").exists()
    o = rows["output_overfit"]
    assert [float(o[f"valid e{e}"]) for e in range(1, 5)] == [5.6, 5.4, 5.6, 5.9]
    assert [round(float(o[f"train e{e}"]), 4) for e in range(1, 5)] == [round(_mean(e), 4) for e in OVERFIT_TRAIN]
    assert rows["output_healthy"]["valid e4"] == "" and rows["output_crash"]["valid e2"] == ""
    # --all shows the parameters that are equal everywhere too.
    assert o["dropout"] == "0.05" and o["batch"] == "2" and o["seed"] == "42" and o["window s"] == "15"
    assert o["total_steps"] == "40" and o["model_vocab_size"] == "2048" and "output_dir" not in o


def test_globs_stdout_and_runs_without_files(synthetic_runs, tmp_path):
    root, *_ = synthetic_runs
    work = tmp_path / "work"
    shutil.copytree(root, work / "runs")
    (work / "runs" / "output_notes.txt").write_text("not a run")
    (work / "runs" / "output_empty").mkdir()
    live = work / "runs" / "output_live"
    shutil.copytree(root / "output_crash", live)
    (live / "logs" / "metrics.jsonl").touch()  # written just now, no summary: still running
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    # The glob is quoted (no shell expansion): compare_runs expands it; the missing dir still gets a row.
    proc = subprocess.run([sys.executable, str(SCRIPTS / "compare_runs.py"), "runs/output_*", "runs/nope"],
                          cwd=work, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    rows = {r["run"]: r for r in _md_table(proc.stdout)}
    assert list(rows) == ["output_crash", "output_empty", "output_healthy", "output_live", "output_overfit",
                          "nope"]
    assert rows["output_live"]["status"] == "running" and "now at step 13 of 30" in rows["output_live"]["notes"]
    assert rows["output_empty"]["status"] == "incomplete"
    assert "no run_config.json" in rows["output_empty"]["notes"]
    assert rows["nope"]["status"] == "missing"
    assert (work / "runs_curves.png").is_file()  # printed to stdout -> plot in the current directory


class _Cells(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows, self._cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(self._cell)
            self._cell = None


def test_html_table_in_a_real_browser(synthetic_runs, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not browser:
        pytest.skip("no chromium on this machine")
    root, healthy, overfit, crashed = synthetic_runs
    out = tmp_path / "runs.html"
    run_script("compare_runs.py", healthy, overfit, crashed, "--output", out)
    md = tmp_path / "runs.md"
    run_script("compare_runs.py", healthy, overfit, crashed, "--output", md, "--no_plot")
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", out.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    parser = _Cells()
    parser.feed(dom)
    header, *body = parser.rows
    assert '<img src="runs_curves.png"' in dom and (tmp_path / "runs_curves.png").is_file()
    # The browser's DOM holds the same table as the markdown output, cell for cell.
    assert [dict(zip(header, r)) for r in body] == _md_table(md.read_text())


def _review_text(run_dir):
    return "\n".join(review_lines(run_dir))


def test_review_of_a_healthy_run(synthetic_runs):
    _, healthy, _, _ = synthetic_runs
    text = _review_text(healthy)
    assert text.startswith("review of output_healthy (finished):")
    assert f"step 0: base validation loss 6.0000 is below ln(vocab) = {LN_2048:.4f}" in text
    assert "best validation loss 5.4500 (epoch 3, step 30) is 9.2% below the base model's 6.0000" in text
    assert "no over-fitting" in text and "no loss spikes" in text and "no NaN" in text
    assert "warm-up 3 of 30 optimizer steps (10%) (80 clips / (batch 2 x accumulation 4) = 10 steps per epoch)" in text
    assert "throughput: 2 optimizer steps/s, 16 samples/s, 12000 tokens/s, peak memory 9000 MB" in text
    assert "warn" not in text
    assert text.splitlines()[-1].strip() == "ok    verdict: healthy run -- nothing in the logs needs attention"


def test_review_of_an_overfitting_run(synthetic_runs):
    _, _, overfit, _ = synthetic_runs
    text = _review_text(overfit)
    assert ("over-fitting: validation turned upward at epoch 3, step 30 -- from 5.4000 (epoch 2, step 20, its "
            "lowest) to 5.6000, 5.9000 at the end -- while training loss fell "
            f"{_mean(OVERFIT_TRAIN[1]):.4f} -> {_mean(OVERFIT_TRAIN[2]):.4f}") in text
    assert "evaluation final_model: 6/8 fade out, 1/8 noisy" in text
    assert "verdict: 2 thing(s) to look at" in text


def test_review_of_a_crashed_run_with_nan_and_spike(synthetic_runs):
    _, _, _, crashed = synthetic_runs
    # The same lines through the command line (stdout), as the user runs it.
    text = run_script("compare_runs.py", "--review", crashed).stdout
    assert text.startswith("review of output_crash (crashed):")
    assert "crashed or killed: the logs stop at step 13 of 30 and there is no logs/summary.json" in text
    assert "skipped 1 malformed line(s)" in text
    assert f"step 0: base validation loss 8.1900 is above ln(vocab) = {LN_2048:.4f}" in text
    assert "labels or data are wrong" in text
    assert "2 non-finite (NaN/inf) training step(s) at step 7, 9: lower --learning_rate (or --bf16" in text
    assert "1 loss spike(s) above 1.5x" in text and "step 12: 13.0000 = 1.6x the running mean 8.2550" in text
    assert ("warm-up 50 steps >= the run's 30 optimizer steps (80 clips / (batch 2 x accumulation 4) = 10 steps "
            "per epoch): the whole run is warm-up and the learning rate only reaches 6e-05 of the 0.0001") in text
    assert "verdict: 6 thing(s) to look at" in text


def test_thresholds_at_their_edges():
    steady = [{"type": "train", "step": i, "train_loss": 4.0} for i in range(1, 6)]
    at = steady + [{"type": "train", "step": 6, "train_loss": 4.0 * SPIKE_FACTOR}]
    above = steady + [{"type": "train", "step": 6, "train_loss": 4.0 * SPIKE_FACTOR * 1.01}]
    assert find_spikes(at)[0] == [] and find_spikes(at)[1] == (6, pytest.approx(SPIKE_FACTOR))
    assert [s for s, _, _ in find_spikes(above)[0]] == [6]


def _fit_run(tmp_path, name, valid, train):
    return load_run(_write_run(tmp_path / name, _config(num_epochs=len(valid), total_steps=10 * len(valid)),
                               _records(6.0, train, valid)))


def test_overfitting_threshold(tmp_path):
    train = [_falling(5.9, 5.5), _falling(5.4, 5.0), _falling(4.9, 4.5)]
    small_rise = _fit_run(tmp_path, "small", [5.5, 5.4, 5.4 * (1 + OVERFIT_RISE) - 1e-3], train)
    big_rise = _fit_run(tmp_path, "big", [5.5, 5.4, 5.4 * (1 + OVERFIT_RISE) + 1e-3], train)
    assert not any(f.text.startswith("over-fitting:") for f in review(small_rise))
    assert any(f.text.startswith("no over-fitting") for f in review(small_rise))
    assert any("over-fitting: validation turned upward at epoch 3" in f.text for f in review(big_rise))
    both_rise = _fit_run(tmp_path, "unstable", [5.5, 5.4, 5.8], [train[0], train[1], _falling(5.6, 5.8)])
    assert any(f.text.startswith("unstable: validation rose 5.4000 -> 5.8000") for f in review(both_rise))


def test_channels_column(synthetic_runs, tmp_path):
    """The model's audio channels from run_config.json's model_audio_channels; runs recorded before it
    was kept trained mono models (1); a run without run_config.json has none."""
    _, healthy, _, _ = synthetic_runs
    counts = {"fades_out": 0, "noisy": 0, "silent": 0, "clipping": 0, "collapsed_to_mono": 3, "phase_inverted": 0}
    stereo = _write_run(tmp_path / "output_stereo", _config(model_audio_channels=2, model_num_codebooks=8),
                        _records(6.0, HEALTHY_TRAIN, [5.7, 5.5, 5.45]),
                        evaluation={"models": {"final_model": {"num_clips": 8, "channels": 2, "flag_counts": counts}}})
    (tmp_path / "output_empty").mkdir()
    md, csv_out = tmp_path / "runs.md", tmp_path / "runs.csv"
    run_script("compare_runs.py", healthy, stereo, tmp_path / "output_empty", "--output", md, "--no_plot")
    run_script("compare_runs.py", healthy, stereo, "--output", csv_out, "--all", "--no_plot")
    text = md.read_text()
    assert text.splitlines()[0].startswith("| run | status | precision | channels |")
    rows = {r["run"]: r for r in _md_table(text)}
    assert [rows[n]["channels"] for n in ("output_healthy", "output_stereo", "output_empty")] == ["1", "2", ""]
    assert rows["output_stereo"]["evaluation"] == "final_model: 3/8 collapsed to mono"
    header = next(csv.reader(io.StringIO(csv_out.read_text())))
    assert header.count("channels") == 1 and "model_audio_channels" not in header  # one column, even with --all


def test_malformed_and_nan_lines(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"type": "train", "step": 1, "epoch": 1, "train_loss": NaN}\n'
                    'garbage\n\n[1, 2]\n{"type": "train", "step": 2, "epoch": 1, "train_loss": 3.5}\n'
                    '{"type": "train", "step": 3, "epoch": 1, "train_loss": Infinity}\n')
    records, notes = read_metrics(path)
    assert [r["step"] for r in records] == [1, 2, 3] and math.isnan(records[0]["train_loss"])
    assert notes == ["skipped 2 malformed line(s) of metrics.jsonl (line 2, 4)"]


def test_bad_command_lines(synthetic_runs, tmp_path):
    _, healthy, _, _ = synthetic_runs
    proc = run_script("compare_runs.py", healthy, "--output", tmp_path / "runs.txt", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: --output {tmp_path / 'runs.txt'}: use a .md, .csv or .html file name"]
    assert not (tmp_path / "runs.txt").exists()
    proc = run_script("compare_runs.py", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: no run directories given")


def test_real_training_run(trained_run, tmp_path):
    run_dir, output = trained_run
    # train_lora.py ends with the review gate.
    assert f"review of {run_dir.name} (finished):" in output
    assert "no NaN or infinite losses" in output and "verdict:" in output
    run = load_run(run_dir)
    records = [json.loads(line) for line in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    train, valid = epoch_losses(run)
    assert run.status == "finished" and list(valid) == [1, 2, 3]
    assert list(valid.values()) == [r["valid_loss"] for r in records if r["type"] == "eval" and r["step"] > 0]
    out = tmp_path / "real.csv"
    run_script("compare_runs.py", run_dir, "--output", out)
    row = next(csv.DictReader(io.StringIO(out.read_text())))
    assert row["status"] == "finished" and row["rank"] == "12"
    assert float(row["valid e3"]) == pytest.approx(valid[3], abs=1e-4)
    assert float(row["train e1"]) == pytest.approx(train[1], abs=1e-4)
    assert float(row["steps/s"]) > 0
    assert (tmp_path / "runs_curves.png").stat().st_size > 10_000


def test_base_at_uniform_is_a_note_only_for_random_weight_test_models(tmp_path):
    recs = _records(8.19, [_falling(8.1, 8.0)], [8.0])
    real = _write_run(tmp_path / "pretrained", _config(num_epochs=1, total_steps=10), recs)
    test_model = _write_run(tmp_path / "random", _config(num_epochs=1, total_steps=10, model_random_weights=True),
                            recs)
    assert "warn  step 0: base validation loss 8.1900 is above ln(vocab)" in _review_text(real)
    text = _review_text(test_model)
    assert "note  step 0: base validation loss 8.1900 is above ln(vocab)" in text and "random-weight" in text
    assert "warn  step 0" not in text


@pytest.mark.parametrize("total,warmup,warned,suggested", [
    (3, 1, True, 0),     # the shipped config on a 24-clip set: 3 steps; one warm-up step is a third of them
    (3, 0, False, None),  # ... following the advice: no warning
    (10, 50, True, 1),   # the seeds' gate: the whole run is warm-up
    (10, 1, False, None),
    (100, 30, True, 10),
    (100, 10, False, None),
])
def test_warmup_advice_is_reachable(tmp_path, total, warmup, warned, suggested):
    """A run that follows the review's warm-up advice gets no warm-up warning."""
    from musicgen_lora.reporting.review import check_warmup

    cfg = _config(total_steps=total, steps_per_epoch=total, num_epochs=1, warmup_steps=warmup,
                  warmup_steps_effective=warmup)
    (finding,) = check_warmup(load_run(_write_run(tmp_path / "r", cfg, _records(6.0, [[5.0] * total], [5.0],
                                                                                    steps_per_epoch=total))))
    assert (finding.level == "warn") == warned, finding.text
    if warned:
        assert finding.text.count(f"use --warmup_steps {suggested}") == 1 and suggested < warmup
