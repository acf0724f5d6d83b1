"""Progress comes from the jobs through report.progress: a sink installed in the process sees
every report, the flow run gets a Prefect progress artifact, and the CLI shows a rich bar on
a terminal and the plain lines elsewhere."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest

from report import progress
from report.progress import Progress, report, sink

MEL = {"sample_rate": 8000, "n_fft": 256, "hop_length": 64, "n_mels": 32, "frames": 32}


@pytest.fixture
def data(tmp_path: Path, write_tone: Callable[..., Path]) -> Path:
    root = tmp_path / "data"
    for i in range(6):
        write_tone(f"c{i % 2}/t{i}.wav", seconds=0.3, sr=8000, freq=300 + 50 * i, root=root)
    return root


@pytest.mark.usefixtures("prefect_harness")
def test_a_sink_receives_precompute_progress_and_the_run_gets_an_artifact(
        data: Path, tmp_path: Path) -> None:
    from prefect.artifacts import Artifact

    from flows.precompute import precompute

    events: list[Progress] = []
    with sink(events.append):
        precompute(str(data), str(tmp_path / "s.zarr"), mel=MEL, batch_size=2, workers=1,
                   device="cpu")
    assert events and {e.kind for e in events} == {"precompute"}
    assert (events[0].done, events[0].total) == (0, 6)
    assert (events[-1].done, events[-1].total) == (6, 6) and events[-1].finished
    assert [e.done for e in events] == sorted(e.done for e in events)
    assert events[-1].fields["rows"] == 6
    assert events[-1].note.startswith("precompute: 6/6 files, 6 rows, ")
    art = Artifact.get("precompute-progress")
    assert art is not None and art.type == "progress"
    assert float(art.data) == pytest.approx(100.0)

    events.clear()
    with sink(events.append):  # unchanged: nothing to do, nothing reported
        precompute(str(data), str(tmp_path / "s.zarr"), mel=MEL, device="cpu")
    assert events == []


@pytest.mark.usefixtures("prefect_harness")
def test_the_cli_prints_the_plain_lines_when_stderr_is_no_terminal(
        data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from audio_wgan.cli import main

    assert main(["precompute", str(data), "--store", str(tmp_path / "s.zarr"),
                 "--sample-rate", "8000", "--n-fft", "256", "--hop-length", "64",
                 "--n-mels", "32", "--frames", "32", "--batch-size", "2", "--workers", "1",
                 "--device", "cpu"]) == 0
    err = capsys.readouterr().err.splitlines()
    lines = [ln for ln in err if ln.startswith("precompute: ")]
    assert lines and lines[-1].startswith("precompute: 6/6 files, 6 rows, ")
    assert not any(ln.startswith("precompute: 0/") for ln in lines)
    assert "\r" not in "".join(err) and "━" not in "".join(err)


def test_on_a_terminal_the_cli_draws_a_bar_with_eta(monkeypatch: pytest.MonkeyPatch) -> None:
    from audio_wgan import progress_display

    screen = io.StringIO()
    monkeypatch.setattr(progress_display, "wants_bar", lambda stream: True)
    monkeypatch.setattr("sys.stderr", screen)
    with progress_display.shown():
        for done in range(0, 5):
            report("render", done, 4, f"render: {done}/4 clips [not markup]")
    text = screen.getvalue()
    assert "render" in text and "4/4" in text and "clips" in text and "ETA" in text
    assert "[not markup]" in text


def test_quiet_shows_nothing_and_a_failing_sink_never_stops_the_job(
        capsys: pytest.CaptureFixture[str]) -> None:
    from audio_wgan.progress_display import shown

    with shown(quiet=True):
        report("train", 1, 2, "epoch 1/2")
    assert capsys.readouterr() == ("", "")

    def broken(p: Progress) -> None:
        raise RuntimeError("display bug")

    seen: list[Progress] = []
    with sink(broken), sink(seen.append):
        report("evaluate", 1, 3, "evaluate: classifier")
    assert [(p.kind, p.done) for p in seen] == [("evaluate", 1)]
    assert not progress.has_sinks()


def test_echo_prints_the_line_only_where_no_sink_listens(
        capsys: pytest.CaptureFixture[str]) -> None:
    """A job run outside the CLI (a torchrun rank, a direct flow call) keeps its lines."""
    report("train", 1, 2, "epoch 1/2 [###]", echo=True)
    assert capsys.readouterr().out == "epoch 1/2 [###]\n"
    with sink(lambda p: None):
        report("train", 2, 2, "epoch 2/2 [###]", echo=True)
    assert capsys.readouterr().out == ""


@pytest.mark.usefixtures("prefect_harness")
def test_render_runs_its_flow_and_reports_clips(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from prefect.artifacts import Artifact
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from registry_fixtures import make_bundle

    from audio_wgan.cli import main

    bundle = make_bundle(tmp_path / "bundle")
    events: list[Progress] = []
    with sink(events.append):
        assert main(["render", "--model", str(bundle), "--out", str(tmp_path / "out"),
                     "--per-class", "2", "--griffin-lim-iters", "2"]) == 0
    assert "gallery:" in capsys.readouterr().out
    assert {e.kind for e in events} == {"render"}
    n = events[-1].total
    assert (events[0].done, events[-1].done) == (0, n) and n >= 2
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["render"])))
    assert any(r.state and r.state.is_completed() for r in runs)
    art = Artifact.get("render-progress")
    assert art is not None and float(art.data) == pytest.approx(100.0)
