"""The bounded field reader the handshake and peer link decoders share (gateway/fields.py)."""

from __future__ import annotations

import pytest

from gateway.errors import CountOutOfRange, TooLarge, Truncated, UnaccountedBytes
from gateway.fields import FieldReader


def test_reads_fields_front_to_back() -> None:
    data = b"\x01\x02" + b"\x00\x03abc" + b"\x02xyzw" + b"\x00" + bytes([1, 0, 0, 0, 0, 0, 0, 7])
    reader = FieldReader(data, "m")
    assert reader.take(1, "a") == b"\x01"
    assert reader.uint(1, "b") == 2
    assert reader.sized("text", width=2, low=1, high=3) == b"abc"
    assert reader.sized("pairs", width=1, low=0, high=2, unit=2) == b"xyzw"
    assert reader.sized("empty", width=1, low=0, high=0) == b""
    assert reader.uint(8, "number") == (1 << 56) + 7
    reader.end()


def test_a_truncated_field_names_itself_and_where() -> None:
    reader = FieldReader(b"\x05secret", "hello")
    reader.take(1, "length")
    with pytest.raises(Truncated) as caught:
        reader.take(7, "challenge")
    message = str(caught.value)
    assert message == "hello: challenge needs 7 bytes at offset 1, 6 left"
    assert "secret" not in message
    # A refused read consumes nothing.
    assert reader.offset == 1
    assert reader.take(6, "rest") == b"secret"


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (b"", Truncated, "m: name length needs 1 bytes at offset 0, 0 left"),
        (b"\x00", CountOutOfRange, "m: name length 0 at offset 0 is outside 1..4"),
        (b"\x05abcde", CountOutOfRange, "m: name length 5 at offset 0 is outside 1..4"),
        (b"\x03ab", Truncated, "m: name needs 3 bytes at offset 1, 2 left"),
    ],
)
def test_a_sized_field_checks_its_count_before_reading(
    data: bytes, error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as caught:
        FieldReader(data, "m").sized("name", width=1, low=1, high=4)
    assert str(caught.value) == message


def test_a_sized_field_refuses_with_the_callers_error_and_counts_units() -> None:
    with pytest.raises(TooLarge, match=r"outside 0\.\.2"):
        FieldReader(b"\x00\x03abc", "m").sized("data", width=2, low=0, high=2, error=TooLarge)
    # A count of two-byte items: 2 items need 4 bytes.
    with pytest.raises(Truncated, match="needs 4 bytes"):
        FieldReader(b"\x02abc", "m").sized("pairs", width=1, low=0, high=2, unit=2)


def test_bytes_after_the_last_field_are_refused() -> None:
    reader = FieldReader(b"ab\xff\xff", "verdict")
    reader.take(2, "status")
    with pytest.raises(UnaccountedBytes) as caught:
        reader.end()
    assert str(caught.value) == "verdict: 2 bytes after offset 2"
