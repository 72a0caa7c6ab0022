"""Model files: round trip, atomic writes, and refusal of files that would run code."""
from __future__ import annotations

import os
import pickle

import pytest
import torch

from unetlab import UNet, load_model, save_model
from unetlab.atomic import atomic_path, atomic_write_text
from unetlab.errors import UnetlabError


def test_round_trip_equal_outputs(tmp_path):
    torch.manual_seed(0)
    net = UNet(depth=2, width=4, dropout=0.3, norm="batch").eval()
    path = tmp_path / "model.pt"
    save_model(net, path, meta={"note": "x"})
    back = load_model(path)
    assert back.config() == net.config()
    x = torch.randn(1, 1, net.valid_input_size(40), net.valid_input_size(40))
    with torch.no_grad():
        assert torch.equal(net(x), back(x))
    assert not back.training


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_crafted_checkpoint_is_refused_and_creates_nothing(tmp_path):
    target = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pt"
    torch.save({"format": "unetlab-model", "payload": _Evil(str(target))}, path)
    assert not target.exists()
    with pytest.raises(UnetlabError, match="evil.pt"):
        load_model(path)
    assert not target.exists()


def test_plain_pickle_refused(tmp_path):
    target = tmp_path / "pwned2.txt"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Evil(str(target))))
    with pytest.raises(UnetlabError, match="evil.pkl"):
        load_model(path)
    assert not target.exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(UnetlabError, match="bad.pt"):
        load_model(path)


def test_other_architecture_and_foreign_dict(tmp_path):
    net = UNet(depth=2, width=4)
    path = tmp_path / "m.pt"
    save_model(net, path)
    obj = torch.load(path, weights_only=True)
    obj["config"]["width"] = 8          # weights no longer fit
    torch.save(obj, path)
    with pytest.raises(UnetlabError, match="do not match"):
        load_model(path)
    torch.save({"state_dict": {}}, path)
    with pytest.raises(UnetlabError, match="not a unetlab model"):
        load_model(path)
    with pytest.raises(UnetlabError, match="no such file"):
        load_model(tmp_path / "missing.pt")
    with pytest.raises(UnetlabError, match="folder"):
        load_model(tmp_path)


def test_atomic_write_keeps_old_file_on_crash(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash during write")
    assert path.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["f.txt"]   # no temp file left behind
