"""Hostile and odd original checkpoints: the restricted unpickler turns the classes fairseq, omegaconf and
argparse pickle into inert data and refuses any other class, naming it and the file, without running it."""

import argparse
import os
import sys
import types

import pytest
import torch

from hubert_jax.convert import unpickle
from hubert_jax.convert.cli import main as convert_main
from hubert_jax.convert.fairseq import load_checkpoint


class Payload:
    """Unpickling this runs a shell command that leaves a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def fake_fairseq(monkeypatch):
    """Classes pickled under fairseq's and omegaconf's names, as those libraries would write them."""
    def module(name, cls_name, **attrs):
        parts = name.split(".")
        for i in range(1, len(parts)):  # pickle imports the parent packages first
            parent = ".".join(parts[:i])
            monkeypatch.setitem(sys.modules, parent, sys.modules.get(parent) or types.ModuleType(parent))
        mod = types.ModuleType(name)
        cls = type(cls_name, (), attrs)
        cls.__module__, cls.__qualname__ = name, cls_name
        setattr(mod, cls_name, cls)
        monkeypatch.setitem(sys.modules, name, mod)
        return cls

    return {"Dictionary": module("fairseq.data.dictionary", "Dictionary"),
            "DictConfig": module("omegaconf.dictconfig", "DictConfig"),
            "AnyNode": module("omegaconf.nodes", "AnyNode")}


def dictionary(cls, symbols):
    d = cls()
    d.__dict__.update(bos_word="<s>", symbols=["<s>", "<pad>", "</s>", "<unk>", *symbols], count=[1] * (4 + len(symbols)),
                      nspecial=4, bos_index=0, pad_index=1, eos_index=2, unk_index=3)
    return d


def dictconfig(classes, content):
    def node(value):
        if isinstance(value, dict):
            return dictconfig(classes, value)
        n = classes["AnyNode"]()
        n.__dict__.update(_val=value, _metadata=None, _parent=None)
        return n

    c = classes["DictConfig"]()
    c.__dict__.update(_metadata=None, _parent=None, _content={k: node(v) for k, v in content.items()})
    return c


@pytest.mark.parametrize("legacy", [False, True])
def test_fairseq_classes_become_inert_data(tmp_path, fake_fairseq, legacy):
    ckpt = {"cfg": dictconfig(fake_fairseq, {"model": {"_name": "hubert", "encoder_layers": 2},
                                             "task": {"label_rate": "${model.label_rate}"}}),
            "task_state": {"dictionaries": [dictionary(fake_fairseq["Dictionary"], ["0", "1", "2"])]},
            "args": argparse.Namespace(seed=1), "model": {"w": torch.ones(2)}}
    torch.save(ckpt, tmp_path / "f.pt", _use_new_zipfile_serialization=not legacy)
    loaded = load_checkpoint(str(tmp_path / "f.pt"))
    assert loaded["cfg"]["model"] == {"_name": "hubert", "encoder_layers": 2}
    assert loaded["cfg"]["task"] == {"label_rate": "${model.label_rate}"}  # absent target: kept as written
    d = loaded["task_state"]["dictionaries"][0]
    assert isinstance(d, unpickle.FairseqDictionary) and d.symbols[4:] == ("0", "1", "2") and d.nspecial == 4
    assert loaded["args"] == {"seed": 1} and torch.equal(loaded["model"]["w"], torch.ones(2))


@pytest.mark.parametrize("where", ["top", "task_state", "cfg", "namespace"])
@pytest.mark.parametrize("legacy", [False, True])
def test_hostile_pickles_are_refused_unrun(tmp_path, fake_fairseq, where, legacy):
    marker = tmp_path / "ran"
    payload = Payload(marker)
    ckpt = {"cfg": {"model": {"_name": "hubert"}}, "model": {}, "task_state": {}}
    if where == "top":
        ckpt["extra_state"] = payload
    elif where == "task_state":  # beside a real Dictionary, as fairseq's HuBERT files hold them
        ckpt["task_state"] = {"dictionaries": [dictionary(fake_fairseq["Dictionary"], ["0"]), payload]}
    elif where == "cfg":  # a value node of an omegaconf config
        ckpt["cfg"] = dictconfig(fake_fairseq, {"model": {"_name": "hubert", "conv_pos": payload}})
    else:
        ckpt["args"] = argparse.Namespace(w2v_args=payload)
    path = tmp_path / "evil.pt"
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(ValueError, match=rf"evil.pt: refusing to unpickle posix.system: .*never runs code"):
        load_checkpoint(str(path))
    with pytest.raises(ValueError, match="refusing to unpickle posix.system"):
        convert_main([str(path), str(tmp_path / "out")])
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_an_allowed_name_runs_nothing(tmp_path, fake_fairseq):
    """A pickle may call an allowed class with any arguments or state: the stand-in only records them."""
    class Call:
        def __reduce__(self):
            return fake_fairseq["Dictionary"], ("rm -rf /",), {"symbols": "x"}

    torch.save({"task_state": {"dictionaries": Call()}}, tmp_path / "odd.pt")
    loaded = unpickle.load(str(tmp_path / "odd.pt"))
    stand_in = loaded["task_state"]["dictionaries"]
    assert isinstance(stand_in, unpickle.Pickled) and stand_in.args == ("rm -rf /",)
    assert stand_in.name == "fairseq.data.dictionary.Dictionary" and type(stand_in).__module__ == unpickle.__name__
    with pytest.raises(ValueError, match=r"odd.pt.*Dictionary without its symbols"):
        unpickle.plain(loaded, str(tmp_path / "odd.pt"))


def test_unreadable_files(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"\x80\x02junk")
    with pytest.raises(ValueError, match="junk.pt: not a readable PyTorch checkpoint"):
        load_checkpoint(str(tmp_path / "junk.pt"))
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="list.pt: expected a dict of checkpoint entries"):
        load_checkpoint(str(tmp_path / "list.pt"))
