"""Downloads against a real HTTP server on 127.0.0.1: resume after a cut connection, checksums, offline."""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import threading
from pathlib import Path

import pytest

from ovss_cli.prepare.download import Checksum, ChecksumError, DownloadError, download

PAYLOAD = os.urandom(300_000)
MD5 = hashlib.md5(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at /file.bin. `cut_first` sends only part of the body on the first request."""

    cut_first = False
    honour_range = True
    requests: list = []

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        if self.path != "/file.bin":
            self.send_error(404)
            return
        type(self).requests.append(self.headers.get("Range"))
        first = len(type(self).requests) == 1
        start = 0
        header = self.headers.get("Range")
        if header and type(self).honour_range:
            start = int(header.split("=")[1].rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if first and type(self).cut_first:
            self.wfile.write(body[: len(body) // 3])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # the connection drops mid-transfer
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture()
def server():
    handler = type("Handler", (_Handler,), {"requests": [], "cut_first": False, "honour_range": True})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{httpd.server_address[1]}/file.bin"
    httpd.shutdown()
    httpd.server_close()


def test_download_verifies_md5(server, tmp_path: Path):
    handler, url = server
    target = download(url, tmp_path / "file.bin", Checksum("md5", MD5), progress=False)
    assert target.read_bytes() == PAYLOAD
    assert not (tmp_path / "file.bin.part").exists()
    assert handler.requests == [None]


def test_cut_connection_resumes_with_range(server, tmp_path: Path):
    handler, url = server
    handler.cut_first = True
    target = download(url, tmp_path / "file.bin", Checksum("sha256", hashlib.sha256(PAYLOAD).hexdigest()),
                      progress=False)
    assert target.read_bytes() == PAYLOAD
    assert handler.requests[0] is None
    resumed_at = int(handler.requests[1].split("=")[1].rstrip("-"))
    assert 0 < resumed_at < len(PAYLOAD)  # the second request continued, it did not start over


def test_resume_across_runs_from_part_file(server, tmp_path: Path):
    handler, url = server
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD[:1000])
    download(url, tmp_path / "file.bin", Checksum("md5", MD5), progress=False)
    assert handler.requests == ["bytes=1000-"]
    assert (tmp_path / "file.bin").read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts_cleanly(server, tmp_path: Path):
    handler, url = server
    handler.honour_range = False
    (tmp_path / "file.bin.part").write_bytes(b"stale bytes from another file")
    download(url, tmp_path / "file.bin", Checksum("md5", MD5), progress=False)
    assert (tmp_path / "file.bin").read_bytes() == PAYLOAD


def test_checksum_mismatch_deletes_the_file(server, tmp_path: Path):
    _, url = server
    with pytest.raises(ChecksumError, match="does not match"):
        download(url, tmp_path / "file.bin", Checksum("md5", "0" * 32), progress=False)
    assert not (tmp_path / "file.bin").exists()
    assert not (tmp_path / "file.bin.part").exists()


def test_unknown_hash_checks_the_announced_size(server, tmp_path: Path):
    _, url = server
    download(url, tmp_path / "file.bin", None, progress=False)
    assert (tmp_path / "file.bin").stat().st_size == len(PAYLOAD)


def test_http_error_and_offline_give_one_actionable_line(server, tmp_path: Path):
    _, url = server
    with pytest.raises(DownloadError, match="HTTP 404; put it in X") as err:
        download(url.replace("file.bin", "nothing"), tmp_path / "x", None, progress=False, manual_hint="put it in X")
    assert "\n" not in str(err.value)
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DownloadError, match="cannot reach .*put it in X"):
        download(f"http://127.0.0.1:{port}/f", tmp_path / "y", None, progress=False, manual_hint="put it in X")
