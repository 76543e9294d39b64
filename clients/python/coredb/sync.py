"""The synchronous facade: Client runs an AsyncClient on an event loop of its
own, in a daemon thread, so that it works the same from plain scripts, Flask
handlers and code that already runs an event loop. Every coroutine method of
AsyncClient is a blocking method of Client with the same arguments."""
import asyncio
import inspect
import threading

from .aio import AsyncClient, current_request_id, login_args


async def _with_request_id(rid, coro):
    current_request_id.set(rid)
    return await coro


class _LoopThread:
    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="coredb-client",
                                       daemon=True)
        self.thread.start()

    def run(self, coro):
        # the caller's request id (aio.request_id) travels to the loop's thread
        return asyncio.run_coroutine_threadsafe(_with_request_id(current_request_id.get(), coro),
                                                self.loop).result()

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class Client:
    """coredb over HTTP, blocking. Client(base_url, token=...) or
    Client.login(base_url, email, password); close() when done (or `with`)."""

    def __init__(self, base_url, token=None, refresh_token=None, **kw):
        self._runner = _LoopThread()
        self._async = AsyncClient(base_url, token=token, refresh_token=refresh_token, **kw)

    @classmethod
    def login(cls, *args, **kw):
        """login(base_url, email, password) or login(email, password) with the
        URL from COREDB_URL."""
        base_url, email, password = login_args(args, kw)
        client = cls(base_url, **kw)
        try:
            client.sign_in(email, password)
        except BaseException:
            client.close()
            raise
        return client

    @property
    def aio(self):
        """The AsyncClient underneath (use it only from this client's loop)."""
        return self._async

    def __getattr__(self, name):
        attr = getattr(self._async, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        def call(*args, **kw):
            return self._runner.run(attr(*args, **kw))
        call.__name__ = name
        call.__doc__ = attr.__doc__
        return call

    def __setattr__(self, name, value):
        # token fields live in the AsyncClient; assigning them here sets them there
        if name in ("access_token", "refresh_token", "max_retries", "max_retry_wait"):
            setattr(self._async, name, value)
        else:
            object.__setattr__(self, name, value)

    def transaction(self, connection_id=None):
        return SyncTransaction(self, self._async.transaction(connection_id))

    def lease(self, service_name, operation_type="read", ttl_seconds=None,
              database_type="postgresql"):
        return SyncLease(self, self._async.lease(service_name, operation_type, ttl_seconds,
                                                 database_type))

    def close(self):
        if self._runner is not None:
            self._runner.run(self._async.aclose())
            self._runner.stop()
            object.__setattr__(self, "_runner", None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SyncTransaction:
    """Transaction (aio.py) with a blocking commit()."""

    def __init__(self, client, tx):
        self._client = client
        self._tx = tx

    @property
    def operations(self):
        return self._tx.operations

    def __getattr__(self, name):
        attr = getattr(self._tx, name)

        def call(*args, **kw):
            attr(*args, **kw)
            return self
        return call

    def commit(self):
        return self._client._runner.run(self._tx.commit())


class SyncLease:
    """Lease (aio.py) as a plain context manager."""

    def __init__(self, client, lease):
        self._client = client
        self._lease = lease

    def __getattr__(self, name):
        attr = getattr(self._lease, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        def call(*args, **kw):
            return self._client._runner.run(attr(*args, **kw))
        return call

    def transaction(self):
        return self._client.transaction(self._lease.connection_id)

    def __enter__(self):
        self._client._runner.run(self._lease.acquire())
        return self

    def __exit__(self, *exc):
        self._client._runner.run(self._lease.__aexit__(*exc))
