"""A minimal W3C WebDriver client for headless Chromium (Debian's chromium + chromium-driver, installed
by tests/setup.sh). Plain urllib: the protocol is a handful of JSON calls, no extra package needed."""
import base64
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--autoplay-policy=no-user-gesture-required", "--window-size=1300,1800"]


def find_chromium():
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return browser, driver


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Session:
    def __init__(self, base: str, sid: str):
        self.base, self.sid = base, sid

    def _call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.base}/session/{self.sid}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read())["value"]

    def get(self, url):
        self._call("POST", "/url", {"url": url})

    def execute(self, script, *args):
        return self._call("POST", "/execute/sync", {"script": script, "args": list(args)})

    def screenshot(self, path: Path):
        Path(path).write_bytes(base64.b64decode(self._call("GET", "/screenshot")))


@contextmanager
def chromium_session():
    browser, driver = find_chromium()
    port = _free_port()
    profile = tempfile.mkdtemp(prefix="chromium-profile-")  # a fresh --user-data-dir per session
    proc = subprocess.Popen([driver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{base}/status", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": browser, "args": CHROMIUM_FLAGS + [f"--user-data-dir={profile}"]}}}}
        req = urllib.request.Request(f"{base}/session", data=json.dumps(caps).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            sid = json.loads(resp.read())["value"]["sessionId"]
        session = Session(base, sid)
        try:
            yield session
        finally:
            urllib.request.urlopen(urllib.request.Request(f"{base}/session/{sid}", method="DELETE"), timeout=30)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(profile, ignore_errors=True)


MEDIA_STATE_JS = """
return {
  audio: [...document.querySelectorAll('audio')].map(a => ({src: a.currentSrc, ready: a.readyState,
          error: a.error ? a.error.code : null, duration: a.duration})),
  img: [...document.querySelectorAll('img')].map(i => ({src: i.currentSrc, complete: i.complete,
        width: i.naturalWidth})),
  title: document.title,
  groups: document.querySelectorAll('section.prompt-group').length,
};
"""


def media_state(session, timeout=30.0):
    """Poll until every <audio> has its metadata (or failed) and every <img> finished loading."""
    deadline = time.time() + timeout
    while True:
        state = session.execute(MEDIA_STATE_JS)
        settled = (all(a["ready"] >= 1 or a["error"] for a in state["audio"])
                   and all(i["complete"] for i in state["img"]))
        if settled or time.time() > deadline:
            return state
        time.sleep(0.3)
