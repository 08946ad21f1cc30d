from __future__ import annotations

import pytest

from edgefleet.serving.errors import InvalidArgument
from edgefleet.serving.grpc_oip import decode_raw_bytes, encode_raw_bytes


def test_raw_bytes_round_trip() -> None:
    elements = [b"", b"hello", "héllo".encode()]
    assert decode_raw_bytes(encode_raw_bytes(elements), "t") == elements


@pytest.mark.parametrize("raw", [b"\x05\x00", b"\x05\x00\x00\x00abc"])
def test_truncated_raw_bytes_are_invalid(raw: bytes) -> None:
    with pytest.raises(InvalidArgument):
        decode_raw_bytes(raw, "inputs[text_input]")
