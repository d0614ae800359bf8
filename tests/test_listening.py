"""The blind listening test: listen.html hides the models, keeps entries across reloads, saves through
evaluate.py --listen (or downloads from file://); the tally's numbers, its refusals, compare_runs."""
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from musicgen_lora.evaluation.listening import (
    KEY_FILE,
    MIN_PAIRED_UNITS,
    ForeignRatings,
    RatingsError,
    check_ratings,
    letters,
    listener_slug,
    read_key,
    tally_lines,
    tally_ratings,
    write_listening,
)
from musicgen_lora.evaluation.signals import chord_with_beat, note_sequence

from browser import chromium_session, find_chromium, media_state
from conftest import LORA, assert_one_line_error, run_script

SR = 32000
MODELS = ("alpha_model", "omega_model", "zeta_model")
PROMPTS = (("01_warm_pad", "warm analog pad"), ("02_trap", "dark trap beat with 808s"), ("03_piano", "lofi piano"))
NEEDS_CHROMIUM = pytest.mark.skipif(not all(find_chromium()),
                                    reason="chromium/chromedriver missing: run tests/setup.sh")


def write_clips(root: Path):
    """3 models x 3 prompts of 1.5 s chords with sidecars (prompt, id, seed); prompt 3 has a melody."""
    melody = root / "melodies" / "tune.wav"
    melody.parent.mkdir(parents=True)
    sf.write(melody, note_sequence(seconds_per_note=0.25), SR)
    for m, model in enumerate(MODELS):
        for i, (pid, text) in enumerate(PROMPTS):
            path = root / model / f"{pid}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, chord_with_beat(1.5, SR, 180 + 20 * i + 7 * m), SR)
            side = {"prompt": text, "prompt_id": pid, "seed": 7 + i, "sample": 0}
            if i == 2:
                side["melody_copy"] = "../melodies/tune.wav"
            path.with_suffix(".json").write_text(json.dumps(side))


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    """An evaluation of constructed clips through --score_only (no model to load): its blind page."""
    root = tmp_path_factory.mktemp("listening")
    write_clips(root / "clips")
    run_script("evaluate.py", "--score_only", "--input_dir", root / "clips", "--output_dir", root / "eval")
    return root / "eval"


def fresh_copy(evaluation, tmp_path) -> Path:
    """The evaluation, copied: each test saves its own ratings."""
    folder = tmp_path / "eval"
    shutil.copytree(evaluation, folder)
    return folder


def models_of(folder: Path) -> dict:
    return {g["id"]: {letter: c["model"] for letter, c in g["clips"].items()} for g in read_key(folder)["groups"]}


# --------------------------------------------------------------------------------------------
# The page and its key
# --------------------------------------------------------------------------------------------
def test_letters_and_listener_slugs():
    assert letters(3) == ["A", "B", "C"] and letters(28)[25:] == ["Z", "AA", "AB"]
    assert listener_slug("Jörg M.") == "Jorg-M" and listener_slug("../../etc/passwd") == "etc-passwd"
    assert listener_slug("  ") == "anonymous" and listener_slug("x" * 200) == "x" * 40


def test_write_listening_hides_names_links_clips_and_plays_references(tmp_path):
    """Clips become listen/<group>/<letter>.wav (hard links inside the folder, copies from outside);
    the reference continuation and the melody play unrated; the order follows the stored seed."""
    out, outside = tmp_path / "eval", tmp_path / "elsewhere"
    for folder in ("base_model", "best_model", "melodies", "references"):
        (out / folder).mkdir(parents=True)
    outside.mkdir()
    tone = chord_with_beat(0.5, SR)
    for rel in ("base_model/00_a.wav", "best_model/00_a.wav", "melodies/m.wav", "references/00_a.wav",
                "base_model/01_b.wav", "best_model/01_b.wav"):
        sf.write(out / rel, tone, SR)
    sf.write(outside / "01_b.wav", tone, SR)
    rows = [{"prompt_id": "00_a", "prompt": "a", "model": m, "wav": f"{m}/00_a.wav", "sample": 0,
             "melody": "melodies/m.wav", "reference_audio": "references/00_a.wav"}
            for m in ("base_model", "best_model")]
    rows += [{"prompt_id": "01_b", "prompt": "b", "model": m, "wav": f"{m}/01_b.wav", "sample": 0}
             for m in ("base_model", "best_model")]
    rows += [{"prompt_id": "01_b", "prompt": "b", "model": "far_model", "wav": "../elsewhere/01_b.wav", "sample": 0},
             {"prompt_id": "01_b", "model": "broken_model", "wav": "broken_model/01_b.wav", "error": "unreadable"}]
    summary = {"created": "2025-01-01T00:00:00+00:00"}
    page = write_listening(out, rows, summary, seed=1234)
    key = json.loads((out / KEY_FILE).read_text())
    g1, g2 = key["groups"]
    assert (g1["prompt_id"], sorted(g1["clips"]), g2["prompt_id"], sorted(g2["clips"])) == \
           ("00_a", ["A", "B"], "01_b", ["A", "B", "C"])  # the unreadable clip is left out
    assert [r["kind"] for r in g1["references"]] == ["reference", "melody"] and g2["references"] == []
    for g in key["groups"]:
        for clip in g["clips"].values():
            placed, source = out / clip["file"], (out / clip["wav"]).resolve()
            assert placed.read_bytes() == source.read_bytes()
            # A link costs no disk; a clip from outside is copied (a link would let the evaluation's
            # umask pass change the user's own file).
            assert os.path.samefile(placed, source) == (clip["model"] != "far_model"), clip
            assert clip["model"] not in clip["file"]
    text = page.read_text()
    for model in ("base_model", "best_model", "far_model", "broken_model", "melodies/", "references/"):
        assert model not in text, model
    assert 'src="listen/g01/reference.wav"' in text and 'src="listen/g01/melody.wav"' in text
    # The same seed draws the same order; the id follows the seed, so another draw is another evaluation.
    again = tmp_path / "again"
    shutil.copytree(out, again, ignore=shutil.ignore_patterns("listen*"))
    write_listening(again, rows, summary, seed=1234)
    assert json.loads((again / KEY_FILE).read_text()) == key
    write_listening(again, rows, summary, seed=99)
    assert json.loads((again / KEY_FILE).read_text())["evaluation_id"] != key["evaluation_id"]


@pytest.mark.slow
def test_every_evaluation_writes_the_blind_page_and_report_links_it(evaluation, tmp_path):
    key = read_key(evaluation)
    assert len(key["groups"]) == 3 and all(len(g["clips"]) == 3 for g in key["groups"])
    assert {c["model"] for g in key["groups"] for c in g["clips"].values()} == set(MODELS)
    assert [r["kind"] for r in key["groups"][2]["references"]] == ["melody"]
    summary = json.loads((evaluation / "summary.json").read_text())
    assert summary["listen_page"] == "listen.html"
    assert 'href="listen.html"' in (evaluation / "report.html").read_text()
    manifest = json.loads((evaluation / ".musicgen_lora.json").read_text())
    assert {"listen", "listen.html", KEY_FILE} <= set(manifest["paths"])  # an --overwrite removes them
    # Scoring a folder that holds an evaluation's blind copies does not score them again as a model
    # called "listen" (an evaluation of generated clips holds both).
    both = tmp_path / "both"
    shutil.copytree(evaluation.parent / "clips", both)
    shutil.copytree(evaluation / "listen", both / "listen")
    shutil.copy(evaluation / KEY_FILE, both)
    proc = run_script("evaluate.py", "--score_only", "--input_dir", both, "--output_dir", tmp_path / "again")
    assert set(json.loads((tmp_path / "again" / "summary.json").read_text())["models"]) == set(MODELS), proc.stdout


# --------------------------------------------------------------------------------------------
# Ratings and the tally
# --------------------------------------------------------------------------------------------
def test_check_ratings_takes_only_this_evaluations_well_formed_ratings(evaluation):
    key = read_key(evaluation)
    good = {"evaluation_id": key["evaluation_id"], "listener": "ann", "session": "s1",
            "groups": {"g01": {"ratings": {"A": 5, "B": 1}, "note": "A is warm"}}}
    clean = check_ratings(good, key)
    assert clean["groups"]["g01"]["ratings"] == {"A": 5, "B": 1} and "models" not in clean
    assert check_ratings({**good, "revealed": True}, key)["models"]["g01"] == models_of(evaluation)["g01"]
    with pytest.raises(ForeignRatings, match="not of this one"):
        check_ratings({**good, "evaluation_id": "0123456789abcdef"}, key)
    bad = [({"g09": {"ratings": {"A": 3}}}, "not in this evaluation"),
           ({"g01": {"ratings": {"Q": 3}}}, "no clip 'Q'"),
           ({"g01": {"ratings": {"A": 6}}}, "not a whole number 1..5"),
           ({"g01": {"ratings": {"A": True}}}, "not a whole number"),
           ({"g01": {"ratings": {"A": 2.5}}}, "not a whole number"),
           ({"g01": {"note": "x" * 10_000}}, "at most")]
    for groups, message in bad:
        with pytest.raises(RatingsError, match=message):
            check_ratings({**good, "groups": groups}, key)
    with pytest.raises(RatingsError, match="listener"):
        check_ratings({**good, "listener": " "}, key)


def test_read_ratings_counts_each_browser_once_and_reads_models_from_the_key(evaluation, tmp_path):
    """Every Save holds all of a listener's ratings so far: of one session's files only the latest
    counts (server time, else the page's); a file without a session is a listener of its own; a
    ratings file's own "models" is never read."""
    from musicgen_lora.evaluation.listening import observations, read_ratings

    folder = fresh_copy(evaluation, tmp_path)
    key = read_key(folder)
    (folder / "ratings").mkdir()

    def save(name, session, rating, **when):
        data = {"evaluation_id": key["evaluation_id"], "listener": "ann", "session": session,
                "groups": {"g01": {"ratings": {"A": rating}}}, "models": {"g01": {"A": "liar_model"}}, **when}
        (folder / "ratings" / name).write_text(json.dumps(data))

    save("a-1.json", "s1", 1, saved_at="2025-01-01T10:00:00+00:00")
    save("a-2.json", "s1", 4, time="2025-01-01T10:05:00.000Z")  # a download, later: this one counts
    save("a-3.json", "s1", 2, saved_at="2025-01-01T09:00:00+00:00")
    save("b.json", None, 5)
    ratings, warnings = read_ratings(folder, key)
    assert warnings == [] and sorted(r["file"] for r in ratings) == ["ratings/a-2.json", "ratings/b.json"]
    model = models_of(folder)["g01"]["A"]
    assert sorted(observations(ratings, key)) == [("ratings/b.json", "g01", model, 5), ("s1", "g01", model, 4)]


def scripted(per_model: dict[str, list[list[int]]]):
    """Observations from {model: [[ratings of listener 1 per prompt], [listener 2 ...]]}."""
    return [(f"listener{li}", f"g{gi}", model, r) for model, by_listener in per_model.items()
            for li, ratings in enumerate(by_listener) for gi, r in enumerate(ratings)]


def test_tally_separates_a_clear_winner_but_not_two_close_models():
    """2 listeners x 4 prompts: 'good' and 'close' differ by noise, 'bad' is rated low by both."""
    obs = scripted({"good": [[5, 4, 5, 4], [4, 4, 5, 5]],
                    "close": [[4, 5, 4, 4], [5, 4, 4, 5]],
                    "bad": [[2, 1, 2, 1], [1, 2, 2, 1]]})
    result = tally_ratings(obs)
    assert list(result["models"]) == ["good", "close", "bad"]  # best first
    good = result["models"]["good"]
    assert good["n"] == 8 and good["mean"] == pytest.approx(4.5)
    # t interval: 4.5 +- t(0.975, 7) * sd / sqrt(8), sd = 0.5345, t = 2.3646
    assert (good["low"], good["high"]) == (pytest.approx(4.5 - 0.4469, abs=1e-3), pytest.approx(4.5 + 0.4469, abs=1e-3))
    pairs = {(p["a"], p["b"]): p for p in result["pairs"]}
    assert not pairs[("good", "close")]["separated"] and pairs[("good", "close")]["low"] < 0 < \
           pairs[("good", "close")]["high"]
    assert pairs[("good", "bad")]["separated"] and pairs[("close", "bad")]["separated"]
    assert (pairs[("good", "bad")]["higher"], pairs[("good", "bad")]["tied"], pairs[("good", "bad")]["lower"]) == \
           (8, 0, 0)
    assert (result["units"], result["listeners"], result["groups"]) == (8, 2, 4)
    lines = tally_lines(result)
    assert any(line.startswith("good and close: cannot separate (the interval holds 0)") for line in lines)
    assert any(line.startswith("good > bad: difference +3.00") for line in lines)


def test_tally_edges_clamping_few_units_and_a_missing_model():
    # Ratings near the top: a t interval overshoots 5, the reported one stops there.
    top = tally_ratings(scripted({"a": [[5, 5, 4, 5]], "b": [[1, 1, 2, 1]]}))
    assert top["models"]["a"]["high"] == 5 and top["models"]["b"]["low"] == 1
    # Two paired units that agree: a zero-wide interval, but too few to call.
    two = tally_ratings(scripted({"a": [[5, 5]], "b": [[1, 1]]}))
    assert two["pairs"][0]["n"] == 2 < MIN_PAIRED_UNITS and not two["pairs"][0]["separated"]
    assert "too few paired units" in tally_lines(two)[-2]
    # One unit: a mean, no interval. Models never heard together cannot be compared.
    lone = tally_ratings([("x", "g1", "a", 4), ("x", "g2", "b", 2)])
    assert lone["models"]["a"]["low"] is None and lone["pairs"][0]["n"] == 0
    assert "no listener rated both on one prompt" in tally_lines(lone)[-2]


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------
@pytest.fixture()
def served(evaluation, tmp_path):
    """An in-process server on a free port over a copy of the evaluation: (folder, port)."""
    from musicgen_lora.evaluation.listen_server import make_server

    folder = fresh_copy(evaluation, tmp_path)
    server = make_server(folder, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, server.server_address[1]
    server.shutdown()
    server.server_close()


def request(port, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, dict(resp.getheaders()), data


def test_server_serves_the_page_and_blind_clips_only(served, tmp_path):
    folder, port = served
    status, headers, page = request(port, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b"Blind listening test" in page
    size = (folder / "listen" / "g01" / "A.wav").stat().st_size
    status, headers, data = request(port, "GET", "/listen/g01/A.wav", headers={"Range": "bytes=0-99"})
    assert (status, len(data), headers["Content-Range"], headers["Content-Type"]) == \
           (206, 100, f"bytes 0-99/{size}", "audio/wav")
    assert request(port, "GET", "/listen/g01/A.wav", headers={"Range": f"bytes={size}-"})[0] == 416
    (tmp_path / "secret.txt").write_text("secret")
    os.symlink(tmp_path / "secret.txt", folder / "listen" / "g01" / "out.wav")
    for path in ("/report.html", "/summary.json", f"/{KEY_FILE}", "/listen/../report.html", "/listen/g01/out.wav",
                 "/listen/%2e%2e/report.html", "/alpha_model/01_warm_pad.png", "/listen/g01"):
        assert request(port, "GET", path)[0] == 404, path


def test_server_saves_ratings_and_refuses_the_rest(served):
    folder, port = served
    key = read_key(folder)
    own = {"Content-Type": "application/json", "Host": f"127.0.0.1:{port}", "Origin": f"http://127.0.0.1:{port}"}
    body = {"evaluation_id": key["evaluation_id"], "listener": "Zoë Q", "session": "abc",
            "groups": {"g02": {"ratings": {"B": 4}, "note": "punchy"}}}

    def post(obj, headers=own):
        status, _, data = request(port, "POST", "/ratings", json.dumps(obj).encode(), headers)
        return status, json.loads(data)

    status, answer = post(body)
    assert status == 200 and answer["saved"].startswith("ratings/Zoe-Q-") and answer["ratings"] == 1
    saved = json.loads((folder / answer["saved"]).read_text())
    assert saved["groups"]["g02"] == {"prompt_id": "02_trap", "sample": 0, "ratings": {"B": 4}, "note": "punchy"}
    assert post(body)[1]["saved"] != answer["saved"]  # a second save in the same second: its own file
    assert post({**body, "evaluation_id": "0" * 16}) == (409, {"error": "ratings of evaluation '0000000000000000', "
                                                                   f"not of this one ({key['evaluation_id']}): "
                                                                   "reload the page"})
    assert post({**body, "groups": {"g02": {"ratings": {"B": 9}}}})[0] == 400
    assert post(body, {**own, "Origin": "http://evil.example"})[0] == 403
    assert post(body, {**own, "Host": "evil.example"})[0] == 403
    assert post(body, {**own, "Content-Type": "text/plain"})[0] == 415
    big = {**own, "Content-Length": str(10 ** 9)}
    assert request(port, "POST", "/ratings", b"{}", big)[0] == 413
    assert len(list((folder / "ratings").glob("*.json"))) == 2


# --------------------------------------------------------------------------------------------
# In a real browser
# --------------------------------------------------------------------------------------------
STATE_JS = """
return {
  html: document.documentElement.outerHTML,
  text: document.body.innerText,
  srcs: [...document.querySelectorAll('[src]')].map(e => e.getAttribute('src')),
  checked: [...document.querySelectorAll('.rating input:checked')].map(i => [i.name, i.value, i.disabled]),
  notes: [...document.querySelectorAll('textarea.note')].map(t => t.value),
  listener: document.getElementById('listener').value,
  progress: document.getElementById('progress').textContent,
  status: document.getElementById('status').textContent,
  saveShown: !document.getElementById('save').hidden,
  fileNote: !document.getElementById('file-note').hidden,
  names: [...document.querySelectorAll('.model-name')].map(s => [s.dataset.group, s.dataset.letter, s.textContent]),
};
"""
TYPE_JS = """
const [selector, value] = arguments;
const el = document.querySelector(selector);
el.value = value;
el.dispatchEvent(new Event('input', {bubbles: true}));
"""
CLICK_JS = "document.querySelector(arguments[0]).click();"
# Ratings the test gives, by model: alpha and omega close, zeta clearly worse.
SCRIPT = {"alpha_model": [5, 5, 4], "omega_model": [4, 5, 5], "zeta_model": [1, 2, 1]}


def rate_everything(browser, folder):
    for gi, (gid, by_letter) in enumerate(models_of(folder).items()):
        for letter, model in by_letter.items():
            browser.execute(CLICK_JS, f'input[name="{gid}-{letter}"][value="{SCRIPT[model][gi]}"]')


def wait_for(browser, script, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = browser.execute(script)
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for: {script}")


def assert_blind(page):
    for model in MODELS:
        assert model not in page["html"] and model not in page["text"], model
    assert page["srcs"] and all(s.startswith("listen/g0") for s in page["srcs"]), page["srcs"]


@pytest.mark.slow
@NEEDS_CHROMIUM
def test_blind_page_rate_reload_save_reveal_then_tally(evaluation, tmp_path):
    """Through `evaluate.py --listen`: nothing names a model, every entry survives a reload, Save
    writes ratings/, Reveal names the letters and locks them; then `evaluate.py --tally`."""
    folder = fresh_copy(evaluation, tmp_path)
    server = subprocess.Popen([sys.executable, str(LORA / "evaluate.py"), "--listen", str(folder), "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        line = server.stdout.readline()
        assert "serving the blind listening test" in line, line + server.stderr.read()
        url = line.split(" at ")[1].split()[0]
        with chromium_session() as browser:
            browser.get(url)
            state = media_state(browser)
            assert len(state["audio"]) == 10 and all(a["error"] is None and a["ready"] >= 1 for a in state["audio"])
            page = browser.execute(STATE_JS)
            assert_blind(page)
            assert page["saveShown"] and not page["fileNote"] and page["progress"].startswith("0 of 9 clips rated")
            assert "melody" in page["text"]  # prompt 3's melody plays above its clips, unrated
            browser.execute(TYPE_JS, "#listener", "Ann Example")
            rate_everything(browser, folder)
            browser.execute(TYPE_JS, 'textarea[data-group="g02"]', "B drags; C is thin")
            browser.screenshot(tmp_path / "listen.png")
            browser.get(url)  # reload: everything entered is still there
            page = browser.execute(STATE_JS)
            assert len(page["checked"]) == 9 and page["notes"][1] == "B drags; C is thin"
            assert page["listener"] == "Ann Example" and page["progress"].startswith("9 of 9 clips rated")
            assert_blind(page)
            browser.execute(CLICK_JS, "#save")
            status = wait_for(browser, "return document.getElementById('status').textContent.startsWith('saved') && "
                                       "document.getElementById('status').textContent")
            saved = sorted((folder / "ratings").glob("*.json"))
            assert len(saved) == 1 and saved[0].name.startswith("Ann-Example-") and saved[0].name in status
            browser.execute(CLICK_JS, "#reveal")
            assert_blind(browser.execute(STATE_JS))  # asking is not yet revealing
            browser.execute(CLICK_JS, "#reveal-yes")
            page = browser.execute(STATE_JS)
            mapping = models_of(folder)
            assert all(text == f"= {mapping[g][letter]}" for g, letter, text in page["names"])
            assert all(model in page["text"] for model in MODELS)
            assert all(disabled for *_, disabled in page["checked"])  # ratings locked once names are known
            # Revealing changes no rating: the page still says the ratings are saved (it said "not saved yet").
            assert "not saved yet" not in page["progress"] and saved[0].name in page["progress"], page["progress"]
            browser.execute(CLICK_JS, "#save")  # a later save of the same browser replaces the first in the tally
            wait_for(browser, "return document.getElementById('status').textContent.startsWith('saved')")
            browser.get(url)
            assert len(browser.execute(STATE_JS)["names"][0][2]) > 2  # still revealed after a reload
        assert len(list((folder / "ratings").glob("*.json"))) == 2
        print(f"blind page screenshot: {tmp_path / 'listen.png'}")
    finally:
        server.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop
        out, err = server.communicate(timeout=20)
    assert server.returncode == 0 and "stopped serving" in err and "Traceback" not in err, err
    # A file of another evaluation in ratings/ is left out with a warning, never mixed in.
    (folder / "ratings" / "other-20250101T000000Z.json").write_text(json.dumps(
        {"evaluation_id": "feedfacefeedface", "listener": "other", "groups": {"g01": {"ratings": {"A": 1}}}}))
    proc = run_script("evaluate.py", "--tally", folder)
    assert "warning: ratings/other-20250101T000000Z.json: ratings of evaluation 'feedfacefeedface'" in proc.stderr
    assert "an earlier save of" in proc.stderr  # the first save, superseded by the one after the reveal
    out = proc.stdout
    assert "1 listener(s), 3 prompt(s), 3 prompt x listener unit(s)" in out
    assert "alpha_model and omega_model: cannot separate (the interval holds 0)" in out
    assert "alpha_model > zeta_model: difference +3.33" in out and "omega_model > zeta_model" in out
    listening = json.loads((folder / "summary.json").read_text())["listening"]
    assert listening["models"]["alpha_model"]["mean"] == pytest.approx(14 / 3)
    assert listening["evaluation_id"] == read_key(folder)["evaluation_id"] and len(listening["files"]) == 1
    print(out)


DOWNLOAD_JS = """
window.__downloads = [];
const make = URL.createObjectURL.bind(URL);
URL.createObjectURL = blob => { blob.text().then(t => window.__downloads.push(t)); return make(blob); };
HTMLAnchorElement.prototype.click = function () { window.__downloadName = this.download; };
"""


@NEEDS_CHROMIUM
def test_file_page_downloads_ratings_the_tally_takes(evaluation, tmp_path):
    """From file:// there is no server: Save is hidden, Download JSON gives a file named like the
    server's, which the tally counts once put into ratings/."""
    folder = fresh_copy(evaluation, tmp_path)
    with chromium_session() as browser:
        browser.get((folder / "listen.html").as_uri())
        page = browser.execute(STATE_JS)
        assert_blind(page)
        assert not page["saveShown"] and page["fileNote"]
        browser.execute(CLICK_JS, "#download")  # no name yet: refused, with the reason
        assert "enter your name first" in browser.execute(STATE_JS)["status"]
        browser.execute(TYPE_JS, "#listener", "Bo")
        rate_everything(browser, folder)
        browser.execute(DOWNLOAD_JS)
        browser.execute(CLICK_JS, "#download")
        text = wait_for(browser, "return window.__downloads.length && window.__downloads[0]")
        name = browser.execute("return window.__downloadName")
    assert name.startswith("Bo-") and name.endswith("Z.json")
    (folder / "ratings").mkdir()
    (folder / "ratings" / name).write_text(text)
    data = json.loads(text)
    assert data["evaluation_id"] == read_key(folder)["evaluation_id"] and not data["revealed"]
    proc = run_script("evaluate.py", "--tally", folder)
    assert "alpha_model and omega_model: cannot separate" in proc.stdout


# --------------------------------------------------------------------------------------------
# Mistakes: one line each
# --------------------------------------------------------------------------------------------
def test_listen_and_tally_mistakes_are_one_clear_line(evaluation, tmp_path):
    folder = fresh_copy(evaluation, tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_one_line_error(run_script("evaluate.py", "--listen", tmp_path / "nope", check=False),
                          "nope: no such folder", "--listen")
    assert_one_line_error(run_script("evaluate.py", "--listen", empty, check=False),
                          "no listen.html", "--score_only --input_dir")
    assert_one_line_error(run_script("evaluate.py", "--listen", folder, "--port", 70000, check=False),
                          "--port", "from 0 (any free port) to 65535")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_one_line_error(run_script("evaluate.py", "--listen", folder, "--port", port, check=False),
                              f"--port {port}: already in use", "--port 0")
    assert_one_line_error(run_script("evaluate.py", "--port", 8001, check=False), "--port is read by --listen")
    assert_one_line_error(run_script("evaluate.py", "--listen", folder, "--tally", folder, check=False), "two steps")
    assert_one_line_error(run_script("evaluate.py", "--tally", folder, check=False),
                          f"{folder / 'ratings'}: no ratings of this evaluation", f"evaluate.py --listen {folder}")
    assert_one_line_error(run_script("evaluate.py", "--tally", empty, check=False), KEY_FILE, "--score_only")
    # Only another evaluation's ratings: each named, then the same one line.
    (folder / "ratings").mkdir()
    (folder / "ratings" / "x.json").write_text(json.dumps({"evaluation_id": "feedfacefeedface", "listener": "x",
                                                            "groups": {}}))
    (folder / "ratings" / "y.json").write_text("{not json")
    proc = run_script("evaluate.py", "--tally", folder, check=False)
    assert_one_line_error(proc, "no ratings of this evaluation (2 file(s) left out")
    assert "ratings/x.json: ratings of evaluation 'feedfacefeedface'" in proc.stderr and "ratings/y.json" in proc.stderr


# --------------------------------------------------------------------------------------------
# compare_runs
# --------------------------------------------------------------------------------------------
def test_compare_runs_shows_a_listening_column_once_tallied(tmp_path):
    from musicgen_lora.reporting.table import build_table, load_runs

    def run_dir(name, listening=None):
        run = tmp_path / name
        (run / "evaluation").mkdir(parents=True, exist_ok=True)
        (run / "run_config.json").write_text(json.dumps({"run_id": f"id-{name}", "lora_rank": 8}))
        models = {"base_model": {"num_clips": 3, "flag_counts": {}},
                  "best_model": {"num_clips": 3, "flag_counts": {}, "adapter_path": "x", "run_id": f"id-{name}"}}
        summary = {"models": models}
        if listening:
            summary["listening"] = listening
        (run / "evaluation" / "summary.json").write_text(json.dumps(summary))
        return run

    before = build_table(load_runs([run_dir("plain")]))[0]
    assert "listening" not in before  # no column until a blind test has been tallied
    result = tally_ratings(scripted({"best_model": [[5, 4, 5, 4]], "base_model": [[4, 5, 4, 5]],
                                     "other_run_model": [[1, 1, 1, 1]]}))
    header, rows = build_table(load_runs([run_dir("plain"), run_dir("rated", result)]))
    cells = {row[0]: dict(zip(header, row))["listening"] for row in rows}
    assert cells["plain"] == ""
    assert cells["rated"] == ("base_model 4.50 [3.58, 5.00] n=4; best_model 4.50 [3.58, 5.00] n=4 "
                              "(1 listener); cannot separate base_model and best_model")
    assert "other_run_model" not in cells["rated"]  # not this run's model: not in its row
    np.testing.assert_allclose(result["models"]["best_model"]["low"], 3.581, atol=1e-3)
