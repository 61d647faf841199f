"""Checkpoints: round trips, atomic replacement, damaged files, no pickle, random states."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from gpt import checkpoint
from gpt.checkpoint import load_checkpoint, rng_from_json, rng_state_to_json, save_checkpoint
from gpt.errors import UserError


@pytest.fixture
def saved(tmp_path):
    """A good checkpoint on disk (big enough that truncation hits the array data)."""
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, {"w": np.arange(1000, dtype=np.float64)}, {"step": 1})
    return path


def test_round_trip_keeps_values_dtypes_and_meta(tmp_path):
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "ids": np.array([1, 2], dtype=np.uint16),
              "scalar": np.array(3.5), "empty": np.zeros((0, 4), dtype=np.int8), "from_list": [1, 2, 3]}
    meta = {"step": 7, "lr": 3e-4, "name": "ünïcode", "nested": {"list": [1, None, True]}, "big": 2**127 + 1}
    path = tmp_path / "new_dir" / "ckpt.npz"  # the directory is created
    save_checkpoint(path, arrays, meta)
    loaded, loaded_meta = load_checkpoint(path)
    assert loaded_meta == meta
    assert sorted(loaded) == sorted(arrays)
    for name, value in arrays.items():
        expected = np.asarray(value)
        assert loaded[name].dtype == expected.dtype and loaded[name].shape == expected.shape
        np.testing.assert_array_equal(loaded[name], expected)
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.npz"]  # one file, no leftovers


def test_the_metadata_lives_inside_the_npz(saved):
    with zipfile.ZipFile(saved) as archive:
        assert sorted(archive.namelist()) == ["__meta__.npy", "w.npy"]
    with np.load(saved, allow_pickle=False) as archive:
        assert archive["__meta__"].dtype == np.uint8
        assert json.loads(archive["__meta__"].tobytes()) == {"step": 1}


def test_arrays_with_get_are_copied_to_the_host(tmp_path):
    class DeviceArray:  # stands in for a CuPy array, which np.asarray refuses to convert
        def get(self):
            return np.array([1.0, 2.0], dtype=np.float32)

    save_checkpoint(tmp_path / "c.npz", {"w": DeviceArray()}, {})
    arrays, _ = load_checkpoint(tmp_path / "c.npz")
    assert arrays["w"].dtype == np.float32 and arrays["w"].tolist() == [1.0, 2.0]


def test_the_metadata_key_is_reserved(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "c.npz", {"__meta__": np.zeros(1)}, {})


@pytest.mark.parametrize("failure", [KeyboardInterrupt, OSError])
def test_a_failed_write_leaves_the_previous_checkpoint(saved, monkeypatch, failure):
    def crash_midway(file, *args, **kwargs):
        file.write(b"PK\x03\x04 half an archive")
        raise failure("disk full")

    monkeypatch.setattr(checkpoint.np, "savez", crash_midway)
    with pytest.raises(failure):
        save_checkpoint(saved, {"w": np.zeros(3)}, {"step": 2})
    monkeypatch.undo()
    arrays, meta = load_checkpoint(saved)
    assert meta == {"step": 1} and arrays["w"].sum() == sum(range(1000))
    assert [p.name for p in saved.parent.iterdir()] == ["ckpt.npz"]  # the temporary file is gone


def test_meta_that_is_not_json_fails_before_touching_the_file(saved):
    before = saved.read_bytes()
    with pytest.raises(TypeError):
        save_checkpoint(saved, {"w": np.zeros(3)}, {"step": object()})
    assert saved.read_bytes() == before and [p.name for p in saved.parent.iterdir()] == ["ckpt.npz"]


def test_object_arrays_are_never_saved(saved):
    with pytest.raises(ValueError, match="need pickle"):
        save_checkpoint(saved, {"o": np.array([{"a": 1}], dtype=object)}, {})
    assert load_checkpoint(saved)[1] == {"step": 1}
    assert [p.name for p in saved.parent.iterdir()] == ["ckpt.npz"]


def test_missing_checkpoint(tmp_path):
    with pytest.raises(UserError, match=f"no checkpoint at {tmp_path}/ckpt.npz.*--out-dir"):
        load_checkpoint(tmp_path / "ckpt.npz")
    with pytest.raises(UserError, match="is a directory"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("keep", [0.5, 0.95])
def test_truncated_checkpoint(saved, keep):
    raw = saved.read_bytes()
    saved.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(UserError, match=f"checkpoint {saved} is corrupted or truncated"):
        load_checkpoint(saved)


def test_garbage_file(saved):
    saved.write_bytes(b"this is not a checkpoint\n" * 100)
    with pytest.raises(UserError, match=f"checkpoint {saved} is corrupted or truncated"):
        load_checkpoint(saved)


def test_flipped_bit_in_the_array_data(saved):
    raw = bytearray(saved.read_bytes())
    raw[raw.index(np.float64(500.0).tobytes())] ^= 1  # inside w's data: the CRC no longer matches
    saved.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"corrupted or truncated \(BadZipFile: Bad CRC-32"):
        load_checkpoint(saved)


def test_member_that_is_not_an_array(saved):
    with zipfile.ZipFile(saved, "w") as archive:
        archive.writestr("w.npy", b"garbage that is not an array")
        with io.BytesIO() as meta:
            np.save(meta, np.frombuffer(b"{}", np.uint8))
            archive.writestr("__meta__.npy", meta.getvalue())
    with pytest.raises(UserError, match="corrupted: entry 'w' is not an array"):
        load_checkpoint(saved)


@pytest.mark.parametrize("meta, problem", [(None, "no metadata"), (b"{not json", "corrupted metadata"),
                                           (b"\xff\xfe", "corrupted metadata"), (b"[1, 2]", "not an object")])
def test_bad_metadata(saved, meta, problem):
    extra = {} if meta is None else {"__meta__": np.frombuffer(meta, np.uint8)}
    np.savez(saved, w=np.ones(2), **extra)  # an npz, but not a good one of ours
    with pytest.raises(UserError, match=problem):
        load_checkpoint(saved)


def test_pickled_objects_are_refused(saved):
    np.savez(saved, obj=np.array([{"a": 1}], dtype=object), __meta__=np.frombuffer(b"{}", np.uint8))
    with pytest.raises(UserError, match="holds pickled objects, which are never loaded"):
        load_checkpoint(saved)


# ---- random generator states ---------------------------------------------------------------------
@pytest.mark.parametrize("bit_generator", [np.random.PCG64, np.random.MT19937, np.random.Philox, np.random.SFC64])
def test_rng_state_round_trips_through_a_checkpoint(tmp_path, bit_generator):
    rng = np.random.Generator(bit_generator(3))
    rng.random(5)
    rng.integers(0, 10, dtype=np.uint32)  # leaves half a 64-bit draw buffered: part of the state
    save_checkpoint(tmp_path / "c.npz", {}, {"rng": rng_state_to_json(rng)})
    _, meta = load_checkpoint(tmp_path / "c.npz")
    restored = rng_from_json(meta["rng"])
    assert type(restored.bit_generator) is bit_generator
    assert restored.integers(0, 2**32, size=4, dtype=np.uint32).tolist() == \
        rng.integers(0, 2**32, size=4, dtype=np.uint32).tolist()
    assert restored.random(3).tolist() == rng.random(3).tolist()


@pytest.mark.parametrize("state, problem", [
    ({"bit_generator": "default_rng"}, "unknown bit generator 'default_rng'"),
    ([1, 2], "unknown bit generator None"),
    ({"bit_generator": "PCG64"}, "PCG64 random state is invalid"),
    ({"bit_generator": "PCG64", "state": {"state": -1, "inc": 1}, "has_uint32": 0, "uinteger": 0},
     "PCG64 random state is invalid"),
])
def test_bad_rng_state_is_a_user_error(state, problem):
    with pytest.raises(UserError, match=problem):
        rng_from_json(state)
