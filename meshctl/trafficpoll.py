"""``meshctl top``'s I/O: polling ``GET /traffic`` of many meshd at once, never waiting long.

Each poll asks every watched host concurrently (one worker thread per host,
kept across polls) over a kept-alive ``AdminSession`` of the operator's
``AdminClient`` (a TLS handshake per host and poll would cost more CPU than
everything else), whose deadline (``timeout``, below the refresh interval)
covers connect, handshake and answer. A poll returns after ``timeout`` at
the latest: a host still owing its previous answer is reported as not
answering and is not asked again until that answer arrives, so one stuck
host costs one thread, never the others' refresh.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait

from meshctl.admin_client import AdminClient, AdminEndpoint
from meshctl.traffic import Snapshot
from meshd.errors import MeshError

MAX_WORKERS = 64
PATH = "/traffic"


class Poller:
    """Polls ``endpoints``; ``poll`` maps each host to its snapshot or why there is none."""

    def __init__(
        self, client: AdminClient, endpoints: Sequence[AdminEndpoint], timeout: float
    ) -> None:
        self.client, self.endpoints, self.timeout = client, tuple(endpoints), timeout
        workers = max(1, min(MAX_WORKERS, len(self.endpoints)))
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="meshctl-top")
        self.pending: dict[str, Future[Snapshot | str]] = {}
        self.sessions = {e.host: client.session(e) for e in self.endpoints}

    def poll(self) -> dict[str, Snapshot | str]:
        deadline = time.monotonic() + self.timeout
        for endpoint in self.endpoints:
            if endpoint.host not in self.pending:
                self.pending[endpoint.host] = self.pool.submit(self.fetch, endpoint)
        wait(list(self.pending.values()), timeout=max(0.0, deadline - time.monotonic()))
        results: dict[str, Snapshot | str] = {}
        for endpoint in self.endpoints:
            future = self.pending[endpoint.host]
            if future.done():
                results[endpoint.host] = future.result()
                del self.pending[endpoint.host]
            else:
                results[endpoint.host] = f"{endpoint.where}: no answer within {self.timeout:g}s"
        return results

    def fetch(self, endpoint: AdminEndpoint) -> Snapshot | str:
        """One host's snapshot, or one line saying why not (never raises)."""
        try:
            doc = self.sessions[endpoint.host].get(PATH)
        except MeshError as e:
            return e.message
        except Exception as e:  # a bug or an odd answer: still only this host's problem
            return f"{endpoint.where}: {type(e).__name__}: {e}"
        if doc is None:
            return (
                f"{endpoint.where} does not serve {PATH} (a meshd older than meshctl): "
                f"run meshctl join {endpoint.host}"
            )
        try:
            return Snapshot.from_json(doc, endpoint.host)
        except ValueError as e:
            return f"{endpoint.where} sent an unusable traffic snapshot: {e}"

    def close(self) -> None:
        """Stop asking; answers in flight end within ``timeout`` on their own."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        for host, session in self.sessions.items():
            if host not in self.pending:  # a session in use is its thread's to close
                session.close()
