"""The state-file reader: every file save_state writes loads back bit for bit, and a hand-crafted
hostile file (ranges that overlap or leave gaps, absurd shapes, deep JSON) is a StateFileError
that names the file and the defect, never a torch error or a RecursionError."""
import json
import struct

import pytest
import torch

from ldd_fast.errors import LddFastError, StateFileError
from ldd_fast.io import MAX_DEPTH, MAX_DIMS, check_output_path, load_state, save_state

KIND = "test state"


def _good(path):
    """A state file of two tensors: t0 holds bytes [0, 16) of the data, t1 bytes [16, 64)."""
    save_state(path, KIND, {"a": torch.arange(4, dtype=torch.float32),
                            "b": torch.arange(6, dtype=torch.int64).reshape(2, 3), "n": 3})
    return path


def _read(path):
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def _write(path, header, data, extra: str = ""):
    """Write a raw state file; `extra` is JSON text spliced into the header's __metadata__."""
    raw = json.dumps(header)
    if extra:
        raw = raw.replace('"__metadata__": {', '"__metadata__": {' + extra + ", ", 1)
    raw = raw.encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _entry(h, name, **change):
    h[name].update(change)
    return h


# Each case rewrites the good file's (header, data) and names the message it must give.
HOSTILE = {
    "overlapping ranges": (lambda h, d: (_entry(h, "t1", data_offsets=[0, 48]), d[16:]), "overlap"),
    "a gap": (lambda h, d: (_entry(h, "t1", data_offsets=[24, 72]), d[:16] + bytes(8) + d[16:]),
              "8 unused bytes before tensor 't1'"),
    "a range past the end": (lambda h, d: (h, d[:56]), "past the end of the data"),
    "the last end short of the size": (lambda h, d: (_entry(h, "t1", shape=[2, 2], data_offsets=[16, 48]), d),
                                       "16 trailing bytes"),
    "trailing bytes": (lambda h, d: (h, d + bytes(8)), "8 trailing bytes"),
    "begin after end": (lambda h, d: (_entry(h, "t1", data_offsets=[64, 16]), d), "data_offsets is not two ints"),
    "a negative offset": (lambda h, d: (_entry(h, "t0", data_offsets=[-16, 0]), d), "data_offsets is not two ints"),
    "a bool offset": (lambda h, d: (_entry(h, "t0", shape=[1], data_offsets=[False, True]), d),
                      "data_offsets is not two ints"),
    "three offsets": (lambda h, d: (_entry(h, "t0", data_offsets=[0, 8, 16]), d), "data_offsets is not two ints"),
    "shape [0, 2**63]": (lambda h, d: (_entry(h, "t1", shape=[0, 2**63], data_offsets=[16, 16]), d[:16]),
                         "too large for a tensor"),
    "shape [2**62, 4, 0]": (lambda h, d: (_entry(h, "t1", shape=[2**62, 4, 0], data_offsets=[16, 16]), d[:16]),
                            "too large for a tensor"),
    "9 dimensions": (lambda h, d: (_entry(h, "t1", shape=[1] * 8 + [6]), d), "has 9 dimensions \\(at most 8\\)"),
    "64 dimensions": (lambda h, d: (_entry(h, "t1", shape=[1] * 63 + [6]), d), "has 64 dimensions"),
    "a bool dimension": (lambda h, d: (_entry(h, "t1", shape=[True, 6]), d), "dimension True that is not"),
    "a negative dimension": (lambda h, d: (_entry(h, "t1", shape=[-2, -3]), d), "dimension -2 that is not"),
    "a float dimension": (lambda h, d: (_entry(h, "t1", shape=[2.0, 3]), d), "dimension 2.0 that is not"),
    "a shape that is not a list": (lambda h, d: (_entry(h, "t1", shape="2,3"), d), "shape is not a list"),
    "count * itemsize != range": (lambda h, d: (_entry(h, "t1", shape=[2, 4]), d),
                                  "needs 64 bytes, its data_offsets hold 48"),
    "another item size": (lambda h, d: (_entry(h, "t1", dtype="I32"), d), "needs 24 bytes, its data_offsets hold 48"),
    "an unknown dtype": (lambda h, d: (_entry(h, "t1", dtype="F8"), d), "dtype is not one of"),
    "an entry that is not a dict": (lambda h, d: ({**h, "t1": [16, 64]}, d), "tensor 't1': dtype"),
    "state nested 33 deep": (lambda h, d: (_entry(h, "__metadata__", tree=_nested(MAX_DEPTH + 1)), d),
                             "the stored state is nested 33 levels deep \\(at most 32\\)"),
    "state nested 950 deep": (lambda h, d: (_entry(h, "__metadata__", tree=_nested(950)), d),
                              "the stored state is nested 950 levels deep"),
    "state nested 100000 deep": (lambda h, d: (_entry(h, "__metadata__", tree=_nested(100_000)), d),
                                 "the stored state is nested more than 32 levels deep"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_a_hostile_file_is_a_state_file_error_naming_the_file(tmp_path, case):
    change, match = HOSTILE[case]
    path = _good(tmp_path / "s.safetensors")
    _write(path, *change(*_read(path)))
    with pytest.raises(StateFileError, match=match) as e:
        load_state(path, KIND)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("depth, match", [(MAX_DEPTH + 1, "its header is nested 35 levels deep"),
                                          (950, "its header is nested 952 levels deep"),
                                          (100_000, "its header is nested more than 32 levels deep")])
def test_a_deeply_nested_header_is_refused(tmp_path, depth, match):
    path = _good(tmp_path / "s.safetensors")
    _write(path, *_read(path), extra=f'"deep": {_nested(depth)}')
    with pytest.raises(StateFileError, match=match) as e:
        load_state(path, KIND)
    assert str(path) in str(e.value)


def test_ranges_out_of_order_that_tile_the_data_load(tmp_path):
    path = _good(tmp_path / "s.safetensors")
    header, data = _read(path)
    header["t0"]["data_offsets"], header["t1"]["data_offsets"] = [48, 64], [0, 48]
    _write(path, header, data[16:] + data[:16])
    tree = load_state(path, KIND)
    assert torch.equal(tree["a"], torch.arange(4, dtype=torch.float32))
    assert torch.equal(tree["b"], torch.arange(6).reshape(2, 3))


def test_every_dtype_and_shape_the_writer_makes_loads_bit_for_bit(tmp_path):
    special = torch.tensor([float("nan"), -0.0, float("inf"), 1e-40, -1.5])
    tensors = {"f32": special, "f64": special.double(), "f16": special.half(), "bf16": special.bfloat16(),
               "i64": torch.tensor([-2**63, 2**63 - 1]), "i32": torch.tensor([-7], dtype=torch.int32),
               "i16": torch.tensor([[1, -1]], dtype=torch.int16), "i8": torch.tensor([-128], dtype=torch.int8),
               "u8": torch.arange(256, dtype=torch.uint8), "bool": torch.tensor([True, False]),
               "scalar": torch.tensor(3.5), "empty": torch.zeros(0, 5), f"{MAX_DIMS}-d": torch.ones([1] * MAX_DIMS),
               "strided": torch.arange(12.0).reshape(3, 4).t()}
    path = tmp_path / "s.safetensors"
    save_state(path, KIND, tensors)
    back = load_state(path, KIND)
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and back[name].shape == t.shape, name
        assert back[name].contiguous().view(-1).view(torch.uint8).tolist() == \
            t.contiguous().view(-1).view(torch.uint8).tolist(), name


def _nest(depth: int, leaf):
    for i in range(depth):
        leaf = [leaf] if i % 2 else {"k": leaf}
    return leaf


def test_a_tree_nested_to_the_limit_round_trips_and_one_deeper_is_refused_on_save(tmp_path):
    path = tmp_path / "s.safetensors"
    save_state(path, KIND, _nest(MAX_DEPTH, "leaf"))
    assert load_state(path, KIND) == _nest(MAX_DEPTH, "leaf")
    with pytest.raises(StateFileError, match=f"nested 33 levels deep.*{path}|{path}.*nested 33 levels deep"):
        save_state(path, KIND, _nest(MAX_DEPTH + 1, "leaf"))
    assert load_state(path, KIND) == _nest(MAX_DEPTH, "leaf")  # the refused save left the file alone


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        return type(b) is dict and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def test_an_ld3_style_checkpoint_round_trips(tmp_path):
    xi = torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    # An Adam state_dict as LD3 saves it (built by hand: creating an optimizer costs a second):
    # an int-keyed dict of tensors, a tuple of betas.
    adam = {"state": {0: {"step": torch.tensor(1.0), "exp_avg": xi * 0.1, "exp_avg_sq": xi.square() * 1e-3}},
            "param_groups": [{"lr": 0.01, "betas": (0.9, 0.999), "eps": 1e-08, "amsgrad": False, "fused": None,
                              "params": [0]}]}
    tree = {"identity": {"nfe": 4, "solver": "uni_pc", "order": 2, "guidance": None},
            "round": 1, "elapsed": 0.25, "history": [{"valid_hard": 0.5}, {"valid_hard": 0.25}],
            "best": {"valid_hard": 0.25, "round": 1, "xi": xi.clone()},
            "params": {"xi": xi, "xi_c": torch.zeros(2, dtype=torch.float64)}, "opt_xi": adam,
            "z_train": torch.randn(3, 2, 4, 4), "shape": (3, 2, 4, 4)}
    path = tmp_path / "ld3.safetensors"
    save_state(path, KIND, tree)
    assert _same(tree, load_state(path, KIND))


def test_wrong_types_are_library_errors_and_still_type_errors(tmp_path):
    with pytest.raises(TypeError, match="got set") as e:
        save_state(tmp_path / "s.safetensors", KIND, {"x": {1, 2}})
    assert isinstance(e.value, LddFastError)
    with pytest.raises(TypeError, match="dtypes") as e:
        save_state(tmp_path / "s.safetensors", KIND, torch.zeros(2, dtype=torch.complex64))
    assert isinstance(e.value, LddFastError)
    with pytest.raises(TypeError, match="--out path must be a str") as e:
        check_output_path(3, "--out")
    assert isinstance(e.value, LddFastError)
    assert not (tmp_path / "s.safetensors").exists()
