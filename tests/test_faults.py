"""Faults an adversarial user finds (issue 30, part 2): each is one line or a clear answer, nothing lost.
Deeply nested JSON anywhere we read it; the listening server under dropped connections, bursts, two
servers, SIGTERM and a full disk; a full disk while writing WAVs."""
import errno
import http.client
import json
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from test_listening import evaluation, write_clips  # noqa: F401 -- the fixture and its clips

from musicgen_lora.evaluation import listen_server
from musicgen_lora.evaluation.listening import read_key

from conftest import LORA, assert_one_line_error, run_script

DEEP = "[" * 100_000 + "]" * 100_000


def test_deeply_nested_metadata_is_one_line(tiny_model_dir, tmp_path):
    """100,000 levels of JSON raised RecursionError (a traceback) from metadata.json."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "metadata.json").write_text(DEEP)
    proc = run_script("train_lora.py", "--model_path", tiny_model_dir, "--data_dir", tmp_path / "data",
                      "--output_dir", tmp_path / "run", check=False)
    assert_one_line_error(proc, "metadata.json", "nested too deeply")


def test_a_deeply_nested_ratings_file_is_skipped_by_the_tally(evaluation, tmp_path):  # noqa: F811
    folder = tmp_path / "eval"
    shutil.copytree(evaluation, folder)
    (folder / "ratings").mkdir(exist_ok=True)
    (folder / "ratings" / "deep.json").write_text(DEEP)
    proc = run_script("evaluate.py", "--tally", folder, check=False)
    assert "Traceback" not in proc.stderr and "deep.json" in proc.stderr, proc.stderr


@pytest.fixture()
def server(evaluation, tmp_path):  # noqa: F811
    folder = tmp_path / "eval"
    shutil.copytree(evaluation, folder)
    srv = listen_server.make_server(folder, 0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield folder, srv
    srv.shutdown()
    srv.server_close()


def post(port, body: bytes):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.request("POST", "/ratings", body=body, headers={"Content-Type": "application/json",
                                                         "Host": f"127.0.0.1:{port}"})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, json.loads(data)


def ratings_body(folder, listener="Ana"):
    key = read_key(folder)
    return json.dumps({"evaluation_id": key["evaluation_id"], "listener": listener, "session": "s",
                       "groups": {"g01": {"ratings": {"A": 3}, "note": ""}}}).encode()


def test_the_server_answers_deep_json_with_400(server):
    folder, srv = server
    status, answer = post(srv.server_address[1], DEEP.encode())
    assert status == 400 and "nested too deeply" in answer["error"]


def test_a_dropped_connection_is_no_traceback(server, capsys):
    """Browsers' audio players drop connections while seeking: each printed a traceback."""
    import socket

    folder, srv = server
    port = srv.server_address[1]
    for _ in range(5):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /listen/g01/A.wav HTTP/1.1\r\nHost: x\r\n\r\n")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST on close
        s.close()
    time.sleep(0.5)
    assert post(port, ratings_body(folder))[0] == 200  # still serving
    assert "Traceback" not in capsys.readouterr().err


def test_a_burst_of_saves_and_two_servers_on_one_evaluation_lose_nothing(server, evaluation):  # noqa: F811
    """60 saves at once got 22 connection resets; two servers saving one listener in the same second
    wrote one file for two "saved" answers."""
    folder, srv = server
    other = listen_server.make_server(folder, 0)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        ports = [srv.server_address[1], other.server_address[1]]
        answers = [None] * 60

        def save(i):
            answers[i] = post(ports[i % 2], ratings_body(folder))

        threads = [threading.Thread(target=save, args=(i,)) for i in range(60)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        other.shutdown()
        other.server_close()
    assert [a[0] for a in answers] == [200] * 60
    saved = {a[1]["saved"] for a in answers}
    assert len(saved) == 60 and len(list((folder / "ratings").glob("*.json"))) == 60


def test_a_full_disk_on_save_is_a_clear_answer(server, monkeypatch):
    folder, srv = server

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "ratings"))

    monkeypatch.setattr(listen_server, "save_new", full)
    status, answer = post(srv.server_address[1], ratings_body(folder))
    assert status == 507 and "no space left on device" in answer["error"] and "press Save again" in answer["error"]


def test_sigterm_stops_the_server_with_143(evaluation, tmp_path):  # noqa: F811
    folder = tmp_path / "eval"
    shutil.copytree(evaluation, folder)
    proc = subprocess.Popen([sys.executable, str(LORA / "evaluate.py"), "--listen", str(folder), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert "serving the blind listening test" in line
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Traceback" not in err and err.strip().splitlines()[-1].startswith(
        "interrupted (SIGTERM)")


def test_a_full_disk_while_writing_wavs_is_one_line(tmp_path, monkeypatch):
    """libsndfile says only "System error." (a traceback) when the disk fills under a WAV write."""
    import soundfile as sf
    from test_collection import _wav

    from musicgen_lora.audio import writer

    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "a.wav").write_bytes(_wav(3.0, 220, 1))  # before soundfile's writer is made to fail

    def failing(*a, **k):
        raise sf.LibsndfileError(2, "System error.")

    monkeypatch.setattr(sf, "write", failing)
    monkeypatch.setattr(writer, "free_mb", lambda folder: 0.004)
    with pytest.raises(OSError) as e:
        writer.write_audio(tmp_path / "x.wav", np.zeros(100, np.float32), 32000)
    assert e.value.errno == errno.ENOSPC and str(tmp_path / "x.wav") in str(e.value)
    monkeypatch.setattr(writer, "free_mb", lambda folder: 10 ** 6)  # control: space left, not a full disk
    with pytest.raises(sf.LibsndfileError):
        writer.write_audio(tmp_path / "x.wav", np.zeros(100, np.float32), 32000)
    # Through a script: prepare_data.py's WAV route ends in the one disk-full line.
    monkeypatch.setattr(writer, "free_mb", lambda folder: 0.004)
    proc = run_script("prepare_data.py", "--input_dir", tmp_path / "raw", "--output_dir", tmp_path / "out",
                      "--default_description", "x", "--segment_duration", 1, "--no_progress", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no space left on device"), proc.stderr


# --------------------------------------------------------------------------------------------
# Sizes checked before anything is allocated; broken adapters named before generating
# --------------------------------------------------------------------------------------------
def test_a_window_or_clip_too_big_for_the_machine_is_one_line(tiny_model_dir, example_data_dir, tmp_path):
    """--target_duration 1e9 ended in an allocator traceback; inference --duration 1e9 ran until killed."""
    proc = run_script("train_lora.py", "--model_path", tiny_model_dir, "--data_dir", example_data_dir,
                      "--output_dir", tmp_path / "run", "--target_duration", 1e9, "--no_progress", check=False)
    assert_one_line_error(proc, "memory plan", "--target_duration 30")
    assert not (tmp_path / "run" / "logs").exists()
    proc = run_script("inference_lora.py", "--model_path", tiny_model_dir, "--prompts", "x", "--duration", 1e9,
                      "--output_dir", tmp_path / "gen", check=False)
    assert_one_line_error(proc, "--duration 1e+09", "generate at most")


def _adapter_copy(trained_run, tmp_path):
    src = trained_run[0] / "best_model"
    dst = tmp_path / "adapter"
    shutil.copytree(src, dst)
    return dst


def test_an_adapter_whose_config_rank_is_not_its_weights_is_refused_before_allocating(tiny_model_dir, trained_run,
                                                                                       tmp_path):
    adapter = _adapter_copy(trained_run, tmp_path)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["r"] = 100000
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    proc = run_script("inference_lora.py", "--model_path", tiny_model_dir, "--lora_model_path", adapter,
                      "--prompts", "x", "--duration", 0.5, "--output_dir", tmp_path / "gen", check=False)
    assert_one_line_error(proc, str(adapter), "rank 100000", "do not belong together")


def test_an_adapter_with_nan_weights_is_named_before_generating(tiny_model_dir, trained_run, tmp_path):
    from safetensors.torch import load_file, save_file

    adapter = _adapter_copy(trained_run, tmp_path)
    weights = load_file(adapter / "adapter_model.safetensors")
    name = sorted(weights)[0]
    weights[name][0, 0] = float("nan")
    save_file(weights, adapter / "adapter_model.safetensors")
    proc = run_script("inference_lora.py", "--model_path", tiny_model_dir, "--lora_model_path", adapter,
                      "--prompts", "x", "--duration", 0.5, "--output_dir", tmp_path / "gen", check=False)
    assert_one_line_error(proc, str(adapter), "NaN/inf", name)


# --------------------------------------------------------------------------------------------
# Smaller tracebacks: prompts files, seeds, tied tensors
# --------------------------------------------------------------------------------------------
def test_a_prompts_file_that_is_not_utf8_is_one_line(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes("caf\u00e9 beat\n".encode("latin-1"))
    proc = run_script("inference_lora.py", "--model_path", tiny_model_dir, "--prompts_file", prompts,
                      "--output_dir", tmp_path / "gen", check=False)
    assert_one_line_error(proc, str(prompts), "not UTF-8", "save the prompts file as UTF-8")


@pytest.mark.parametrize("where", ["flag", "file", "samples"])
def test_a_seed_past_2_63_is_one_line_before_the_model_loads(tmp_path, where):
    """A prompt seed >= 2^63 failed only after the model had loaded, inside sampling."""
    prompts = tmp_path / "prompts.json"
    seed = 2**63 if where != "samples" else 2**63 - 1
    prompts.write_text(json.dumps([{"prompt": "x", "seed": seed}] if where != "flag" else ["x"]))
    extra = ["--seed", 2**63] if where == "flag" else ["--num_samples", 2] if where == "samples" else []
    proc = run_script("inference_lora.py", "--model_path", tmp_path / "no_model_here", "--prompts_file", prompts,
                      "--output_dir", tmp_path / "gen", *extra, check=False)
    assert_one_line_error(proc, "2^63")  # said before any model is looked for (there is none)


def test_convert_adapter_copes_with_tied_tensors(trained_run, tmp_path):
    """safetensors refuses two names on one storage: the converter ended in a traceback."""
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "old_adapter"
    shutil.copytree(trained_run[0] / "best_model", folder)
    state = load_file(str(folder / "adapter_model.safetensors"))
    (folder / "adapter_model.safetensors").unlink()
    a, b = sorted(k for k in state if ".lora_A." in k)[:2]
    if state[a].shape == state[b].shape:
        state[b] = state[a]  # one tensor under two names, as a tied checkpoint holds them
    state["tied_alias"] = state[a]
    torch.save(state, folder / "adapter_model.bin")
    run_script("convert_adapter.py", folder)
    converted = load_file(str(folder / "adapter_model.safetensors"))
    assert converted.keys() == state.keys() and all(torch.equal(converted[k], state[k]) for k in state)
