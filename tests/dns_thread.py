"""The local cluster's DNS server for one headless Service, run on its own event-loop thread by a test."""

from __future__ import annotations

import asyncio
import threading

from kvstore.local.dns import DnsServer, Endpoint, HeadlessService


class DnsThread:
    """``with DnsThread(host, {"kv-0": "127.0.x.10"}) as server:`` answers for ``kv.default.svc.cluster.local``."""

    def __init__(self, host: str, endpoints: dict[str, str], port: int = 0, glue: bool = True,
                 ports: dict[str, int] | None = None) -> None:
        service = HeadlessService("kv", "default", "cluster.local", ports or {"http": 8080, "peer": 8081}, glue=glue)
        self.server = DnsServer(service, host, port)
        for name, address in endpoints.items():
            service.set_endpoint(name, Endpoint(address, name))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> DnsServer:
        self.thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        except BaseException:
            self._close()
            raise
        return self.server

    def __exit__(self, *exc: object) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        finally:
            self._close()

    def _close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
