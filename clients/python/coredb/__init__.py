"""coredb: the Python client of the coredb service (HTTP API v1).

AsyncClient (asyncio, aio.py) is the core, Client (sync.py) its blocking
facade; errors.py the typed exceptions. Seed 000's API lives at its module
paths (coredb.security.*, coredb.management.*, coredb.infrastructure.config),
seed 004's UserService in coredb.services and seed 001's ConnectionAPI in
coredb.connection_api."""
from ._version import __version__
from .aio import AsyncClient, Lease, Transaction, request_id
from .errors import (AuthenticationError, ConflictError, CoreDBError, NotFoundError,
                     PermissionDeniedError, RateLimitedError, ServerError,
                     ServiceUnavailableError, TransportError, ValidationError)
from .sync import Client

__all__ = ["__version__", "AsyncClient", "Client", "Lease", "Transaction", "request_id", "CoreDBError",
           "AuthenticationError", "ConflictError", "NotFoundError", "PermissionDeniedError",
           "RateLimitedError", "ServerError", "ServiceUnavailableError", "TransportError",
           "ValidationError"]
