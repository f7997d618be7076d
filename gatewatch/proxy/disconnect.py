"""The client's side of a proxied request: noticing that it left while the gateway waits on
the provider."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from gatewatch.controls import Ticket

__all__ = ["ClientGone", "DisconnectWatch", "Message", "Receive", "Send"]

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ClientGone(Exception):
    """The client closed the connection before the request body was read."""

    pass


class DisconnectWatch:
    """Notices the client leaving while the gateway waits on the provider, and cancels the
    request's task so it stops waiting (the record then says ``client_closed``, not a timeout).

    Stopped just before the response's last body message: uvicorn answers a pending
    ``receive()`` with ``http.disconnect`` once a response is complete."""

    __slots__ = ("_task", "_watcher", "active", "gone")

    def __init__(self, receive: Receive) -> None:
        self.gone = False
        self.active = True
        self._task = asyncio.current_task()
        self._watcher: asyncio.Future[Message] = asyncio.ensure_future(receive())
        self._watcher.add_done_callback(self._on_message)

    def _on_message(self, fut: asyncio.Future[Message]) -> None:
        if not self.active or fut.cancelled() or fut.exception() is not None:
            return
        if fut.result().get("type") == "http.disconnect":
            self.gone = True
            if self._task is not None:
                self._task.cancel()

    def stop(self) -> None:
        if self.active:
            self.active = False
            self._watcher.remove_done_callback(self._on_message)
            if not self._watcher.done():
                self._watcher.cancel()

    def absorb(self) -> bool:
        """In an ``except CancelledError``: True when the cancel was ours (client gone)."""
        if self.gone and self._task is not None:
            self._task.uncancel()
            return True
        return False

    def guard(self, send: Send, ticket: Ticket | None) -> Send:
        """``send`` that stops the watch before the last body message and adds the ticket's
        rate-limit and budget headers to the response start."""

        async def guarded(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.body":
                if not message.get("more_body"):
                    self.stop()
            elif ticket is not None and kind == "http.response.start":
                message["headers"] = [*message["headers"], *ticket.headers()]
            await send(message)

        return guarded
