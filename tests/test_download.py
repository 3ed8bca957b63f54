"""rnnfast data download / check against a local HTTP server serving copies of the real files
(no internet here): checksums, resume of a partial file (HTTP Range, and a server that ignores
it), a corrupted file refused, a clear message when the server cannot be reached."""

import functools
import http.server
import os
import re
import shutil
import socket
import threading
from pathlib import Path

import pytest

from rnnfast.cli import main
from rnnfast.data import download as dl
from rnnfast.errors import UserError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.skipif(not (DATA / "SHA256SUMS").exists(), reason="needs ../shared/data")


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves ``bytes=N-`` ranges (206), as GitHub's raw file server does."""

    ranges = []

    def log_message(self, *a):
        pass

    def send_head(self):
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        path = self.translate_path(self.path)
        if not m or not os.path.isfile(path):
            return super().send_head()
        start = int(m.group(1))
        type(self).ranges.append((self.path, start))
        f = open(path, "rb")
        size = os.fstat(f.fileno()).st_size
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.send_header("Content-Length", str(size - start))
        self.end_headers()
        return f


@pytest.fixture
def server(tmp_path):
    """A mirror of ../shared/data over HTTP; yields (base URL, served folder)."""
    root = tmp_path / "served"
    for rel in [f.path for files in dl.DATASETS.values() for f in files]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DATA / rel, root / rel)
    RangeHandler.ranges = []
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(RangeHandler, directory=str(root)))
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()
    httpd.server_close()


def test_manifest_matches_the_checksum_file():
    sums = dict(reversed(line.split()) for line in (DATA / "SHA256SUMS").read_text().splitlines())
    for files in dl.DATASETS.values():
        for f in files:
            assert sums[f.path] == f.sha256 and (DATA / f.path).stat().st_size == f.size
            assert f.url.startswith("https://")
    for rel, digest in dl.OPTIONAL.items():
        assert sums[rel] == digest


def test_download_verifies_resumes_and_check_agrees(server, tmp_path, capsys, monkeypatch):
    base, _ = server
    to = tmp_path / "data"
    notts = to / "music" / "Nottingham.mat"
    notts.parent.mkdir(parents=True)
    # an interrupted earlier download: the first half of the file under its .part name
    half = (DATA / "music" / "Nottingham.mat").read_bytes()[:100_000]
    notts.with_name("Nottingham.mat.part").write_bytes(half)
    monkeypatch.setenv("RNNFAST_DATA_URL", base)
    assert main(["data", "download", "music", "--to", str(to), "--no-progress"]) == 0
    assert ("/music/Nottingham.mat", 100_000) in RangeHandler.ranges
    assert not list(to.rglob("*.part"))
    assert main(["data", "check", str(to), "--names", "music"]) == 0
    assert "all files ok" in capsys.readouterr().out
    # the default folder is $RNNFAST_DATA; ptb lands there
    monkeypatch.setenv("RNNFAST_DATA", str(tmp_path / "home"))
    assert dl.default_data_dir() == tmp_path / "home"
    files = dl.download(["ptb"], progress=False)
    assert [p.name for p in files] == ["ptb.char.train.txt", "ptb.char.valid.txt",
                                       "ptb.char.test.txt"]
    from rnnfast.data import load_ptb_chars

    assert len(load_ptb_chars(tmp_path / "home").vocab) == 50
    # a changed file is reported; the command exits 1
    (to / "music" / "JSB_Chorales.mat").write_bytes(b"not it")
    assert main(["data", "check", str(to), "--names", "music"]) == 1
    assert "mismatch JSB" in re.sub(r"\s+", " ", capsys.readouterr().out).replace(
        "music/", "")


def test_download_without_range_support_starts_over(server, tmp_path, monkeypatch):
    base, _ = server
    monkeypatch.setattr(RangeHandler, "send_head", http.server.SimpleHTTPRequestHandler.send_head)
    to = tmp_path / "d"
    part = to / "music" / "JSB_Chorales.mat.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 500)  # junk: a server that ignores Range sends the whole file
    dl.download(["music"], to, base_url=base, progress=False)
    assert dl.check(to, ["music"]) == [(f.path, "ok") for f in dl.DATASETS["music"]]


def test_corrupt_file_is_refused_and_offline_is_one_clear_line(server, tmp_path, capsys):
    base, root = server
    (root / "music" / "MuseData.mat").write_bytes(b"tampered")
    with pytest.raises(UserError, match="SHA-256"):
        dl.download(["music"], tmp_path / "d", base_url=base, progress=False)
    assert not (tmp_path / "d" / "music" / "MuseData.mat").exists()
    assert not (tmp_path / "d" / "music" / "MuseData.mat.part").exists()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc = main(["data", "download", "ptb", "--to", str(tmp_path / "e"), "--base-url",
               f"http://127.0.0.1:{port}", "--no-progress", "--timeout", "5"])
    err = capsys.readouterr().err
    assert rc == 2 and "offline" in err and len(err.strip().splitlines()) == 1
