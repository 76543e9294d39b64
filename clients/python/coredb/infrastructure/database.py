"""Seed 000's get_session(), mapped onto coredb's data API.

coredb runs structured queries, not SQL text, so a session's execute() takes
what the data API takes: a query body (the body of POST /data/query, with
"table") runs at once and returns its answer; an operation of
POST /data/transaction (with "operation") is kept and sent, with the others,
all or nothing by commit(). rollback() forgets the kept operations, and so
does leaving the block without commit() (nothing was written yet). The
client is the environment's (COREDB_URL, COREDB_TOKEN or COREDB_EMAIL +
COREDB_PASSWORD), as for the seed's other classes."""
import contextlib

from .._seed import _ready, client_from_env


class Session:
    def __init__(self, client):
        self.client = client
        self.pending = []

    async def execute(self, query):
        if not isinstance(query, dict):
            raise TypeError("coredb runs structured queries: pass a query body or a transaction "
                            "operation (a dict), not SQL text")
        if "operation" in query:
            self.pending.append(query)
            return None
        body = dict(query)
        return await self.client.query(body.pop("table", None), **body)

    async def commit(self):
        ops, self.pending = self.pending, []
        if not ops:
            return None
        return await self.client.run_transaction(ops)

    async def rollback(self):
        self.pending = []


@contextlib.asynccontextmanager
async def get_session(client=None):
    """async with get_session() as session: await session.execute(...); await session.commit()"""
    client = await _ready(client or client_from_env())
    session = Session(client)
    try:
        yield session
    finally:
        await session.rollback()
