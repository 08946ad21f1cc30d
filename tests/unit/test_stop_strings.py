from __future__ import annotations

from edgefleet.serving.engines.text import StopStringFilter


def run(stops: tuple[str, ...], pieces: list[str]) -> tuple[str, bool]:
    scanner = StopStringFilter(stops)
    out = []
    for piece in pieces:
        text, stopped = scanner.feed(piece)
        out.append(text)
        if stopped:
            return "".join(out), True
    return "".join(out) + scanner.flush(), False


def test_no_stop_strings_passes_text_through() -> None:
    assert run((), ["Hel", "lo"]) == ("Hello", False)


def test_stop_string_split_across_pieces_never_leaks() -> None:
    scanner = StopStringFilter(("END",))
    assert scanner.feed("abc E") == ("abc ", False)
    assert scanner.feed("N") == ("", False)
    assert scanner.feed("D more") == ("", True)


def test_false_start_of_stop_string_is_released() -> None:
    assert run(("END",), ["x E", "Nx", " y"]) == ("x ENx y", False)


def test_earliest_of_several_stop_strings_wins() -> None:
    assert run(("bb", "a"), ["xxbba"]) == ("xx", True)


def test_text_held_at_end_of_stream_is_flushed() -> None:
    assert run(("STOP",), ["done ST"]) == ("done ST", False)
