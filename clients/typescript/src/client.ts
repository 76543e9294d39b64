/*
 * CoreDB: a thin fetch-based client of the coredb HTTP API (Node 18+).
 * One request path (send) does what every call needs: bearer token, a fresh
 * access token from the refresh token when the old one expired (one refresh
 * in flight at a time, the rotated refresh token kept), bounded retries of
 * idempotent calls on 503 honouring Retry-After, X-Request-ID and
 * X-Client-Version, and CoreDBError for every non-2xx answer. The methods
 * below are one-line adapters typed from docs/openapi.json (schema.d.ts).
 */
import { randomUUID } from "node:crypto";
import { CoreDBError } from "./errors.js";
import type { components, operations } from "./schema.js";

/** The client's version: the service's (coredb --version). A v1 client works with any 1.x service. */
export const VERSION = "1.0.0";

type Schemas = components["schemas"];
type JsonOf<T> = T extends { content: { "application/json": infer B } } ? B : never;
/** The JSON body an operation accepts. */
export type Body<Op extends keyof operations> = operations[Op] extends { requestBody?: infer R }
    ? JsonOf<NonNullable<R>> : never;
/** The JSON body an operation answers on success. */
export type Answer<Op extends keyof operations> = operations[Op] extends { responses: infer R }
    ? JsonOf<R[200 & keyof R]> | JsonOf<R[201 & keyof R]> | JsonOf<R[202 & keyof R]> : never;

export type User = Schemas["User"];
export type TokenPair = Schemas["TokenPair"];
export type Query = Schemas["Query"];
export type QueryResult = Schemas["QueryResult"];
export type Operation = Schemas["Operation"];
export type TransactionResult = Schemas["TransactionResult"];
export type Health = Schemas["Health"];
export type Backup = Schemas["Backup"];
export type Lease = Answer<"connectionAcquire">;

export interface Tokens {
    accessToken: string;
    refreshToken?: string;
}

export interface ClientOptions {
    /** e.g. "http://127.0.0.1:8095" (no trailing path). */
    baseUrl: string;
    /** An access token to start with. */
    token?: string;
    /** A refresh token: used, and replaced by the rotated one, when the access token expires. */
    refreshToken?: string;
    /** Retries of an idempotent call answered 503 (default 3; 0 disables). */
    maxRetries?: number;
    /** Upper bound of one wait between retries, in ms (default 30000). */
    maxRetryDelayMs?: number;
    /** Per-request timeout in ms (default 60000). */
    timeoutMs?: number;
    /** Called with each new token pair (after login and every refresh), e.g. to persist them. */
    onTokens?: (tokens: Tokens) => void;
    /** The fetch to use (default globalThis.fetch). */
    fetch?: typeof fetch;
}

export interface RequestOptions {
    body?: unknown;
    query?: Record<string, string | number | boolean | undefined>;
    /** Sent as X-Request-ID (default: a new UUID per call, the same for its retries). */
    requestId?: string;
    /** Run on a leased connection (X-Connection-ID). */
    connectionId?: string;
    /** Override: may this call be retried on 503? (default: GET, HEAD, PUT, DELETE). */
    idempotent?: boolean;
    /** Send the bearer token (default true). */
    auth?: boolean;
    /** Return the body as text instead of JSON. */
    text?: boolean;
    /**
     * Retry a non-idempotent call too, but only on the 503s that say it never
     * ran (POOL_EXHAUSTED, MAINTENANCE). Used for the token refresh.
     */
    retryUnexecuted?: boolean;
    /** Non-2xx statuses whose body is the answer rather than an error (GET /health's 503). */
    answerStatuses?: number[];
}

const IDEMPOTENT = new Set(["GET", "HEAD", "PUT", "DELETE"]);
/* 503 codes answered before the operation ran: the pool gave no connection, or a restore is running */
const UNEXECUTED = new Set(["POOL_EXHAUSTED", "MAINTENANCE"]);

function sleep(ms: number): Promise<void> {
    return new Promise((resolve) => setTimeout(resolve, ms));
}

/* Retry-After is seconds or an HTTP date (RFC 9110 10.2.3). */
function parseRetryAfter(value: string | null): number | undefined {
    if (value === null || value.trim() === "")
        return undefined;
    if (/^\d+$/.test(value.trim()))
        return Number(value.trim());
    const at = Date.parse(value);
    return Number.isNaN(at) ? undefined : Math.max(0, (at - Date.now()) / 1000);
}

export class CoreDB {
    readonly baseUrl: string;
    private accessToken: string | undefined;
    private refreshToken: string | undefined;
    private refreshing: Promise<void> | undefined;
    /** The user this client logged in as (from the login answer); undefined for a token-only client. */
    user: User | undefined;
    private readonly maxRetries: number;
    private readonly maxRetryDelayMs: number;
    private readonly timeoutMs: number;
    private readonly onTokens: ((tokens: Tokens) => void) | undefined;
    private readonly fetchImpl: typeof fetch;

    constructor(opts: ClientOptions) {
        this.baseUrl = opts.baseUrl.replace(/\/+$/, "");
        this.accessToken = opts.token;
        this.refreshToken = opts.refreshToken;
        this.maxRetries = opts.maxRetries ?? 3;
        this.maxRetryDelayMs = opts.maxRetryDelayMs ?? 30000;
        this.timeoutMs = opts.timeoutMs ?? 60000;
        this.onTokens = opts.onTokens;
        this.fetchImpl = opts.fetch ?? globalThis.fetch;
    }

    /** A client logged in as email: it keeps its access token fresh with the refresh token. */
    static async login(opts: ClientOptions & { email: string; password: string }): Promise<CoreDB> {
        const client = new CoreDB(opts);
        await client.login(opts.email, opts.password);
        return client;
    }

    /** The current tokens (e.g. to hand to another process); undefined before login. */
    get tokens(): Tokens | undefined {
        return this.accessToken === undefined ? undefined
            : { accessToken: this.accessToken, refreshToken: this.refreshToken };
    }

    private setTokens(pair: TokenPair): void {
        if (typeof pair.access_token !== "string")
            throw new CoreDBError({ code: "INVALID_RESPONSE", status: 200,
                message: "The token answer carries no access_token" });
        this.accessToken = pair.access_token;
        this.refreshToken = pair.refresh_token;
        this.onTokens?.({ accessToken: pair.access_token, refreshToken: pair.refresh_token });
    }

    /*
     * One refresh at a time: every call that finds its token expired waits
     * for the same refresh, since a refresh token is single-use and
     * presenting it twice ends the whole session (reuse detection).
     */
    private refreshOnce(): Promise<void> {
        if (this.refreshing === undefined) {
            const used = this.refreshToken;
            this.refreshing = (async () => {
                if (used === undefined)
                    throw new CoreDBError({ code: "TOKEN_EXPIRED", status: 401,
                        message: "The access token expired and the client has no refresh token" });
                this.setTokens(await this.send<TokenPair>("POST", "/api/v1/auth/refresh",
                    { body: { refresh_token: used }, auth: false, retryUnexecuted: true }));
            })().finally(() => { this.refreshing = undefined; });
        }
        return this.refreshing;
    }

    /** Any route: the JSON (or text) answer, or a CoreDBError. */
    async request<T = unknown>(method: string, path: string, opts: RequestOptions = {}): Promise<T> {
        const sentWith = this.accessToken;
        try {
            return await this.send<T>(method, path, opts);
        } catch (err) {
            /* Only an expired token is worth a refresh: a revoked or forged one stays refused. */
            if (!(err instanceof CoreDBError) || err.code !== "TOKEN_EXPIRED" || opts.auth === false
                || this.refreshToken === undefined)
                throw err;
            if (this.accessToken === sentWith)  /* else another call refreshed meanwhile */
                await this.refreshOnce();
            return await this.send<T>(method, path, opts);
        }
    }

    private async send<T>(method: string, path: string, opts: RequestOptions): Promise<T> {
        const url = new URL(this.baseUrl + path);
        for (const [k, v] of Object.entries(opts.query ?? {}))
            if (v !== undefined)
                url.searchParams.set(k, String(v));
        const headers: Record<string, string> = {
            "Accept": "application/json",
            "X-Request-ID": opts.requestId ?? randomUUID(),
            "X-Client-Version": `coredb-ts/${VERSION}`,
        };
        if (opts.auth !== false && this.accessToken !== undefined)
            headers["Authorization"] = `Bearer ${this.accessToken}`;
        if (opts.connectionId !== undefined)
            headers["X-Connection-ID"] = opts.connectionId;
        let payload: string | undefined;
        if (opts.body !== undefined) {
            headers["Content-Type"] = "application/json";
            payload = JSON.stringify(opts.body);
        }
        const retryable = opts.idempotent ?? IDEMPOTENT.has(method);
        for (let attempt = 0; ; attempt++) {
            let resp: Response;
            try {
                resp = await this.fetchImpl(url, { method, headers, body: payload,
                    signal: AbortSignal.timeout(this.timeoutMs) });
            } catch (cause) {
                throw new CoreDBError({ code: "NETWORK_ERROR", status: 0, requestId: headers["X-Request-ID"],
                    message: `${method} ${path}: ${(cause as Error).message}`, cause });
            }
            if (resp.ok || opts.answerStatuses?.includes(resp.status)) {
                if (resp.status === 204)
                    return undefined as T;
                return (opts.text ? await resp.text() : await resp.json()) as T;
            }
            const err = await this.toError(resp, headers["X-Request-ID"]);
            if (resp.status !== 503 || attempt >= this.maxRetries
                || !(retryable || (opts.retryUnexecuted === true && UNEXECUTED.has(err.code))))
                throw err;
            /* the service's hint, else a short exponential backoff; bounded either way */
            const waitMs = err.retryAfter !== undefined ? err.retryAfter * 1000 : 250 * 2 ** attempt;
            await sleep(Math.min(waitMs, this.maxRetryDelayMs));
        }
    }

    private async toError(resp: Response, sentId: string): Promise<CoreDBError> {
        const text = await resp.text();
        let env: { code?: string; message?: string; details?: Record<string, unknown>; request_id?: string } = {};
        try {
            const parsed = JSON.parse(text) as { error?: typeof env };
            if (parsed && typeof parsed.error === "object" && parsed.error !== null)
                env = parsed.error;
        } catch {
            /* not an envelope (a proxy's page): keep the status */
        }
        const details = env.details ?? {};
        const hinted = typeof details["retry_after"] === "number" ? details["retry_after"] as number : undefined;
        return new CoreDBError({
            code: env.code ?? `HTTP_${resp.status}`,
            message: env.message ?? `HTTP ${resp.status}`,
            status: resp.status,
            details,
            requestId: env.request_id ?? resp.headers.get("X-Request-ID") ?? sentId,
            retryAfter: parseRetryAfter(resp.headers.get("Retry-After")) ?? hinted,
        });
    }

    /* ---- authentication and sessions ---- */

    async login(email: string, password: string): Promise<TokenPair> {
        const pair = await this.send<TokenPair>("POST", "/api/v1/auth/login",
            { body: { email, password }, auth: false });
        this.setTokens(pair);
        this.user = pair.user;
        return pair;
    }
    /** Exchanges the refresh token for a new pair now (rotation: the old one stops working). */
    async refresh(): Promise<void> { await this.refreshOnce(); }
    async logout(): Promise<void> {
        await this.request("POST", "/api/v1/auth/logout");
        this.accessToken = undefined;
        this.refreshToken = undefined;
        this.user = undefined;
    }
    revokeSessions(userId: string): Promise<Answer<"revokeSessions">> {
        return this.request("POST", "/api/v1/auth/revoke", { body: { user_id: userId } });
    }
    listSessions(): Promise<Answer<"listSessions">> { return this.request("GET", "/api/v1/auth/sessions"); }
    deleteSession(sessionId: string): Promise<void> {
        return this.request("DELETE", `/api/v1/auth/sessions/${encodeURIComponent(sessionId)}`);
    }

    /* ---- users ---- */

    createUser(body: Body<"createUserV1">): Promise<User> {
        return this.request("POST", "/api/v1/users", { body });
    }
    listUsers(query: { page?: number; limit?: number } = {}): Promise<Answer<"listUsersV1">> {
        return this.request("GET", "/api/v1/users", { query });
    }
    getUser(userId: string): Promise<User> {
        return this.request("GET", `/api/v1/users/${encodeURIComponent(userId)}`);
    }
    getUserByEmail(email: string): Promise<User> {
        return this.request("GET", `/api/v1/users/email/${encodeURIComponent(email)}`);
    }
    getUserByUsername(username: string): Promise<User> {
        return this.request("GET", `/api/v1/users/username/${encodeURIComponent(username)}`);
    }
    updateUser(userId: string, body: Body<"updateUserV1">): Promise<User> {
        return this.request("PUT", `/api/v1/users/${encodeURIComponent(userId)}`, { body });
    }
    deleteUser(userId: string): Promise<void> {
        return this.request("DELETE", `/api/v1/users/${encodeURIComponent(userId)}`);
    }

    /* ---- data ---- */

    query(body: Query, opts: { connectionId?: string } = {}): Promise<QueryResult> {
        /* a read: retried on 503 like a GET */
        return this.request("POST", "/api/v1/data/query", { body, idempotent: true, ...opts });
    }
    transaction(operations: Operation[], opts: { connectionId?: string } = {}): Promise<TransactionResult> {
        return this.request("POST", "/api/v1/data/transaction", { body: { operations }, ...opts });
    }
    transactionStatus(transactionId: string): Promise<Answer<"dataTransactionStatus">> {
        return this.request("GET", `/api/v1/data/transactions/${encodeURIComponent(transactionId)}`);
    }
    tables(): Promise<Answer<"dataTables">> { return this.request("GET", "/api/v1/data/tables"); }

    /* ---- connection leases ---- */

    acquire(body: Body<"connectionAcquire">): Promise<Lease> {
        return this.request("POST", "/api/v1/connections/acquire", { body });
    }
    release(connectionId: string, serviceName: string): Promise<Answer<"connectionRelease">> {
        return this.request("POST", "/api/v1/connections/release",
            { body: { connection_id: connectionId, service_name: serviceName } });
    }
    renew(connectionId: string, body: Body<"connectionRenew"> = {} as Body<"connectionRenew">): Promise<Answer<"connectionRenew">> {
        return this.request("POST", `/api/v1/connections/${encodeURIComponent(connectionId)}/renew`, { body });
    }
    listConnections(): Promise<Answer<"connectionList">> { return this.request("GET", "/api/v1/connections"); }
    /** Runs fn with a leased connection and releases it afterwards, whether fn succeeds or throws. */
    async withLease<T>(body: Body<"connectionAcquire">, fn: (lease: Lease) => Promise<T>): Promise<T> {
        const lease = await this.acquire(body);
        if (typeof lease.connection_id !== "string")
            throw new CoreDBError({ code: "INVALID_RESPONSE", status: 200,
                message: "The lease answer carries no connection_id" });
        const id = lease.connection_id;
        try {
            return await fn(lease);
        } finally {
            await this.release(id, body.service_name);
        }
    }

    /* ---- administration (admin) ---- */

    createRole(body: Body<"adminRoleCreate">): Promise<Answer<"adminRoleCreate">> {
        return this.request("POST", "/api/v1/admin/roles", { body });
    }
    createDbUser(body: Body<"adminDbUserCreate">): Promise<Answer<"adminDbUserCreate">> {
        return this.request("POST", "/api/v1/admin/db-users", { body });
    }
    changeDbUserPassword(username: string, newPassword: string): Promise<Answer<"adminDbUserPassword">> {
        return this.request("PUT", `/api/v1/admin/db-users/${encodeURIComponent(username)}/password`,
            { body: { new_password: newPassword } });
    }
    revokeDbUser(username: string, body: Body<"adminDbUserRevoke"> = {} as Body<"adminDbUserRevoke">): Promise<Answer<"adminDbUserRevoke">> {
        return this.request("POST", `/api/v1/admin/db-users/${encodeURIComponent(username)}/revoke`, { body });
    }
    enableRls(body: Body<"adminRlsCreate">): Promise<Answer<"adminRlsCreate">> {
        return this.request("POST", "/api/v1/admin/rls", { body });
    }
    setSchemaPermissions(schema: string, body: Body<"adminSchemaPermissions">): Promise<Answer<"adminSchemaPermissions">> {
        return this.request("PUT", `/api/v1/admin/schemas/${encodeURIComponent(schema)}/permissions`, { body });
    }
    transferOwnership(body: Body<"adminOwnershipTransfer">): Promise<Answer<"adminOwnershipTransfer">> {
        return this.request("POST", "/api/v1/admin/ownership", { body });
    }
    listTables(): Promise<Answer<"adminTablesList">> { return this.request("GET", "/api/v1/admin/tables"); }
    exposeTable(name: string, body?: Body<"adminTableExpose">): Promise<Answer<"adminTableExpose">> {
        return this.request("POST", `/api/v1/admin/tables/${encodeURIComponent(name)}/expose`, { body: body ?? {} });
    }
    unexposeTable(name: string): Promise<Answer<"adminTableUnexpose">> {
        return this.request("POST", `/api/v1/admin/tables/${encodeURIComponent(name)}/unexpose`, { body: {} });
    }
    listCollections(): Promise<Answer<"adminCollectionsList">> { return this.request("GET", "/api/v1/admin/collections"); }
    createCollection(body: Body<"adminCollectionsCreate">): Promise<Answer<"adminCollectionsCreate">> {
        return this.request("POST", "/api/v1/admin/collections", { body });
    }
    dropCollection(name: string): Promise<Answer<"adminCollectionsDrop">> {
        return this.request("DELETE", `/api/v1/admin/collections/${encodeURIComponent(name)}`);
    }

    /* encryption (keys stay in the service) */
    encryptColumn(body: Body<"adminEncryptionSetup">): Promise<Answer<"adminEncryptionSetup">> {
        return this.request("POST", "/api/v1/admin/encryption/columns", { body });
    }
    rotateColumnKey(body: Body<"adminEncryptionRotate">): Promise<Answer<"adminEncryptionRotate">> {
        return this.request("POST", "/api/v1/admin/encryption/columns/rotate", { body });
    }
    encryptionAudit(tableName?: string): Promise<Answer<"adminEncryptionAudit">> {
        return this.request("GET", "/api/v1/admin/encryption/audit", { query: { table_name: tableName } });
    }
    encryptionJob(id: string): Promise<Answer<"adminEncryptionJob">> {
        return this.request("GET", `/api/v1/admin/encryption/jobs/${encodeURIComponent(id)}`);
    }

    /* backups */
    createBackup(): Promise<Answer<"adminBackupCreate">> {
        return this.request("POST", "/api/v1/admin/backups", { body: {} });
    }
    listBackups(): Promise<Answer<"adminBackupList">> { return this.request("GET", "/api/v1/admin/backups"); }
    verifyBackup(name: string): Promise<Answer<"adminBackupVerify">> {
        return this.request("POST", `/api/v1/admin/backups/${encodeURIComponent(name)}/verify`, { body: {} });
    }
    restoreBackup(name: string): Promise<Answer<"adminBackupRestore">> {
        return this.request("POST", `/api/v1/admin/backups/${encodeURIComponent(name)}/restore`,
            { body: { confirm: true } });
    }
    cleanupBackups(): Promise<Answer<"adminBackupCleanup">> {
        return this.request("POST", "/api/v1/admin/backups/cleanup");
    }

    /* audit log */
    auditLog(query: Record<string, string | number | undefined> = {}): Promise<Answer<"adminAuditList">> {
        return this.request("GET", "/api/v1/admin/audit", { query });
    }
    auditVerify(): Promise<Answer<"adminAuditVerify">> { return this.request("GET", "/api/v1/admin/audit/verify"); }

    /* migrations */
    migrationStatus(): Promise<Answer<"migrationStatus">> { return this.request("GET", "/api/v1/migrations/status"); }

    /* ---- health and monitoring ---- */

    /** GET /health; its 503 (an essential check DOWN) is answered as the body, not thrown. */
    health(): Promise<Health> {
        return this.request("GET", "/health", { auth: false, answerStatuses: [503] });
    }
    live(): Promise<Answer<"healthLive">> { return this.request("GET", "/health/live", { auth: false }); }
    ready(): Promise<Answer<"healthReady">> { return this.request("GET", "/health/ready", { auth: false }); }
    adminHealth(): Promise<Answer<"adminHealth">> { return this.request("GET", "/api/v1/admin/health"); }
    connectionHealth(): Promise<Answer<"adminHealthConnection">> {
        return this.request("GET", "/api/v1/admin/health/connection");
    }
    queryHealth(): Promise<Answer<"adminHealthQuery">> { return this.request("GET", "/api/v1/admin/health/query"); }
    resourceHealth(): Promise<Answer<"adminHealthResource">> {
        return this.request("GET", "/api/v1/admin/health/resource");
    }
    tableMetrics(): Promise<Answer<"adminMetricsTables">> { return this.request("GET", "/api/v1/admin/metrics/tables"); }
    performanceMetrics(): Promise<Answer<"adminMetricsPerformance">> {
        return this.request("GET", "/api/v1/admin/metrics/performance");
    }
    errorMetrics(): Promise<Answer<"adminMetricsErrors">> { return this.request("GET", "/api/v1/admin/metrics/errors"); }
    allMetrics(): Promise<Answer<"adminMetricsAll">> { return this.request("GET", "/api/v1/admin/metrics/all"); }
    /** The Prometheus text exposition (admin token on the main port). */
    metricsText(): Promise<string> { return this.request("GET", "/metrics", { text: true }); }
    openapi(): Promise<Record<string, unknown>> {
        return this.request("GET", "/api/v1/openapi.json", { auth: false });
    }
}
