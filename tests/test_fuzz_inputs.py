"""Fuzzing the edges (hypothesis): command lines, model.json contents, serving payloads.

Whatever comes in: no traceback, exit code 0 or 2 only (a served request: a result or an
INVALID_PARAMETER_VALUE), and nothing written when the input is refused. Commands run
in-process through `audio_wgan.cli.main`, the same function the console script runs, so
each example costs milliseconds, not an interpreter start.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hostile_checks import snapshot
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from registry_fixtures import make_bundle

from gan.limits import SEED

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])

# numbers the way a careless or hostile hand types them
NUMBER_TEXT = st.one_of(
    st.integers(-3, 3).map(str), st.integers(-(10**30), 10**30).map(str),
    st.sampled_from([str(SEED.hi), str(SEED.hi + 1), "1e3", "1.5", "0x10", "", " ", "nan",
                     "inf", "١٢", "1_000", "+5", "--1"]),
    st.text(max_size=8),
)


@pytest.fixture(scope="module")
def area(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fuzz")
    (root / "a_file").write_text("not a folder\n")
    (root / "empty_data").mkdir()
    return {"root": root, "bundle": make_bundle(root / "bundle"), "file": root / "a_file"}


def _path(area: dict[str, Path]) -> st.SearchStrategy[str]:
    root = area["root"]
    return st.one_of(
        st.just(str(root / "out")), st.just(str(area["file"])),
        st.just(str(area["file"] / "under")), st.just(""),
        st.text(alphabet=st.characters(blacklist_characters="\0/"), min_size=1, max_size=12)
        .map(lambda s: str(root / "out" / s)),
    )


def _model(area: dict[str, Path]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.just(str(area["bundle"])), st.just(str(area["root"])),
        st.sampled_from(["http://127.0.0.1:1/x", "models:/", "models:/nope@champion",
                         "runs:/abc/model", "s3://", "file:///nonexistent", "C:\\model", ""]),
        st.text(max_size=20),
    )


def _options(pairs: dict[str, st.SearchStrategy[str]]) -> st.SearchStrategy[list[str]]:
    """Any subset of the options, each with a drawn value, in a drawn order."""
    return st.lists(st.sampled_from(sorted(pairs)), unique=True, max_size=len(pairs)).flatmap(
        lambda names: st.tuples(*(pairs[n].map(lambda v, n=n: [n, v]) for n in names))
    ).map(lambda groups: [x for g in groups for x in g])


def _argv(area: dict[str, Path]) -> st.SearchStrategy[list[str]]:
    small = st.one_of(st.integers(1, 2).map(str), NUMBER_TEXT)
    out, model = _path(area), _model(area)
    cls = st.one_of(st.sampled_from(["beep", "hum", "cat", ""]), st.text(max_size=10))
    return st.one_of(
        _options({"--model": model, "--class": cls, "-n": small, "--seed": NUMBER_TEXT,
                  "--out": out}).map(lambda o: ["generate", *o]),
        _options({"--model": model, "--out": out, "--per-class": small, "--seed": NUMBER_TEXT,
                  "--griffin-lim-iters": small, "--epoch": NUMBER_TEXT}
                 ).map(lambda o: ["render", *o]),
        st.tuples(out, _options({"--clips-per-class": small, "--seed": NUMBER_TEXT})
                  ).map(lambda t: ["demo-data", t[0], *t[1]]),
        _options({"--model": model, "--store": out, "--n-per-class": NUMBER_TEXT,
                  "--seed": NUMBER_TEXT}).map(lambda o: ["evaluate", *o]),
        st.tuples(out, _options({"--sample-rate": NUMBER_TEXT, "--n-fft": NUMBER_TEXT,
                                 "--hop-length": NUMBER_TEXT, "--n-mels": NUMBER_TEXT,
                                 "--frames": NUMBER_TEXT, "--f-min": NUMBER_TEXT,
                                 "--f-max": NUMBER_TEXT, "--workers": NUMBER_TEXT,
                                 "--batch-size": NUMBER_TEXT})
                  ).map(lambda t: ["precompute", str(t[0]) + "/no-data", "--store", t[0],
                                   *t[1]]),
        st.lists(st.text(max_size=10), max_size=4),  # anything at all
    )


@pytest.mark.usefixtures("prefect_harness")
def test_fuzz_command_lines(area: dict[str, Path], capsys: pytest.CaptureFixture[str]
                            ) -> None:
    from audio_wgan.cli import main

    @SETTINGS
    @given(argv=_argv(area))
    def run(argv: list[str]) -> None:
        out = area["root"] / "out"
        if out.exists():
            shutil.rmtree(out)
        before = snapshot(area["root"])
        capsys.readouterr()
        code = main(argv)
        err = capsys.readouterr().err
        event(f"{argv[0] if argv else '-'} exit {code}")
        assert code in (0, 2), (argv, code, err[-1500:])
        assert "Traceback" not in err, (argv, err[-1500:])
        if code == 2:
            assert err.strip(), argv
            assert snapshot(area["root"]) == before, f"{argv} wrote while refusing"

    run()


JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
              st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12)),
    lambda children: st.one_of(st.lists(children, max_size=5),
                               st.dictionaries(st.text(max_size=8), children, max_size=5)),
    max_leaves=20,
)


def test_fuzz_model_json(area: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
                         ) -> None:
    from storage.model_bundle import META_FILE, BundleError, load_bundle_dir, synthesise

    good = json.loads((area["bundle"] / META_FILE).read_text())
    paths = [("format_version",), ("preset",), ("class_names",), ("class_names", 0),
             ("n_mels",), ("frames",), ("norm_mean",), ("norm_mean", 0), ("norm_std", 3),
             ("meta",), ("meta", "epoch"), ("mel",), *[("mel", k) for k in good["mel"]]]
    d = tmp_path_factory.mktemp("fuzz_json") / "bundle"
    shutil.copytree(area["bundle"], d)

    @SETTINGS
    @given(changes=st.lists(st.tuples(st.sampled_from(paths), st.one_of(JSON, st.just(...))),
                            min_size=1, max_size=4),
           raw=st.one_of(st.none(), st.binary(max_size=64)))
    def run(changes: list[tuple[tuple, object]], raw: bytes | None) -> None:
        doc = json.loads(json.dumps(good))
        for path, value in changes:
            parent: object = doc
            for key in path[:-1]:
                try:
                    parent = parent[key]  # type: ignore[index]
                except (KeyError, IndexError, TypeError):
                    parent = None
                if not isinstance(parent, dict | list):
                    break
            else:
                key = path[-1]
                try:
                    if value is ...:
                        del parent[key]
                    else:
                        parent[key] = value
                except (KeyError, IndexError, TypeError):
                    pass
        (d / META_FILE).write_bytes(raw if raw is not None else json.dumps(doc).encode())
        try:
            bundle = load_bundle_dir(d)
        except BundleError as exc:
            assert "\n" not in str(exc) and str(exc)
            event("refused")
            return
        event("loaded")
        waves, _ = synthesise(bundle, bundle.class_names[0], 1, 0)  # it loaded: it works
        assert waves.isfinite().all()

    run()


ROW_VALUE = st.one_of(JSON, st.integers(-5, 600), st.sampled_from(["beep", "hum", "meow"]),
                      st.just(float("nan")))


def test_fuzz_serving_payloads(area: dict[str, Path]) -> None:
    import pandas as pd
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import PythonModelContext

    from storage.pyfunc_generator import AudioWGANModel, SampleBudget

    model = AudioWGANModel()
    model.load_context(PythonModelContext({"bundle": str(area["bundle"])}, {}))
    # the per-second budget has its own test (a stepped clock); here it must never depend
    # on how fast this machine is
    model.budget = SampleBudget(rate=1.0, burst=1e18, clock=lambda: 0.0)
    keys = st.sampled_from(["class", "count", "seed", "return_mel", "Class", "extra"])
    rows = st.lists(st.dictionaries(keys, ROW_VALUE, max_size=4), max_size=4)

    @SETTINGS
    @given(payload=st.one_of(rows, rows.map(lambda r: pd.DataFrame(r) if r else r), JSON))
    def run(payload: object) -> None:
        try:
            out = model.predict(None, payload)
        except MlflowException as exc:
            assert exc.error_code == "INVALID_PARAMETER_VALUE", exc
            assert "\n" not in exc.message and exc.message
            event("refused")
            return
        event("served")
        assert isinstance(out, pd.DataFrame) and len(out) <= 512
        assert all(pd.Series(a).notna().all() for a in out["audio"])

    run()


# a JSON value of any kind, as a hand editing a manifest would leave one
JSON_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(10**12), 10**12),
              st.floats(allow_nan=False), st.text(max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=6)


def test_fuzz_manifest_edits(tmp_path_factory: pytest.TempPathFactory,
                             capsys: pytest.CaptureFixture[str]) -> None:
    """Any field of a real manifest (top level or of a file entry) set to any JSON value:
    `store-info` and `store-info --verify` answer (exit 0) or refuse in one line (exit 2),
    never a traceback, and write nothing (but the reader lease a reader may create)."""
    from store_fixtures import build, new_file

    from audio_wgan.cli import main
    from storage.store_generations import LEASE_PREFIX

    def written(store: Path) -> dict[str, tuple[str, int, str]]:
        return {p: v for p, v in snapshot(store).items()
                if not Path(p).name.startswith(LEASE_PREFIX)}

    base = tmp_path_factory.mktemp("manifest-fuzz")
    good = base / "good.zarr"
    build(good, [new_file("a/0.wav", 3, 1), new_file("b/1.wav", 2, 2)])
    doc = json.loads((good / "manifest.json").read_bytes())
    top = sorted(doc)
    entry = sorted(doc["files"][0])

    @SETTINGS
    @given(where=st.one_of(st.sampled_from(top).map(lambda k: ("top", k)),
                           st.sampled_from(entry).map(lambda k: ("file", k))),
           value=JSON_VALUE, verify=st.booleans())
    def run(where: tuple[str, str], value: object, verify: bool) -> None:
        store = base / "s.zarr"
        shutil.rmtree(store, ignore_errors=True)
        shutil.copytree(good, store)
        edited = json.loads(json.dumps(doc))
        kind, key = where
        (edited if kind == "top" else edited["files"][0])[key] = value
        (store / "manifest.json").write_text(json.dumps(edited))
        before = written(store)
        capsys.readouterr()
        code = main(["store-info", str(store), *(["--verify"] if verify else [])])
        err = capsys.readouterr().err
        assert code in (0, 2), (where, value, err[-2000:])
        assert "Traceback" not in err
        if code == 2:
            assert err.strip().splitlines()[-1].startswith("audio-wgan store-info: error:")
        event("refused" if code else "answered")
        assert written(store) == before

    run()
