"""The rendered gallery opens in a real (headless) Chromium: every image decodes, every
<audio> element gets playable metadata, from disk (file://) and over loopback HTTP.

Chromium is driven through the DevTools protocol with the `websockets` client that Prefect
already depends on, so the check runs on the page exactly as a user opens it.
"""

from __future__ import annotations

import functools
import http.server
import itertools
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from gan.models import build_models
from gan.spectral import MelConfig, Normaliser
from tasks.render import render_samples

pytestmark = pytest.mark.integration

CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--mute-audio", "--remote-debugging-port=0"]

CHECK_JS = """
(async () => {
  const deadline = Date.now() + 20000;
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  while (document.readyState !== 'complete' && Date.now() < deadline) await sleep(50);
  const imgs = [...document.images];
  const auds = [...document.querySelectorAll('audio')];
  while (Date.now() < deadline &&
         (imgs.some(i => !i.complete) || auds.some(a => a.readyState < 1 && !a.error)))
    await sleep(100);
  return JSON.stringify({
    title: document.title,
    images: imgs.map(i => ({src: i.getAttribute('src'), width: i.naturalWidth})),
    audio: auds.map(a => ({src: a.getAttribute('src'), ready: a.readyState,
                           duration: a.duration, error: a.error ? a.error.code : null,
                           can_play: a.canPlayType('audio/wav')})),
  });
})()
"""


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path to Chromium. Tests install nothing: on CI, `make test` (run by .ci/run) installs
    Debian's chromium with apt-get first when it is missing."""
    path = _find_chromium()
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing on CI: `make test` installs it (as root) first")
        pytest.skip("chromium not installed (on CI `make test` installs it with apt-get)")
    return path


class DevTools:
    """Just enough of the Chrome DevTools protocol: navigate a page, evaluate a promise."""

    def __init__(self, chromium: str, profile: Path) -> None:
        self.proc = subprocess.Popen([chromium, *CHROME_FLAGS, f"--user-data-dir={profile}",
                                      "about:blank"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self._ids = itertools.count(1)
        port = self._port(profile)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                    pages = [t for t in json.load(r) if t.get("type") == "page"]
                if pages:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("no Chromium page target appeared")
            time.sleep(0.2)
        from websockets.sync.client import connect

        self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=30)

    def _port(self, profile: Path) -> int:
        # Chromium writes the chosen port to DevToolsActivePort in the profile directory
        marker = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited: {self.proc.stderr.read()[-2000:]}")
            if marker.is_file() and (lines := marker.read_text().split()):
                return int(lines[0])
            time.sleep(0.1)
        raise RuntimeError("chromium did not open a DevTools port")

    def call(self, method: str, timeout: float = 60.0, **params: object) -> dict:
        msg_id = next(self._ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def check_page(self, url: str) -> dict:
        self.call("Page.navigate", url=url)
        res = self.call("Runtime.evaluate", expression=CHECK_JS, awaitPromise=True,
                        returnByValue=True)
        if "exceptionDetails" in res:
            raise RuntimeError(str(res["exceptionDetails"]))
        return json.loads(res["result"]["value"])

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def browser(chromium: str, tmp_path: Path) -> Iterator[DevTools]:
    dt = DevTools(chromium, tmp_path / "chrome-profile")
    try:
        yield dt
    finally:
        dt.close()


@pytest.fixture
def gallery_dir(tmp_path: Path) -> Path:
    """Two rendered epochs of a tiny untrained generator, class names with odd characters."""
    cfg = MelConfig(sample_rate=8000, n_fft=256, hop_length=64, n_mels=32, frames=32)
    torch.manual_seed(0)
    gen, _ = build_models(3, cfg.n_mels, cfg.frames, "tiny")
    norm = Normaliser(torch.full((cfg.n_mels,), -30.0), torch.full((cfg.n_mels,), 12.0))
    names = ["dog bark", "sirène #1", "50%/drill"]
    out = tmp_path / "run" / "samples"
    history = [{"epoch": e, "critic_loss": -e / 3, "generator_loss": e / 5} for e in range(1, 5)]
    for epoch in (2, 4):
        render_samples.fn(gen, names, cfg, norm, out, epoch=epoch, per_class=2,
                          griffin_lim_iters=4, history=history[:epoch])
    return out


def _assert_all_loaded(result: dict, n_audio: int) -> None:
    assert result["title"]
    assert result["images"], "no images on the page"
    broken = [i["src"] for i in result["images"] if i["width"] <= 0]
    assert not broken, f"images that did not load: {broken}"
    assert len(result["audio"]) == n_audio
    bad = [a for a in result["audio"]
           if a["error"] is not None or a["ready"] < 1 or not a["duration"] > 0
           or not a["can_play"]]
    assert not bad, f"audio elements without playable metadata: {bad}"


def test_gallery_loads_from_disk(browser: DevTools, gallery_dir: Path) -> None:
    html = (gallery_dir / "index.html").read_text(encoding="utf-8")
    assert "epoch_002" in html and "epoch_004" in html and "loss_curve.png" in html
    result = browser.check_page((gallery_dir / "index.html").as_uri())
    # 2 epochs x 3 classes x 2 clips, and the grid of each epoch + a thumbnail per clip + losses
    _assert_all_loaded(result, n_audio=12)
    assert len(result["images"]) == 2 + 12 + 1
    srcs = {a["src"] for a in result["audio"]}
    assert any(re.search(r"sir%C3%A8ne%20%231/epoch_004_1\.wav$", s) for s in srcs)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def test_gallery_loads_over_http(browser: DevTools, gallery_dir: Path) -> None:
    handler = functools.partial(_QuietHandler, directory=str(gallery_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
        _assert_all_loaded(browser.check_page(url), n_audio=12)
    finally:
        server.shutdown()
        server.server_close()
