"""Codec: round trips for every schema, and strict rejection of malformed input."""

from __future__ import annotations

import contextlib
import dataclasses

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import DecodeError
from pipeline.wire.codec import Limits, decode, encode
from pipeline.wire.messages import SCHEMAS, Image, Message, Predictions, Tracks, _finish, array


def _message_strategy(cls: type[Message]) -> st.SearchStrategy[Message]:
    """Messages with random scalars and random arrays whose named axes agree."""
    scalar = {int: st.integers(-(2**63), 2**63 - 1), float: st.floats(allow_nan=False), str: st.text(max_size=20),
              bool: st.booleans(), dict: st.dictionaries(st.text(max_size=8), st.floats(allow_nan=False), max_size=5)}

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        kwargs = {name: draw(scalar[t]) for name, t in cls.SCALARS.items()}
        kwargs["stamp_ns"] = draw(st.integers(0, 2**63 - 1))
        kwargs["seq"] = draw(st.integers(0, 2**63 - 1))
        sizes: dict[str, int] = {}
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        for name, spec in cls.ARRAYS.items():
            shape = [d if isinstance(d, int) else sizes.setdefault(d, draw(st.integers(0, 12))) for d in spec.shape]
            if spec.dtype.kind == "f":
                a = rng.normal(size=shape).astype(spec.dtype)
            else:
                info = np.iinfo(spec.dtype)
                a = rng.integers(info.min, info.max, size=shape, dtype=spec.dtype, endpoint=True)
            kwargs[name] = a
        return cls(**kwargs)

    return build()


@pytest.mark.parametrize("cls", list(SCHEMAS.values()), ids=lambda c: c.SCHEMA)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_every_schema_round_trips(cls: type[Message], data: st.DataObject) -> None:
    msg = data.draw(_message_strategy(cls))
    frames = encode(msg, publish_ns=123)
    decoded, publish_ns = decode([bytes(f) for f in frames])
    assert publish_ns == 123
    assert decoded == msg
    for name in cls.ARRAYS:
        assert not getattr(decoded, name).flags.writeable


def test_decoded_arrays_are_views_of_the_received_buffers() -> None:
    img = Image(data=np.zeros((720, 1280, 3), np.uint8))
    frames = [bytearray(f) for f in encode(img)]
    decoded, _ = decode(frames)
    assert np.shares_memory(decoded.data, np.frombuffer(frames[1], np.uint8))


def test_arrays_are_coerced_to_their_declared_dtype() -> None:
    t = Tracks(ids=[1, 2], xy=np.ones((2, 2), np.float64))
    assert t.ids.dtype == np.int64 and t.xy.dtype == np.float32


def _tracks_frames(n: int = 3) -> list[bytes]:
    msg = Tracks(ids=np.arange(n), xy=np.zeros((n, 2)), vxy=np.zeros((n, 2)), kind=np.ones(n))
    return [bytes(f) for f in encode(msg)]


def _header(frames: list[bytes]) -> list:
    return msgspec.msgpack.decode(frames[0])


def _with_header(frames: list[bytes], header: list) -> list[bytes]:
    return [msgspec.msgpack.encode(header), *frames[1:]]


def test_unknown_schema_is_rejected() -> None:
    frames = _tracks_frames()
    h = _header(frames)
    h[0] = "evil/Schema"
    with pytest.raises(DecodeError, match="unknown_schema: schema 'evil/Schema' is not known"):
        decode(_with_header(frames, h))


def test_other_version_is_rejected() -> None:
    frames = _tracks_frames()
    h = _header(frames)
    h[1] = 99
    with pytest.raises(DecodeError, match="bad_version: drivecast/Tracks version 99, expected 1"):
        decode(_with_header(frames, h))


def test_expected_schema_is_enforced() -> None:
    with pytest.raises(DecodeError, match="wrong_schema: expected drivecast/Image, got drivecast/Tracks"):
        decode(_tracks_frames(), expect=Image)


def test_truncated_message_is_rejected() -> None:
    frames = _tracks_frames()
    with pytest.raises(DecodeError, match="truncated: drivecast/Tracks: header lists 4 arrays, got 2 frames"):
        decode(frames[:3])
    with pytest.raises(DecodeError, match="truncated"):
        decode([])


def test_garbage_header_is_rejected() -> None:
    with pytest.raises(DecodeError, match="bad_header"):
        decode([b"\xc1\xff garbage", b""])


@pytest.mark.parametrize("dtype", ["|O", "<V8", ">f4", "<U4"])
def test_disallowed_or_wrong_dtype_is_rejected(dtype: str) -> None:
    frames = _tracks_frames()
    h = _header(frames)
    h[7][1][1] = dtype  # xy
    with pytest.raises(DecodeError, match=r"bad_dtype: drivecast/Tracks.xy: dtype .*, expected '<f4'"):
        decode(_with_header(frames, h))


def test_shape_not_matching_bytes_is_rejected() -> None:
    frames = [bytes(f) for f in encode(Image(data=np.zeros((2, 2, 3), np.uint8)))]
    h = _header(frames)
    h[7][0][2] = [2, 2, 4]
    with pytest.raises(DecodeError, match=r"bad_size: drivecast/Image.data: shape \[2, 2, 4\] needs 16 bytes, frame has 12"):
        decode(_with_header(frames, h))


def test_shape_not_matching_declaration_is_rejected() -> None:
    frames = _tracks_frames(3)
    h = _header(frames)
    h[7][1][2] = [2, 3]
    with pytest.raises(DecodeError, match=r"bad_shape: drivecast/Tracks.xy: shape \[2, 3\], expected \['N', 2\]"):
        decode(_with_header(frames, h))


def test_arrays_sharing_an_axis_must_agree() -> None:
    msg = Tracks(ids=np.arange(3), xy=np.zeros((3, 2)), vxy=np.zeros((3, 2)), kind=np.ones(3))
    frames = [bytes(f) for f in encode(msg)]
    h = _header(frames)
    h[7][3][2] = [2]  # kind claims 2 rows
    frames[4] = frames[4][:2]
    with pytest.raises(DecodeError, match="bad_shape: drivecast/Tracks.kind: axis N has length 2, but ids has 3"):
        decode(_with_header(frames, h))
    with pytest.raises(ValueError, match="drivecast/Tracks.xy: axis N has length 0, but ids has 2"):
        encode(Tracks(ids=[1, 2]))


def test_negative_dimension_is_rejected() -> None:
    frames = _tracks_frames(3)
    h = _header(frames)
    h[7][0][2] = [-3]
    with pytest.raises(DecodeError, match="bad_shape"):
        decode(_with_header(frames, h))


def test_oversized_array_is_rejected() -> None:
    img = Image(data=np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(DecodeError, match="oversized: drivecast/Image.data: 30000 bytes exceeds the limits"):
        decode(encode(img), limits=Limits(max_array_bytes=10_000))


def test_oversized_header_is_rejected() -> None:
    with pytest.raises(DecodeError, match="oversized: header of 70000 bytes"):
        decode([b"\x00" * 70000])


def test_wrong_scalar_type_is_rejected() -> None:
    frames = [bytes(f) for f in encode(Image(encoding="rgb8"))]
    h = _header(frames)
    h[6]["encoding"] = 5
    with pytest.raises(DecodeError, match="bad_fields: drivecast/Image.encoding: expected str, got int"):
        decode(_with_header(frames, h))


def test_missing_or_extra_fields_are_rejected() -> None:
    frames = [bytes(f) for f in encode(Image())]
    h = _header(frames)
    h[6]["__class__"] = "x"
    with pytest.raises(DecodeError, match="bad_fields"):
        decode(_with_header(frames, h))
    h = _header(_tracks_frames())
    h[7][0][0] = "secret"
    with pytest.raises(DecodeError, match="bad_fields: drivecast/Tracks: arrays"):
        decode(_with_header(_tracks_frames(), h))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=6))
def test_random_frames_never_crash_the_decoder(frames: list[bytes]) -> None:
    with contextlib.suppress(DecodeError):
        decode(frames)


@settings(max_examples=100, deadline=None)
@given(cut=st.integers(0, 200), flip=st.integers(0, 255))
def test_corrupted_headers_raise_only_decode_errors(cut: int, flip: int) -> None:
    frames = _tracks_frames()
    header = bytearray(frames[0])
    if header:
        header[cut % len(header)] ^= flip
    with contextlib.suppress(DecodeError):
        decode([bytes(header[: len(header) - cut % 7]), *frames[1:]])


def test_message_equality_compares_arrays() -> None:
    a = Tracks(ids=[1, 2], kind=[1, 1])
    assert a == dataclasses.replace(a)
    assert a != Tracks(ids=[1, 3], kind=[1, 1])


# -- optional arrays: Predictions with K futures ---------------------------------------------------------------

def _futures(n: int = 2, k: int = 6, t: int = 3, seed: int = 0) -> Predictions:
    rng = np.random.default_rng(seed)
    modes = rng.normal(size=(n, k, t, 2)).astype(np.float32)
    prob = rng.dirichlet(np.ones(k), size=n).astype(np.float32)
    best = prob.argmax(1)
    return Predictions(stamp_ns=5, model="vehicle", ids=np.arange(n), kind=np.ones(n), t_ns=10 + np.arange(t),
                       xy=modes[np.arange(n), best], modes=modes, prob=prob)


# `Predictions(stamp_ns=1e9, frame_id="map", seq=7, model="vehicle", ids=[3, 9], kind=[1, 2],
# t_ns=[1.1e9, 1.2e9], xy=arange(8).reshape(2, 2, 2))` as the codec encoded it (publish_ns 1_000_500_000)
# before Predictions had `modes` and `prob`: a message of one future must keep exactly these bytes.
_ONE_FUTURE_BEFORE_MODES = [
    "98b56472697665636173742f50726564696374696f6e730107ce3b9aca00ce3ba26b20a36d617081a56d6f64656ca776656869636c65"
    "9493a3696473a33c6938910293a46b696e64a37c7531910293a4745f6e73a33c6938910293a27879a33c663493020202",
    "03000000000000000900000000000000", "0102", "00ab904100000000008c864700000000",
    "000000000000803f0000004000004040000080400000a0400000c0400000e040"]


def _one_future() -> Predictions:
    return Predictions(stamp_ns=1_000_000_000, frame_id="map", seq=7, model="vehicle", ids=np.array([3, 9]),
                       kind=np.array([1, 2]), t_ns=np.array([1_100_000_000, 1_200_000_000]),
                       xy=np.arange(8, dtype=np.float32).reshape(2, 2, 2))


def test_predictions_of_k_futures_round_trip_with_their_probabilities() -> None:
    msg = _futures()
    frames = [bytes(f) for f in encode(msg)]
    assert len(frames) == 1 + 6
    for expect in (None, Predictions):  # the checked path and msgspec's fast path
        decoded, _ = decode(frames, expect=expect)
        assert decoded == msg and decoded.modes.shape == (2, 6, 3, 2) and decoded.prob.shape == (2, 6)
        assert not decoded.modes.flags.writeable and not decoded.prob.flags.writeable


def test_a_prediction_of_one_future_has_the_bytes_it_had_before_modes_existed() -> None:
    frames = encode(_one_future(), publish_ns=1_000_500_000)
    assert [bytes(f).hex() for f in frames] == _ONE_FUTURE_BEFORE_MODES


@pytest.mark.parametrize("expect", [None, Predictions])
def test_a_prediction_recorded_before_modes_existed_decodes_with_no_futures(expect: type[Message] | None) -> None:
    decoded, publish_ns = decode([bytes.fromhex(f) for f in _ONE_FUTURE_BEFORE_MODES], expect=expect)
    assert publish_ns == 1_000_500_000 and decoded == _one_future()
    assert isinstance(decoded, Predictions)
    assert decoded.modes.shape == (2, 0, 2, 2) and decoded.prob.shape == (2, 0)  # N and T of the message, K 0
    assert not decoded.modes.flags.writeable


def test_an_empty_optional_array_takes_the_message_axes_so_a_message_equals_its_round_trip() -> None:
    msg = _one_future()
    assert msg.modes.shape == (2, 0, 2, 2) and msg.prob.shape == (2, 0)
    assert decode(encode(msg))[0] == msg
    no_agents = Predictions(t_ns=[1, 2, 3], xy=np.zeros((0, 3, 2)), modes=np.zeros((0, 6, 3, 2)), prob=np.zeros((0, 6)))
    frames = encode(no_agents)  # K = 6 of no agent still travels: K is what says whether they are there
    assert len(frames) == 7 and decode(frames)[0] == no_agents


@pytest.mark.parametrize(("array", "shape", "message"), [
    ("prob", [2, 5], r"bad_shape: drivecast/Predictions.prob: axis K has length 5, but modes has 6"),
    ("modes", [3, 6, 3, 2], r"bad_shape: drivecast/Predictions.modes: axis N has length 3, but ids has 2"),
    ("modes", [2, 6, 4, 2], r"bad_shape: drivecast/Predictions.modes: axis T has length 4, but t_ns has 3"),
    ("modes", [2, 6, 6], r"bad_shape: drivecast/Predictions.modes: shape \[2, 6, 6\], expected \['N', 'K', 'T', 2\]"),
])
@pytest.mark.parametrize("expect", [None, Predictions])
def test_futures_whose_shape_does_not_fit_the_message_are_refused(array: str, shape: list[int], message: str,
                                                                   expect: type[Message] | None) -> None:
    frames = [bytes(f) for f in encode(_futures())]
    h = _header(frames)
    at = {"modes": 4, "prob": 5}[array]
    h[7][at][2] = shape
    frames[1 + at] = bytes(4 * int(np.prod(shape)))
    with pytest.raises(DecodeError, match=message):
        decode(_with_header(frames, h), expect=expect)


def test_a_message_with_modes_but_no_prob_is_refused_naming_the_arrays() -> None:
    frames = [bytes(f) for f in encode(_futures())]
    h = _header(frames)
    del h[7][5]
    with pytest.raises(DecodeError, match=r"bad_fields: drivecast/Predictions: arrays \['ids', 'kind', 't_ns', 'xy', "
                       r"'modes'\], expected \['ids', 'kind', 't_ns', 'xy', 'modes', 'prob'\] \(or without the "
                       r"optional modes, prob\)"):
        decode(_with_header(frames[:6], h), expect=Predictions)


def test_futures_that_do_not_fit_the_message_are_refused_at_encode() -> None:
    msg = _futures()
    msg.prob = np.ones((2, 5), np.float32)
    with pytest.raises(ValueError, match="drivecast/Predictions.prob: axis K has length 5, but modes has 6"):
        encode(msg)


def test_a_schema_whose_optional_array_could_not_be_left_out_is_refused_at_import() -> None:
    with pytest.raises(TypeError, match="Bad.extra: an optional array needs an axis no required array has"):
        @_finish
        @dataclasses.dataclass(kw_only=True, eq=False)
        class Bad(Message):
            ids: np.ndarray = array("int64", "N")
            extra: np.ndarray = array("float32", "N", optional=True)
    with pytest.raises(TypeError, match="Late: optional arrays must come after the required ones"):
        @_finish
        @dataclasses.dataclass(kw_only=True, eq=False)
        class Late(Message):
            extra: np.ndarray = array("float32", "K", optional=True)
            ids: np.ndarray = array("int64", "N")
