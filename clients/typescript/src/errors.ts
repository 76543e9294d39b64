/*
 * CoreDBError: every non-2xx answer of coredb, carrying its error envelope
 * ({"error": {code, message, details, timestamp, request_id}}, API.md "Errors")
 * so callers branch on `code` rather than on message text.
 */
export class CoreDBError extends Error {
    /** The envelope's code, e.g. "TOKEN_EXPIRED", "CONFLICT"; "NETWORK_ERROR" when no answer came. */
    readonly code: string;
    /** The HTTP status (0 when the request never got an answer). */
    readonly status: number;
    /** The envelope's details (field names, retry_after, ...), {} when absent. */
    readonly details: Record<string, unknown>;
    /** The request id coredb logged this request under (X-Request-ID). */
    readonly requestId: string | undefined;
    /** Seconds the service asked to wait (Retry-After, else details.retry_after). */
    readonly retryAfter: number | undefined;

    constructor(init: {
        code: string;
        message: string;
        status: number;
        details?: Record<string, unknown>;
        requestId?: string;
        retryAfter?: number;
        cause?: unknown;
    }) {
        super(init.message, init.cause === undefined ? undefined : { cause: init.cause });
        this.name = "CoreDBError";
        this.code = init.code;
        this.status = init.status;
        this.details = init.details ?? {};
        this.requestId = init.requestId;
        this.retryAfter = init.retryAfter;
    }
}
