"""WhiteNoise's middleware, able to run on the event loop as well as in a thread.

Under ASGI (project/asgi.py) a sync-only middleware makes Django run everything inside it,
async views included, through a thread of the request's (async_to_sync): a `?wait=` would hold
that thread for its whole wait. This one serves static files as WhiteNoise does (in a thread:
file I/O) and hands every other request on without leaving the loop: with autorefresh (every
setting but production's) WhiteNoise looks for the file on disk at each request, in a thread, but
only a path under one of its prefixes can name a file, so any other (/api/, /admin/) goes on
without that thread hop (a wake-up of a thread and of the loop: docs/performance.md, "HTTP under load").

WhiteNoise's answer is a FileResponse, whose content is a synchronous iterator of 4 KiB blocks:
Django's ASGI handler consumed it with a thread hop per block and logged, in every server
process, "StreamingHttpResponse must consume synchronous iterators in order to serve them
asynchronously". Served on the loop, the file is read in large blocks, one thread hop each.
"""
from __future__ import annotations

from typing import Any, AsyncIterator

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest
from whitenoise.middleware import WhiteNoiseMiddleware


class WhiteNoise(WhiteNoiseMiddleware):
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Any = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(get_response, *args, **kwargs)
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.async_mode:
            return self.__acall__(request)
        return super().__call__(request)

    async def __acall__(self, request: HttpRequest) -> Any:
        if self.autorefresh:
            url = request.path_info
            static_file = await sync_to_async(self.find_file)(url) if self.may_be_file(url) else None
        else:
            static_file = self.files.get(request.path_info)
        if static_file is not None:
            response = await sync_to_async(self.serve)(static_file, request)
            source = getattr(response, "file_to_stream", None)
            if source is not None:
                response.streaming_content = _blocks(source)
            elif response.streaming and not response.is_async:  # a 304 or a HEAD: an empty body
                response.streaming_content = _each(list(response.streaming_content))
            return response
        return await self.get_response(request)

    def may_be_file(self, url: str) -> bool:
        """Whether find_file could find anything at `url` (False: it would look at no path)."""
        if self.use_finders and url.startswith(self.static_prefix):
            return True
        return any(url.startswith(prefix) for _root, prefix in self.directories)


#: Bytes read per thread hop when a static file is sent from the event loop.
BLOCK = 256 * 1024


async def _each(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _blocks(source: Any) -> AsyncIterator[bytes]:
    """The file's bytes (or the range WhiteNoise sliced of it) read in BLOCK-sized reads, each in a
    thread; the response closes the file when it is done, as with its own iterator."""
    read = sync_to_async(source.read, thread_sensitive=False)
    while block := await read(BLOCK):
        yield block
