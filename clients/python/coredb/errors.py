"""Typed exceptions carrying coredb's error envelope
({"error": {code, message, details, timestamp, request_id}}, API.md "Errors").

CoreDBError is the base; one subclass per family of status codes so callers
can catch what they handle (AuthenticationError for 401, and so on)."""


class CoreDBError(Exception):
    """An error answer of coredb (or a transport failure, status None)."""

    def __init__(self, message, code=None, status=None, details=None, request_id=None,
                 timestamp=None, retry_after=None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.details = details or {}
        self.request_id = request_id
        self.timestamp = timestamp
        self.retry_after = retry_after

    def __str__(self):
        where = f" (request {self.request_id})" if self.request_id else ""
        return f"{self.status or '-'} {self.code or 'ERROR'}: {self.message}{where}"


class TransportError(CoreDBError):
    """coredb could not be reached, or its answer was not the API's."""


class ValidationError(CoreDBError):
    """400 (INVALID_JSON, VALIDATION_FAILED, UNKNOWN_COLUMN, ...) and 422."""


class AuthenticationError(CoreDBError):
    """401: UNAUTHORIZED, TOKEN_EXPIRED, TOKEN_REVOKED, INVALID_CREDENTIALS."""


class PermissionDeniedError(CoreDBError):
    """403 FORBIDDEN."""


class NotFoundError(CoreDBError):
    """404 NOT_FOUND, UNKNOWN_TABLE."""


class ConflictError(CoreDBError):
    """409 CONFLICT, PRECONDITION_FAILED, MIGRATION_CHECKSUM_MISMATCH."""


class RateLimitedError(CoreDBError):
    """429 RATE_LIMITED (retry_after in seconds)."""


class ServiceUnavailableError(CoreDBError):
    """503 DATABASE_UNAVAILABLE, POOL_EXHAUSTED, MAINTENANCE, ... and 504."""


class ServerError(CoreDBError):
    """500 INTERNAL_ERROR and other 5xx."""


_BY_STATUS = {400: ValidationError, 401: AuthenticationError, 403: PermissionDeniedError,
              404: NotFoundError, 409: ConflictError, 422: ValidationError,
              429: RateLimitedError, 503: ServiceUnavailableError, 504: ServiceUnavailableError}


def error_class(status):
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ServerError if status >= 500 else CoreDBError
