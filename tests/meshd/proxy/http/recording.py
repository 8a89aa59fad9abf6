"""An HTTP app for the exchange's socket tests: it records what each request arrived with."""

from __future__ import annotations

from tests.meshd.harness import QuietHandler, ServedApp


class RecordingApp(ServedApp):
    """A keep-alive HTTP/1.1 app that records each request's path and headers."""

    def __init__(self) -> None:
        seen: list[tuple[str, list[tuple[str, str]]]] = []
        self.seen = seen

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                seen.append((self.path, self.headers.items()))
                self.reply(f"hello {self.path}".encode())

        super().__init__(Handler)

    def paths(self) -> list[str]:
        return [path for path, _ in self.seen]

    def tags(self) -> list[list[str]]:
        """Per request, the values of X-Mesh-Test it arrived with."""
        return [[v for n, v in headers if n.lower() == "x-mesh-test"] for _, headers in self.seen]
