"""Pure text helpers for token-by-token generation."""

from __future__ import annotations


class StopStringFilter:
    """Cuts a stream of text before the first stop string.

    Text that could be the start of a stop string is held back until the next
    piece shows whether it is one, so a stop string never leaks to the client,
    not even partly.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(stop for stop in stops if stop)
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, whether a stop string was reached)."""
        buffer = self._pending + text
        if not self._stops:
            self._pending = ""
            return buffer, False
        positions = [buffer.find(stop) for stop in self._stops]
        found = [pos for pos in positions if pos >= 0]
        if found:
            self._pending = ""
            return buffer[: min(found)], True
        hold = max(self._partial_match(buffer, stop) for stop in self._stops)
        self._pending = buffer[len(buffer) - hold :]
        return buffer[: len(buffer) - hold], False

    def flush(self) -> str:
        """Text held back when the stream ends without a stop string."""
        pending, self._pending = self._pending, ""
        return pending

    @staticmethod
    def _partial_match(buffer: str, stop: str) -> int:
        for length in range(min(len(stop) - 1, len(buffer)), 0, -1):
            if buffer.endswith(stop[:length]):
                return length
        return 0
