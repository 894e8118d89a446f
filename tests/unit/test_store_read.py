"""Store.read: a metadata file is read whole (any size up to the cap, in one go or many
reads), and one larger than the cap, or not a regular file, is refused as Corrupt."""

from __future__ import annotations

import json
import os

import pytest
from support import temp_store

from ipacctd.errors import Corrupt, NotFound
from ipacctd.manager import store as store_mod
from ipacctd.manager.store import Store


def _put(s: Store, name: str, text: str) -> None:
    with open(s.meta_path(name), "w") as f:
        f.write(text)


def test_read_whole_files_up_to_the_cap(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = temp_store(tmp_path)
    monkeypatch.setattr(store_mod, "MAX_META_BYTES", 20_000)
    for n in (0, 1, 4000, 4096, 10_000):  # sizes around the read sizes
        data = {"name": "a.service", "pad": "x" * n}
        _put(s, "a.service", json.dumps(data))
        assert s.read("a.service") == data
    exact = json.dumps({"name": "a.service", "pad": ""})
    exact = exact[:-1] + " " * (20_000 - len(exact)) + "}"  # exactly the cap
    _put(s, "a.service", exact)
    assert s.read("a.service") == {"name": "a.service", "pad": ""}
    _put(s, "a.service", exact[:-1] + " }")  # one byte over
    with pytest.raises(Corrupt, match="larger than 20000 bytes"):
        s.read("a.service")
    _put(s, "a.service", '{"name": ')
    with pytest.raises(Corrupt, match="not valid JSON"):
        s.read("a.service")
    with pytest.raises(NotFound):
        s.read("b.service")
    os.mkfifo(s.meta_path("f.service"))
    with pytest.raises(Corrupt, match="not a regular file"):
        s.read("f.service")
