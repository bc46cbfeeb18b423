"""Stand-ins for a client's connection, for driving serve_connection without a socket."""

from __future__ import annotations

import trio


class ScriptedStream(trio.abc.Stream):
    """A trio Stream whose receive_some and send_all a test defines; the rest does nothing."""

    async def wait_send_all_might_not_block(self) -> None:
        pass

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        pass
