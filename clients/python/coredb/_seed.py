"""What seed 000's classes share: one process-wide AsyncClient built from the
environment (COREDB_URL with COREDB_TOKEN, or COREDB_EMAIL + COREDB_PASSWORD,
logging in once and refreshing from then on), and the seed's result form:
every method returns {"status": "success"|"failure", "error"?, "timestamp",
...data}; a refusal is a "failure" dictionary, not an exception (seed 000,
"Error Handling"), with the service's code and request id alongside."""
import asyncio
import datetime
import os
import threading

from .aio import AsyncClient
from .errors import CoreDBError

_lock = threading.Lock()
_shared = None


def now_iso():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def client_from_env():
    """The shared AsyncClient of the environment (created on first use)."""
    global _shared
    with _lock:
        if _shared is None:
            url = os.environ.get("COREDB_URL")
            if not url:
                raise CoreDBError("COREDB_URL is not set: the URL of the coredb service",
                                  code="CONFIGURATION")
            _shared = AsyncClient(url, token=os.environ.get("COREDB_TOKEN") or None)
        return _shared


def reset_env_client():
    """Forgets the shared client (after the environment changed)."""
    global _shared
    with _lock:
        _shared = None


async def _ready(client):
    if client.access_token:
        return client
    # one login however many calls start at once: they wait on the refresh lock
    async with client._loop_state().refresh_lock:
        if not client.access_token:
            await _sign_in_from_env(client)
    return client


async def _sign_in_from_env(client):
    email, password = os.environ.get("COREDB_EMAIL"), os.environ.get("COREDB_PASSWORD")
    if not email or not password:
        raise CoreDBError("set COREDB_TOKEN, or COREDB_EMAIL and COREDB_PASSWORD",
                          code="CONFIGURATION")
    await client.sign_in(email, password)


def failure(exc):
    out = {"status": "failure", "error": getattr(exc, "message", None) or str(exc),
           "timestamp": now_iso()}
    if isinstance(exc, CoreDBError):
        out.update({"code": exc.code, "http_status": exc.status, "details": exc.details,
                    "request_id": exc.request_id})
    return out


def success(body):
    out = dict(body) if isinstance(body, dict) else {"data": body}
    out["status"] = "success"
    out.setdefault("timestamp", now_iso())
    return out


class SeedBase:
    """A seed class: calls through a client (given, or the environment's)."""

    def __init__(self, client=None):
        self._client = client

    async def _call(self, name, *args, **kw):
        try:
            client = self._client or client_from_env()
            await _ready(client)
            return success(await getattr(client, name)(*args, **kw))
        except (CoreDBError, OSError, asyncio.TimeoutError) as e:
            return failure(e)
