"""A cache file someone replaced with a pickle (which `weights_only` refuses to run) is
treated as unreadable: the classifier is trained again and the cache overwritten, and
nothing in the pickle ever runs."""

from __future__ import annotations

import pickle
from pathlib import Path

from store_fixtures import build, new_file

from gan.classifier import ClassifierConfig
from storage.classifier_cache import cache_path, load_or_train_classifier
from storage.mel_store import MelStore

RAN = []


class Payload:
    """Would record that it ran, were it ever unpickled."""

    def __reduce__(self):  # noqa: ANN204
        return (RAN.append, ("the pickle ran",))


def test_a_pickled_classifier_cache_is_retrained_not_run(tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    build(store, [new_file(f"{c}/{i}.wav", 3, 10 * i + j, c)
                  for j, c in enumerate("ab") for i in range(6)])
    cfg = ClassifierConfig(epochs=1)
    with MelStore.open(store) as st:
        path = cache_path(st, cfg)
        path.parent.mkdir(parents=True)
        path.write_bytes(pickle.dumps({"state_dict": Payload(), "meta": Payload()}))
        clf = load_or_train_classifier(st, cfg)
    assert not clf.cached and RAN == []
    with MelStore.open(store) as st:
        assert load_or_train_classifier(st, cfg).cached  # the retrained one was written
