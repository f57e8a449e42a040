"""Original checkpoints (fairseq, unilm, s3prl) unpickled without running any of their code.

These files pickle more than tensors: fairseq keeps its label dictionaries (`fairseq.data.dictionary.
Dictionary`) in `task_state` and, in released files, its config as an omegaconf `DictConfig`; older ones
an `argparse.Namespace`; s3prl its runner's `Namespace`. `torch.load(weights_only=True)` refuses them all.
Here each such class is replaced, at unpickling, by an inert stand-in (`Pickled`) that only records the
constructor arguments and state the file gives it; `plain()` then turns the stand-ins into dicts, lists
and `FairseqDictionary` values. Nothing of fairseq or omegaconf is imported, and a class outside the
allow-list below stops the load with an error naming it and the file.
"""

from __future__ import annotations

import dataclasses
import re
import zipfile

# classes these files reference, by the name the pickle gives (after Python 2 names are mapped)
_ALLOWED = {
    "fairseq.data.dictionary.Dictionary", "argparse.Namespace", "typing.Any", "collections.defaultdict",
}
_ALLOWED_PREFIXES = (
    "omegaconf.",  # containers (DictConfig, ListConfig), value nodes, their metadata and flags
    "fairseq.dataclass.constants.",  # fairseq's config enums
    "enum.",
)
# builtins that omegaconf's metadata names as types (object_type=dict, element_type=int): real, and inert
_BUILTINS = {f"builtins.{t.__name__}": t for t in (dict, list, tuple, set, frozenset, int, float, str, bool, bytes)}


class Pickled:
    """An object of the class `name` as the file describes it: the arguments its class would have been
    called with and the state it would have been given, nothing run."""

    name = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.state, obj.items = args, None, {}
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):  # a dict subclass's items (SETITEMS)
        self.items[key] = value

    def __repr__(self):
        return f"<pickled {self.name}>"


class _PickledDefaultDict(dict):
    """collections.defaultdict as a plain dict (its default factory is not kept)."""

    def __init__(self, *args, **kwargs):
        super().__init__()


@dataclasses.dataclass(frozen=True)
class FairseqDictionary:
    """What a pickled `fairseq.data.dictionary.Dictionary` holds: symbols in index order, the specials first."""

    symbols: tuple[str, ...]
    nspecial: int
    bos_index: int
    pad_index: int
    eos_index: int
    unk_index: int

    @classmethod
    def from_state(cls, state: dict, where: str) -> FairseqDictionary:
        """The dictionary of a checkpoint's saved state (ValueError naming `where` when fields are missing)."""
        try:
            symbols = tuple(str(s) for s in state["symbols"])
            return cls(symbols=symbols, nspecial=int(state["nspecial"]), bos_index=int(state["bos_index"]),
                       pad_index=int(state["pad_index"]), eos_index=int(state["eos_index"]),
                       unk_index=int(state["unk_index"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: a fairseq Dictionary without its symbols and special indices ({e})") from e

    def __len__(self) -> int:
        return len(self.symbols)


def allowed(name: str) -> bool:
    """Whether a pickled global may be rebuilt (an allow-list: nothing in a checkpoint runs code)."""
    return name in _ALLOWED or name in _BUILTINS or name.startswith(_ALLOWED_PREFIXES)


def _stand_in(name: str):
    if name in _BUILTINS:
        return _BUILTINS[name]
    if name == "collections.defaultdict":
        return _PickledDefaultDict
    return type(name.rsplit(".", 1)[-1], (Pickled,), {"name": name, "__module__": __name__})


_UNSUPPORTED = re.compile(r"GLOBAL ([\w.]+)")


def _refuse(path: str, names) -> ValueError:
    return ValueError(
        f"{path}: refusing to unpickle {', '.join(sorted(names))}: hubert-jax reads only tensors and the data "
        f"classes of fairseq, unilm and s3prl checkpoints (fairseq's Dictionary, omegaconf configs, "
        f"argparse.Namespace), and never runs code from a checkpoint")


def load(path: str) -> dict:
    """The checkpoint at `path`, with every allowed non-tensor class as inert data (see `plain`)."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"{path} is a pickled PyTorch checkpoint: reading it needs torch installed") from e
    names: set[str] = set()
    if zipfile.is_zipfile(path):  # the pickle's globals, read without unpickling anything
        try:
            names = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except Exception as e:
            raise ValueError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from e
    for _ in range(64):  # a legacy (non-zip) file names its globals one failed attempt at a time
        refused = {n for n in names if not allowed(n)}
        if refused:
            raise _refuse(path, refused)
        try:
            with torch.serialization.safe_globals([(_stand_in(n), n) for n in sorted(names)]):
                return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            match = _UNSUPPORTED.search(str(e))
            if match is None or match[1] in names:
                raise ValueError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''})") from e
            names.add(match[1])
    raise ValueError(f"{path}: too many distinct classes in the pickle")


def plain(obj, where: str = "checkpoint"):
    """Stand-ins -> data: Namespace and DictConfig -> dict, ListConfig -> list, value nodes and enums ->
    their values, Dictionary -> FairseqDictionary. Tensors and plain values are returned as they are."""
    if isinstance(obj, dict):
        return {k: plain(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    if not isinstance(obj, Pickled):
        return obj
    state = obj.state if isinstance(obj.state, dict) else {}
    if obj.name == "fairseq.data.dictionary.Dictionary":
        return FairseqDictionary.from_state(state, where)
    if obj.name == "argparse.Namespace":
        return plain(state, where)
    if obj.name.startswith("omegaconf.") and "_content" in state:  # DictConfig / ListConfig
        return plain(state["_content"], where)
    if obj.name.startswith("omegaconf.") and "_val" in state:  # a value node
        return plain(state["_val"], where)
    if len(obj.args) == 1 and obj.state is None:  # an enum member: Choice(value)
        return plain(obj.args[0], where)
    return obj
