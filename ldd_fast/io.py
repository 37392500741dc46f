"""Files: the one atomic writer, and the one format for state that ldd-fast writes and reads back.

Atomic writes: a temp file in the target's folder, fsync, then one rename over the target, so
a reader sees the old file or the new one, never a partial write. The writer holds an
exclusive flock on its temp file (or folder) for as long as it exists; a writer killed with
SIGKILL leaves its temp behind, unlocked, and the next write to the same target removes such
a leftover once it is unlocked and older than STALE_AFTER_S seconds. A temp that is still
locked belongs to a write in progress (ours or another process's) and is never touched.
Readers only ever open the target's own name, so a leftover is ignored until then.

State files (LD3 checkpoints, teacher pairs, benchmark caches, training checkpoints) are the
safetensors layout: 8 bytes of little-endian header length, a JSON header naming each
tensor's dtype, shape and byte range, then the raw bytes. The non-tensor part of the state
(numbers, strings, lists, dicts) is JSON inside the header's `__metadata__`. Reading one
parses JSON and copies bytes into tensors: no pickle, so a planted file cannot run code.
The files also open with the `safetensors` package (tensors and metadata). The reader refuses,
with a StateFileError naming the file, byte ranges that do not tile the data exactly, more than
MAX_DIMS dimensions, shapes whose size does not match their byte range, and JSON nested deeper
than MAX_DEPTH.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import struct
import tempfile
import time

import torch

from .errors import InvalidArgumentType, StateFileError

try:
    import fcntl
except ImportError:  # not POSIX: no locks, so leftovers are never removed (only ignored)
    fcntl = None

STALE_AFTER_S = 10.0
TMP_SUFFIX = ".tmp"


# ----- atomic writes ---------------------------------------------------------------------------

def check_output_path(path, what: str) -> str:
    """The absolute output path, or an error naming the path and why it cannot be written."""
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidArgumentType(f"{what} path must be a str or os.PathLike, got {type(path).__name__}")
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what} path {path} is a directory; give a file name")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"the folder of the {what} path does not exist: {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"the folder of the {what} path is not writable: {folder}")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise PermissionError(f"the {what} path exists and is not writable: {path}")
    return path


def _lock(fd: int, *, block: bool) -> bool:
    if fcntl is None:
        return not block
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        return True
    except OSError:
        return False


def _is_temp_of(name: str, base: str) -> bool:
    return name.startswith(f".{base}.") and (name.endswith(TMP_SUFFIX))


def remove_stale_temps(path) -> list[str]:
    """Remove leftovers of killed writers of `path`: its temps that are unlocked and older than
    STALE_AFTER_S. A locked temp is a write in progress and stays. Returns what was removed."""
    if fcntl is None:
        return []
    path = os.path.abspath(os.fspath(path))
    folder, base = os.path.dirname(path), os.path.basename(path)
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    now = time.time()
    for name in names:
        if not _is_temp_of(name, base):
            continue
        p = os.path.join(folder, name)
        try:
            if now - os.lstat(p).st_mtime < STALE_AFTER_S or os.path.islink(p):
                continue
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue
        try:
            if _lock(fd, block=False):
                if os.path.isdir(p):
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    os.unlink(p)
                removed.append(p)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


@contextlib.contextmanager
def locked_temp(path, *, directory: bool = False):
    """A new temp file (or folder) beside `path`, exclusively locked while the block runs, removed
    afterwards unless the block moved it away. Stale temps of `path` are cleaned up first."""
    path = os.path.abspath(os.fspath(path))
    folder, base = os.path.dirname(path), os.path.basename(path)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"folder does not exist: {folder}")
    if directory:
        tmp = tempfile.mkdtemp(prefix=f".{base}.", suffix=TMP_SUFFIX, dir=folder)
        fd = os.open(tmp, os.O_RDONLY)
    else:
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=TMP_SUFFIX, dir=folder)
    try:
        _lock(fd, block=True)  # nobody else knows this name yet: immediate
        remove_stale_temps(path)
        yield tmp
    finally:
        try:
            if os.path.isdir(tmp) and not os.path.islink(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
            elif os.path.lexists(tmp):
                os.unlink(tmp)
        finally:
            os.close(fd)


def _fsync_folder(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, write_fn) -> None:
    """Call write_fn(tmp_path), then move the result onto `path` in one rename. The folder must exist."""
    path = os.path.abspath(os.fspath(path))
    with locked_temp(path) as tmp:
        write_fn(tmp)
        umask = os.umask(0)  # mkstemp makes 0600 files; give the result what a plain open() would
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    _fsync_folder(os.path.dirname(path))


def atomic_write_bytes(path, data: bytes) -> None:
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    atomic_write(path, write)


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def read_text(path, what: str) -> str:
    """A UTF-8 text file; errors name the file (FileNotFoundError, IsADirectoryError, StateFileError)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what} {path} is a folder, not a file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise StateFileError(f"{what} {path}: not UTF-8 text ({e})") from None


def read_json(path, what: str, error=StateFileError):
    """A JSON file as Python objects; errors name the file (FileNotFoundError, IsADirectoryError, `error`)."""
    try:
        return json.loads(read_text(path, what))
    except StateFileError as e:
        raise error(str(e)) from None
    except (json.JSONDecodeError, RecursionError) as e:
        raise error(f"{what} {os.fspath(path)}: not valid JSON ({e})") from None


# ----- state files -----------------------------------------------------------------------------

STATE_FORMAT = "ldd_fast.state"
STATE_VERSION = "1"
MAX_HEADER_BYTES = 64 << 20
# ldd-fast's own state nests under 10 levels; the limit keeps the recursive walks over a loaded
# tree (_decode, repr in messages) far from Python's recursion limit.
MAX_DEPTH = 32
# ldd-fast stores at most 5-d tensors; the limit keeps a planted shape far from torch's 64.
MAX_DIMS = 8
_RESERVED = ("__tensor__", "__tuple__", "__dict__")


def _dtypes():
    return {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
            "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
            "BOOL": torch.bool}


def _encode(obj, tensors: dict):
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = obj.detach().cpu().contiguous()
        return {"__tensor__": name}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and k not in _RESERVED for k in obj):
            return {k: _encode(v, tensors) for k, v in obj.items()}
        return {"__dict__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    raise InvalidArgumentType(f"a state file stores tensors, numbers, strings, None, lists, tuples and dicts; "
                              f"got {type(obj).__name__}")


def save_state(path, kind: str, tree) -> None:
    """Write `tree` (tensors, numbers, strings, None, lists, tuples, dicts) atomically as a state file."""
    tensors: dict = {}
    encoded = _encode(tree, tensors)
    depth = _depth(encoded)
    if depth > MAX_DEPTH:  # refused now, or load_state would refuse the file
        raise StateFileError(f"{kind} file {path}: the state is nested {depth} levels deep "
                             f"(at most {MAX_DEPTH}, counting its JSON encoding)")
    body = json.dumps(encoded)
    names = {v: k for k, v in _dtypes().items()}
    header, offset = {}, 0
    for name, t in tensors.items():
        if t.dtype not in names:
            raise InvalidArgumentType(f"state file tensors must have one of the dtypes {sorted(map(str, names))}, "
                                      f"got {t.dtype}")
        n = t.numel() * t.element_size()
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": STATE_FORMAT, "version": STATE_VERSION, "kind": kind, "tree": body}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-aligned, as safetensors writes it

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for t in tensors.values():
                if t.numel():
                    f.write(t.view(-1).view(torch.uint8).numpy().tobytes())
    atomic_write(path, write)


def _depth(obj) -> int:
    """How deeply lists and dicts nest in `obj` (a scalar is 0), walked without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        obj, d = stack.pop()
        if isinstance(obj, (list, dict)):
            deepest = max(deepest, d)
            stack.extend((v, d + 1) for v in (obj.values() if isinstance(obj, dict) else obj))
    return deepest


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _tensor_entry(entry, where: str):
    """(dtype, shape, begin, end) of one header entry; a StateFileError says what is wrong `where`."""
    def bad(msg):
        return StateFileError(f"{where}: {msg}")

    dtypes = _dtypes()
    dtype = entry.get("dtype") if isinstance(entry, dict) else None
    if not isinstance(dtype, str) or dtype not in dtypes:
        raise bad(f"dtype is not one of {sorted(dtypes)}")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list):
        raise bad("shape is not a list")
    if len(shape) > MAX_DIMS:
        raise bad(f"has {len(shape)} dimensions (at most {MAX_DIMS})")
    for s in shape:
        if not _is_int(s) or s < 0:
            raise bad(f"shape has a dimension {s!r:.40} that is not a non-negative int")
    # Python ints, so nothing overflows; torch sizes and strides are int64 even for an empty tensor.
    if math.prod(max(s, 1) for s in shape) >= 2**63:
        raise bad(f"shape {shape} is too large for a tensor")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_int, offsets))
            and 0 <= offsets[0] <= offsets[1]):
        raise bad("data_offsets is not two ints 0 <= begin <= end")
    dtype = dtypes[dtype]
    begin, end = offsets
    n = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if end - begin != n:
        raise bad(f"shape {shape} of {dtype} needs {n} bytes, its data_offsets hold {end - begin}")
    return dtype, shape, begin, end


def _decode(obj, tensors: dict, path: str):
    if isinstance(obj, list):
        return [_decode(v, tensors, path) for v in obj]
    if isinstance(obj, dict):
        if len(obj) == 1:
            (key, val), = obj.items()
            if key == "__tensor__":
                if not isinstance(val, str) or val not in tensors:
                    raise StateFileError(f"{path}: refers to a tensor {val!r} that the file does not hold")
                return tensors[val]
            if key == "__tuple__" and isinstance(val, list):
                return tuple(_decode(v, tensors, path) for v in val)
            if key == "__dict__" and isinstance(val, list):
                out = {}
                for pair in val:
                    if not isinstance(pair, list) or len(pair) != 2:
                        raise StateFileError(f"{path}: a stored dict entry is not a [key, value] pair")
                    k = _decode(pair[0], tensors, path)
                    try:
                        out[k] = _decode(pair[1], tensors, path)
                    except TypeError:
                        raise StateFileError(f"{path}: a stored dict has an unhashable key") from None
                return out
        return {k: _decode(v, tensors, path) for k, v in obj.items()}
    return obj


def load_state(path, kind: str):
    """Read a state file written by save_state(path, kind, ...); any defect is a StateFileError naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{kind} file not found: {path}")
    with open(path, "rb") as f:
        blob = f.read()

    def bad(msg):
        return StateFileError(f"{kind} file {path}: {msg}")

    if len(blob) < 8:
        raise bad(f"truncated ({len(blob)} bytes): not an ldd-fast state file")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > min(MAX_HEADER_BYTES, len(blob) - 8):
        raise bad("not an ldd-fast state file (no valid header: a torch .pt / pickle file, or truncated)")
    try:
        header = json.loads(blob[8:8 + n].decode("utf-8"))
    except RecursionError:
        raise bad(f"not an ldd-fast state file (its header is nested more than {MAX_DEPTH} levels deep)") from None
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise bad(f"not an ldd-fast state file ({e})") from None
    if (depth := _depth(header)) > MAX_DEPTH:
        raise bad(f"not an ldd-fast state file (its header is nested {depth} levels deep)")
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != STATE_FORMAT:
        raise bad("not an ldd-fast state file (no ldd_fast.state metadata)")
    if meta.get("version") != STATE_VERSION:
        raise bad(f"state format version {meta.get('version')!r}; this ldd-fast reads version {STATE_VERSION}")
    if meta.get("kind") != kind:
        raise bad(f"holds a {meta.get('kind')!r}, not a {kind!r}")
    data = memoryview(blob)[8 + n:]
    entries = {name: _tensor_entry(entry, f"{kind} file {path}: tensor {name!r}")
               for name, entry in header.items() if name != "__metadata__"}
    # The ranges must tile the data exactly, as save_state writes them: an overlap would let one
    # tensor read another's bytes, and a gap or a tail would be bytes that nothing accounts for.
    at = 0
    for begin, end, name in sorted((e[2], e[3], name) for name, e in entries.items()):
        if begin > at:
            raise bad(f"{begin - at} unused bytes before tensor {name!r} (data_offsets must tile the data)")
        if begin < at:
            raise bad(f"tensor {name!r}'s data_offsets [{begin}, {end}] overlap another tensor's")
        at = end
    if at > len(data):
        raise bad(f"data_offsets reach byte {at}, past the end of the data ({len(data)} bytes): truncated")
    if at < len(data):
        raise bad(f"{len(data) - at} trailing bytes after the last tensor (data_offsets must tile the data)")
    tensors = {}
    for name, (dtype, shape, begin, end) in entries.items():
        if end > begin:
            t = torch.frombuffer(bytearray(data[begin:end]), dtype=dtype)
        else:
            t = torch.empty(0, dtype=dtype)
        tensors[name] = t.reshape(shape)
    try:
        tree = json.loads(meta["tree"])
    except RecursionError:
        raise bad(f"the stored state is nested more than {MAX_DEPTH} levels deep") from None
    except (KeyError, TypeError, ValueError) as e:
        raise bad(f"the stored state is not valid JSON ({e})") from None
    if (depth := _depth(tree)) > MAX_DEPTH:
        raise bad(f"the stored state is nested {depth} levels deep (at most {MAX_DEPTH})")
    return _decode(tree, tensors, f"{kind} file {path}")


class Fields:
    """Typed access to a loaded state dict: every missing or wrong field is a StateFileError naming
    the file and the field."""

    def __init__(self, tree, where: str):
        if not isinstance(tree, dict):
            raise StateFileError(f"{where}: expected a dict of fields, got {type(tree).__name__}")
        self.tree, self.where = tree, where

    def error(self, key: str, msg: str) -> StateFileError:
        return StateFileError(f"{self.where}: field {key!r}: {msg}")

    def get(self, key: str, types, *, optional: bool = False):
        if key not in self.tree:
            if optional:
                return None
            raise self.error(key, "missing")
        v = self.tree[key]
        if v is None and optional:
            return None
        if isinstance(v, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            raise self.error(key, f"expected {_names(types)}, got bool")
        if not isinstance(v, types):
            raise self.error(key, f"expected {_names(types)}, got {type(v).__name__}")
        return v

    def int(self, key: str, lo: int = 0, hi: int | None = None) -> int:
        v = self.get(key, int)
        if v < lo or (hi is not None and v > hi):
            raise self.error(key, f"{v} is outside [{lo}, {hi if hi is not None else 'inf'}]")
        return v

    def number(self, key: str) -> float:
        v = float(self.get(key, (int, float)))
        if not math.isfinite(v):
            raise self.error(key, f"not finite ({v})")
        return v

    def tensor(self, key: str, *, shape=None, floating: bool | None = None, finite: bool = False,
               optional: bool = False):
        t = self.get(key, torch.Tensor, optional=optional)
        if t is None:
            return None
        if shape is not None and tuple(t.shape) != tuple(shape):
            raise self.error(key, f"expected shape {tuple(shape)}, got {tuple(t.shape)}")
        if floating is not None and t.is_floating_point() != floating:
            raise self.error(key, f"expected a {'floating-point' if floating else 'integer'} tensor, got {t.dtype}")
        if finite and t.is_floating_point() and not torch.isfinite(t).all():
            raise self.error(key, "holds NaN or inf")
        return t

    def sub(self, key: str) -> "Fields":
        return Fields(self.get(key, dict), f"{self.where}: field {key!r}")


def _names(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(t.__name__ for t in types)
