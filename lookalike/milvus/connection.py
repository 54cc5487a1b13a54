"""One connection to Milvus for the catalog's parts: a ``MilvusClient`` made at first use and
again after a failure (``locate`` finds a supervised server anew), every call with the
settings' deadline, writes under the machine's write lock (Milvus Lite takes one writer at a
time), and a server that cannot be reached raised as ``BackendUnavailable("milvus")``.

The client's gRPC channel is its own (pymilvus otherwise shares one per address in a process,
so closing a client after a failure would not give the next one a fresh channel, and the
options below would not apply to a channel made first elsewhere). To Milvus Lite it sends no
keepalive pings between calls: pymilvus pings every 10 s, and the gRPC server inside Lite
keeps gRPC's default policy (no pings without a call, none more often than every 5 minutes),
so after two idle pings it closes the connection with GOAWAY ``too_many_pings`` — and a call
sent at that moment fails. (A Milvus server permits pymilvus's pings.)"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, ContextManager

from lookalike.errors import BackendUnavailable
from lookalike.settings import MilvusSettings

_READS = frozenset({"search", "query", "get"})
_WRITES = frozenset({"create_collection", "create_index", "insert", "upsert", "delete", "flush", "load_collection",
                     "create_alias", "alter_alias", "drop_alias", "drop_collection"})
# gRPC's default server policy (what Milvus Lite's server keeps): min_recv_ping_interval 5 min.
_LITE_GRPC_OPTIONS = {"grpc.keepalive_permit_without_calls": 0, "grpc.keepalive_time_ms": 300_000}


def is_unavailable(exc: BaseException) -> bool:
    """Does this error say the server is out of reach (rather than the call being wrong)?"""
    import grpc
    from pymilvus.exceptions import ConnectionConfigException, MilvusException

    if isinstance(exc, ConnectionConfigException):
        return True
    if isinstance(exc, grpc.RpcError):
        return exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    if isinstance(exc, MilvusException):
        text = f"{exc.message}".lower()
        return exc.code == 2 or any(s in text for s in ("fail connecting", "unavailable", "deadline", "timeout",
                                                          "connection refused", "server unavailable"))
    return isinstance(exc, (ConnectionError, TimeoutError))


class Connection:
    def __init__(self, settings: MilvusSettings, uri: str | None = None, locate: Callable[[], str] | None = None,
                 write_lock: Callable[[], ContextManager] | None = None, embedded: bool = False):
        """``embedded``: the server is Milvus Lite (see the module's note on keepalive)."""
        self.settings = settings
        self.grpc_options = dict(_LITE_GRPC_OPTIONS) if embedded else {}
        self.uri = uri or settings.uri
        self._locate = locate
        self.write_lock = write_lock or contextlib.nullcontext
        self.generation = 0  # one more at each lost connection: what was checked over it is checked again
        self._client = None
        self._lock = threading.Lock()

    @property
    def client(self):
        with self._lock:
            if self._client is None:
                from pymilvus import MilvusClient

                try:
                    if self._locate:
                        self.uri = self._locate()
                    self._client = MilvusClient(uri=self.uri, token=self.settings.token.get_secret_value(),
                                                db_name=self.settings.db_name, timeout=self.settings.timeout_s,
                                                dedicated=True, grpc_options=self.grpc_options)
                except Exception as exc:
                    raise self._unavailable(exc) from exc
            return self._client

    def _unavailable(self, exc: BaseException) -> BackendUnavailable:
        reason = getattr(exc, "message", "") or str(exc) or type(exc).__name__
        return BackendUnavailable("milvus", "cannot reach it", detail=f"{self.uri}: {reason}")

    def call(self, method: str, *args, write_locked: bool = False, **kwargs):
        """One client call with the deadline (reads at the configured consistency); a lost
        server is a 503. ``write_locked``: the caller holds the write lock already."""
        kwargs.setdefault("timeout", self.settings.timeout_s)
        if method in _READS:
            kwargs.setdefault("consistency_level", self.settings.consistency_level)
        try:
            if method in _WRITES and not write_locked:
                with self.write_lock():
                    return getattr(self.client, method)(*args, **kwargs)
            return getattr(self.client, method)(*args, **kwargs)
        except BackendUnavailable:
            raise
        except Exception as exc:
            if is_unavailable(exc):  # start afresh next time: a new connection, the collections checked again
                self.generation += 1
                self.close()
                raise self._unavailable(exc) from exc
            raise

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                try:
                    self._client.close()
                except Exception:  # closing a dead connection may complain; nothing to keep
                    pass
                self._client = None
