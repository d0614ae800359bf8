"""evaluate.py --listen: serve an evaluation's blind page on localhost with the standard library, and
take the ratings it saves (for browsers that keep nothing, or block downloads, from file://).

What is served, and nothing else: listen.html (also at /) and the files under listen/ -- the blind
clips -- by GET or HEAD, with byte ranges so a player can seek; POST /ratings writes
ratings/<listener>-<UTC time>.json into the evaluation atomically. Not report.html, summary.json or
the key: they name the models. Paths are resolved and must stay inside the folder (a symlink out is a
404). Bound to 127.0.0.1; a POST must come from this server's own page (Host and Origin checked, a
JSON content type, which a cross-site form cannot send without asking first), fit MAX_RATINGS_BYTES
and carry this evaluation's id.
"""
from __future__ import annotations

import errno
import json
import mimetypes
import os
import re
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from musicgen_lora.core.common import UserError, log, parse_json
from musicgen_lora.core.outputs import apply_umask, disk_full_reason, temp_path
from musicgen_lora.evaluation.listening import (
    CLIPS_DIR,
    MAX_RATINGS_BYTES,
    PAGE,
    RATINGS_DIR,
    ForeignRatings,
    check_ratings,
    ratings_filename,
    read_key,
)

HOST = "127.0.0.1"  # this machine only: the page and the ratings are nobody else's business
DEFAULT_PORT = 8000
AUDIO_TYPES = {".wav": "audio/wav", ".flac": "audio/flac", ".mp3": "audio/mpeg", ".ogg": "audio/ogg"}
CHUNK = 1 << 16
_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


def check_folder(folder: Path) -> Path:
    """The evaluation folder to serve, or one error line saying what to pass instead."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder; pass --listen an evaluation folder (evaluate.py --output_dir)")
    if not (folder / PAGE).is_file():
        raise UserError(f"{folder}: no {PAGE}; pass --listen an evaluation folder written by evaluate.py (an older "
                        f"evaluation gets one from evaluate.py --score_only --input_dir {folder} --output_dir "
                        f"{folder.name}_blind)")
    read_key(folder)  # a page without its key could not take ratings: say so now, not on the first Save
    return folder


class ListenHandler(BaseHTTPRequestHandler):
    server_version = "musicgen-lora-listen"
    root: Path  # set on the subclass make_server builds

    def log_message(self, format, *args):  # noqa: A002 -- BaseHTTPRequestHandler's signature
        log.debug("listen: " + format % args)

    # --- reading ---------------------------------------------------------------------------------
    def _target(self) -> Path | None:
        """The file a GET path names, if it is one the page needs and lies inside the folder."""
        path = unquote(urlsplit(self.path).path)
        if path in ("/", f"/{PAGE}"):
            rel = [PAGE]
        else:
            rel = path.lstrip("/").split("/")
            if len(rel) < 2 or rel[0] != CLIPS_DIR or any(p in ("", ".", "..") or "\0" in p for p in rel):
                return None
        root = os.path.realpath(self.root)
        real = os.path.realpath(os.path.join(root, *rel))
        if os.path.commonpath([root, real]) != root or not os.path.isfile(real):
            return None  # a symlink that leads out of the folder is as good as missing
        return Path(real)

    def do_HEAD(self):
        self.do_GET(body=False)

    def do_GET(self, body: bool = True):
        target = self._target()
        if target is None:
            return self._json(HTTPStatus.NOT_FOUND, {"error": "not found"}, body)
        size = target.stat().st_size
        start, end = 0, size - 1
        status = HTTPStatus.OK
        wanted = _RANGE.match(self.headers.get("Range", "").strip())
        if wanted and (wanted[1] or wanted[2]):  # one range; a player asks for one at a time
            if wanted[1]:
                start, end = int(wanted[1]), min(int(wanted[2]) if wanted[2] else size - 1, size - 1)
            else:
                start = max(size - int(wanted[2]), 0)
            if start > end or start >= size:
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = HTTPStatus.PARTIAL_CONTENT
        kind = AUDIO_TYPES.get(target.suffix.lower()) or (
            "text/html; charset=utf-8" if target.suffix == ".html" else mimetypes.guess_type(target.name)[0]
            or "application/octet-stream")
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Cache-Control", "no-store")  # a new evaluation in the folder shows at once
        self.send_header("X-Content-Type-Options", "nosniff")
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if not body:
            return
        with open(target, "rb") as f:
            f.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)

    # --- saving ----------------------------------------------------------------------------------
    def _json(self, status, obj, body: bool = True):
        data = (json.dumps(obj) + "\n").encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _own_origin(self) -> bool:
        """The request comes from this server's page: Host names it (no DNS rebinding) and so does
        Origin, when the browser sends one."""
        port = self.server.server_address[1]
        allowed = {f"{HOST}:{port}", f"localhost:{port}"}
        origin = self.headers.get("Origin")
        return self.headers.get("Host") in allowed and (origin is None or origin in {f"http://{a}" for a in allowed})

    def do_POST(self):
        if urlsplit(self.path).path != f"/{RATINGS_DIR}":
            return self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})
        if not self._own_origin():
            return self._json(HTTPStatus.FORBIDDEN, {"error": "ratings are taken from this server's own page only"})
        if not self.headers.get("Content-Type", "").startswith("application/json"):
            return self._json(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                              {"error": "send JSON (Content-Type: application/json)"})
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self._json(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length required"})
        if length < 0 or length > MAX_RATINGS_BYTES:
            self.close_connection = True  # the body is not read: the connection cannot be reused
            return self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                              {"error": f"ratings larger than {MAX_RATINGS_BYTES} bytes refused"})
        try:
            data = parse_json(self.rfile.read(length).decode("utf-8"))
            key = read_key(self.root)  # read now: the folder may hold a new evaluation since the server started
            clean = check_ratings(data, key)
        except ForeignRatings as e:
            return self._json(HTTPStatus.CONFLICT, {"error": f"{e}: reload the page"})
        except (ValueError, UserError) as e:  # bad JSON, bad UTF-8, RatingsError, a key gone bad
            return self._json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
        saved_at = datetime.now(timezone.utc)
        clean["saved_at"] = saved_at.isoformat(timespec="seconds")
        try:
            name = save_new(self.root / RATINGS_DIR, ratings_filename(clean["listener"], saved_at), clean)
        except OSError as e:  # the page keeps the ratings: say why, so the listener can press Save again
            reason = disk_full_reason(e) or e.strerror or str(e)
            log.warning(f"warning: could not save ratings into {self.root / RATINGS_DIR}: {reason}")
            return self._json(HTTPStatus.INSUFFICIENT_STORAGE if disk_full_reason(e) else
                              HTTPStatus.INTERNAL_SERVER_ERROR,
                              {"error": f"not saved ({reason}); the page keeps your ratings: free some space and "
                                        f"press Save again"})
        rated = sum(len(g["ratings"]) for g in clean["groups"].values())
        log.info(f"saved {RATINGS_DIR}/{name} ({clean['listener']}: {rated} rating(s))")
        return self._json(HTTPStatus.OK, {"saved": f"{RATINGS_DIR}/{name}", "ratings": rated})


def save_new(folder: Path, name: str, obj) -> str:
    """Write obj as folder/name -- or name-2, name-3 ... when taken -- never replacing a file: the JSON is
    written to a temp file and hard-linked to the name, which fails if the name exists, also when
    another server (another process) on the same evaluation saves the same listener in the same
    second. Returns the name used."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(folder / name)
    try:
        tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
        apply_umask(tmp, is_dir=False)
        n = 1
        while True:
            try:
                os.link(tmp, folder / name)
                return name
            except FileExistsError:
                n += 1
                name = re.sub(r"(-\d+)?\.json$", f"-{n}.json", name)
    finally:
        tmp.unlink(missing_ok=True)


class ListenServer(ThreadingHTTPServer):
    daemon_threads = True  # a player's open connection never holds up Ctrl-C
    request_queue_size = 128  # the default 5 reset connections under a burst of saves and seeks

    def handle_error(self, request, client_address):
        """A browser's audio player drops connections all the time while seeking: not an error. Anything
        else is one warning line, and the server goes on."""
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        log.warning(f"warning: listen server: {type(exc).__name__}: {exc} (request from {client_address[0]})")


def make_server(folder: Path, port: int = DEFAULT_PORT) -> ThreadingHTTPServer:
    """A server for one evaluation folder, bound to 127.0.0.1 (port 0: any free port); not started."""
    folder = check_folder(folder)
    handler = type("Handler", (ListenHandler,), {"root": folder.resolve()})
    try:
        server = ListenServer((HOST, port), handler)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise UserError(f"--port {port}: already in use on {HOST}; pass another --port, or --port 0 for any "
                            f"free one") from None
        if e.errno == errno.EACCES:
            raise UserError(f"--port {port}: not allowed for this user (ports below 1024 need root); pass --port "
                            f"{DEFAULT_PORT}, or 0 for any free one") from None
        raise
    return server


def serve(folder: Path, port: int = DEFAULT_PORT):
    """Serve until Ctrl-C (or SIGTERM), then stop cleanly."""
    server = make_server(folder, port)
    url = f"http://{HOST}:{server.server_address[1]}/"
    print(f"serving the blind listening test of {folder} at {url} (Ctrl-C stops); saved ratings go to "
          f"{Path(folder) / RATINGS_DIR}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt as e:
        log.info(f"stopped serving {folder}; count the ratings with: evaluate.py --tally {folder}")
        if getattr(e, "signum", None) is not None:  # SIGTERM: a supervisor stopped it; it ends as 143 says
            raise
    finally:
        server.server_close()
