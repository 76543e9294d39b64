// @coredb/client against a real coredb (started by tests/e2e/test_client_typescript.py
// with ACCESS_TOKEN_TTL=2, DB_POOL_MAX=3, DB_POOL_ACQUIRE_TIMEOUT=700 ms, COREDB_TEST_ROUTES=1).
import { test } from "node:test";
import assert from "node:assert/strict";
import { CoreDB, CoreDBError, VERSION } from "../dist/index.js";
import { ADMIN_EMAIL, ADMIN_PASSWORD, BASE, report, sleep, unique } from "./helpers.js";

const PASSWORD = "Ts-client-pass-9!";
// a table the pytest file created for the admin calls (rls, ownership, encryption)
const TABLE = process.env.COREDB_TS_TABLE;

async function rejects(promise, status, code) {
    await assert.rejects(promise, (err) => {
        assert.ok(err instanceof CoreDBError, `not a CoreDBError: ${err}`);
        assert.equal(err.status, status, `${err.code}: ${err.message}`);
        if (code)
            assert.equal(err.code, code);
        assert.match(err.requestId ?? "", /\S/);
        return true;
    });
}

/** A fresh user account, logged in. */
async function newUser() {
    const anon = new CoreDB({ baseUrl: BASE });
    const name = unique("ts");
    const user = await anon.createUser({ email: `${name}@example.com`, username: name, password: PASSWORD });
    const client = await CoreDB.login({ baseUrl: BASE, email: user.email, password: PASSWORD });
    return { client, user };
}

const admin = await CoreDB.login({ baseUrl: BASE, email: ADMIN_EMAIL, password: ADMIN_PASSWORD });

test("version is the service's", async () => {
    assert.equal(VERSION, "1.0.0");
    const health = await admin.health();
    assert.equal(health.version, VERSION);
    assert.equal(health.status, "UP");
});

test("login answers a token pair; bad credentials are a typed 401", async () => {
    const c = new CoreDB({ baseUrl: BASE });
    const pair = await c.login(ADMIN_EMAIL, ADMIN_PASSWORD);
    assert.equal(pair.token_type, "Bearer");
    assert.equal(pair.user.role, "admin");
    assert.ok(c.tokens.accessToken && c.tokens.refreshToken);
    await rejects(new CoreDB({ baseUrl: BASE }).login(ADMIN_EMAIL, "wrong-password-1"), 401, "INVALID_CREDENTIALS");
});

test("X-Request-ID is sent and comes back in the error", async () => {
    const c = new CoreDB({ baseUrl: BASE, token: "not.a.jwt" });
    await assert.rejects(c.request("GET", "/api/v1/auth/sessions", { requestId: "ts-req-12345" }), (err) => {
        assert.equal(err.status, 401);
        assert.equal(err.code, "UNAUTHORIZED");
        assert.equal(err.requestId, "ts-req-12345");
        return true;
    });
});

test("forged, absent and non-admin tokens: 401, 401, 403", async () => {
    await rejects(new CoreDB({ baseUrl: BASE }).listSessions(), 401, "UNAUTHORIZED");
    const forged = admin.tokens.accessToken.slice(0, -4) + "AAAA";
    await rejects(new CoreDB({ baseUrl: BASE, token: forged }).listSessions(), 401, "UNAUTHORIZED");
    const { client } = await newUser();
    await rejects(client.createRole({ role_name: unique("ts_r"), permissions: ["SELECT"] }), 403, "FORBIDDEN");
    await rejects(client.connectionHealth(), 403, "FORBIDDEN");
    await rejects(client.metricsText(), 403, "FORBIDDEN");
});

test("an expired access token is refreshed once, the rotated refresh token kept", async () => {
    const seen = [];
    const c = await CoreDB.login({ baseUrl: BASE, email: ADMIN_EMAIL, password: ADMIN_PASSWORD,
        onTokens: (t) => seen.push(t) });
    const first = c.tokens;
    await sleep(2600);            // ACCESS_TOKEN_TTL=2, JWT_CLOCK_SKEW=0
    // the old token really is expired
    await rejects(new CoreDB({ baseUrl: BASE, token: first.accessToken }).listSessions(), 401, "TOKEN_EXPIRED");
    // five concurrent calls share one refresh (a second one would present a used token and end the session)
    const answers = await Promise.all([1, 2, 3, 4, 5].map(() => c.listSessions()));
    assert.equal(answers.length, 5);
    assert.equal(seen.length, 2, "login + exactly one refresh");
    assert.notEqual(c.tokens.refreshToken, first.refreshToken);
    // an explicit refresh rotates again
    const before = c.tokens.refreshToken;
    await c.refresh();
    assert.notEqual(c.tokens.refreshToken, before);
    assert.equal(seen.length, 3);
    // rotation: the old refresh token no longer works
    await rejects(new CoreDB({ baseUrl: BASE }).request("POST", "/api/v1/auth/refresh",
        { body: { refresh_token: first.refreshToken }, auth: false }), 401);
});

test("without a refresh token an expired token is a TOKEN_EXPIRED error", async () => {
    const pair = await new CoreDB({ baseUrl: BASE }).login(ADMIN_EMAIL, ADMIN_PASSWORD);
    await sleep(2600);
    await rejects(new CoreDB({ baseUrl: BASE, token: pair.access_token }).listSessions(), 401, "TOKEN_EXPIRED");
});

test("users: get, by email, by username, update, 404, 409, other user's id, delete", async () => {
    const { client, user } = await newUser();
    assert.equal((await client.getUser(user.user_id)).email, user.email);
    assert.equal((await client.getUserByEmail(user.email)).user_id, user.user_id);
    assert.equal((await client.getUserByUsername(user.username)).user_id, user.user_id);
    const updated = await client.updateUser(user.user_id, { display_name: "TS Client" });
    assert.equal(updated.display_name, "TS Client");
    await rejects(admin.getUser("00000000-0000-4000-8000-000000000000"), 404, "NOT_FOUND");
    await rejects(admin.getUser("1' OR '1'='1"), 404);
    await rejects(new CoreDB({ baseUrl: BASE }).createUser({ email: user.email, username: unique("ts"),
        password: PASSWORD }), 409, "CONFLICT");
    const other = await newUser();
    await rejects(client.getUser(other.user.user_id), 403);
    const page = await admin.listUsers({ limit: 5 });
    assert.ok(Array.isArray(page.data ?? page.users ?? page));
    await other.client.deleteUser(other.user.user_id);
    await rejects(admin.getUser(other.user.user_id), 404, "NOT_FOUND");
});

test("sessions: list, revoke, logout", async () => {
    const { client, user } = await newUser();
    const sessions = await client.listSessions();
    const list = sessions.sessions ?? sessions;
    assert.ok(list.length >= 1);
    await client.logout();
    const second = await CoreDB.login({ baseUrl: BASE, email: user.email, password: PASSWORD });
    await admin.revokeSessions(user.user_id);
    await rejects(second.listSessions(), 401, "TOKEN_REVOKED");
});

test("data: transaction then query (user), hostile values bound, unknown table 404", async () => {
    const { client, user } = await newUser();
    const title = "ts'); DROP TABLE projects; --";
    const key = unique("tskey");
    const tx = await client.transaction([
        { database: "postgresql", operation: "insert", table: "projects", data: { title, user_id: user.user_id } },
        { database: "redis", operation: "set", key, value: "ts-value", ttl: 600 },
    ]);
    assert.equal(tx.status, "committed");
    assert.equal(tx.results.length, 2);
    const id = tx.results[0].data.rows[0].id;
    const res = await client.query({ database: "postgresql", query_type: "select", table: "projects",
        select: ["id", "title"], filters: { title } });
    assert.deepEqual(res.data.map((r) => r.id), [id]);
    assert.equal(res.pagination.total, 1);
    const got = await client.query({ database: "redis", query_type: "get", key });
    assert.equal(got.data.value, "ts-value");
    const status = await client.transactionStatus(tx.transaction_id);
    assert.equal(status.status, "committed");
    await rejects(client.query({ database: "postgresql", query_type: "select", table: "no_such_table" }), 404, "UNKNOWN_TABLE");
    await rejects(client.query({ database: "postgresql", query_type: "select", table: "projects",
        select: ["title; DROP TABLE users"] }), 400, "UNKNOWN_COLUMN");
    await rejects(client.query({ database: "postgresql", query_type: "select", table: "projects",
        pagination: { page: 1, limit: 101 } }), 400, "VALIDATION_FAILED");
    report("project_id", id);
    report("project_title", title);
    report("user_id", user.user_id);
    report("redis_key", key);
});

test("leases: withLease runs on the leased connection and releases it, even on a throw", async () => {
    const { client } = await newUser();
    let role;
    const n = await client.withLease({ service_name: "ts-test", database_type: "postgresql", operation_type: "read" },
        async (lease) => {
            assert.match(lease.connection_id, /\S/);
            role = new URL(lease.database_url).username;
            const r = await client.query({ database: "postgresql", query_type: "select", table: "projects" },
                { connectionId: lease.connection_id });
            return r.pagination.total;
        });
    assert.equal(n, 0);
    report("lease_role", decodeURIComponent(role));
    let leaseId;
    await assert.rejects(client.withLease({ service_name: "ts-test", database_type: "postgresql",
        operation_type: "write" }, async (lease) => { leaseId = lease.connection_id; throw new Error("boom"); }), /boom/);
    // released: the id no longer works
    await rejects(client.query({ database: "postgresql", query_type: "select", table: "projects" },
        { connectionId: leaseId }), 404, "NOT_FOUND");
    await rejects(client.release(leaseId, "ts-test"), 404, "NOT_FOUND");
});

test("503 POOL_EXHAUSTED on an idempotent call is retried after the hinted wait", async () => {
    const { client, user } = await newUser();
    // hold every pooled connection (DB_POOL_MAX=3) for 3.5 s with the test route (COREDB_TEST_ROUTES=1)
    const anon = new CoreDB({ baseUrl: BASE, maxRetries: 0 });
    const sleeps = [1, 2, 3, 4, 5].map(() => anon.request("POST", "/test/sleep", { body: { seconds: 3.5 } })
        .catch((err) => err));
    let again = [];
    try {
        await sleep(500);
        // without retries: the 503 itself, typed, with the hint
        const noRetry = new CoreDB({ baseUrl: BASE, token: client.tokens.accessToken, maxRetries: 0 });
        await assert.rejects(noRetry.query({ database: "postgresql", query_type: "select", table: "projects",
            filters: { title: unique("x") } }), (err) => {
            assert.equal(err.status, 503);
            assert.equal(err.code, "POOL_EXHAUSTED");
            assert.ok(err.retryAfter >= 1, "retry_after in the details");
            return true;
        });
        // with retries (default 3): waits the hinted second between attempts until the sleeps end
        const started = Date.now();
        const res = await client.query({ database: "postgresql", query_type: "select", table: "projects",
            filters: { title: unique("y") } });
        assert.equal(res.pagination.total, 0);
        assert.ok(Date.now() - started >= 1000, "waited the hinted retry_after before retrying");
        // a write (POST transaction) is not idempotent: never retried, the 503 comes back at once
        // (a fresh login first, so that no token refresh is due while the pool is held: ACCESS_TOKEN_TTL=2)
        const writer = await CoreDB.login({ baseUrl: BASE, email: user.email, password: PASSWORD });
        again = [1, 2, 3, 4].map(() => anon.request("POST", "/test/sleep", { body: { seconds: 3 } })
            .catch((err) => err));
        await sleep(500);
        const t0 = Date.now();
        await rejects(writer.transaction([{ database: "postgresql", operation: "insert", table: "projects",
            data: { title: unique("w"), user_id: user.user_id } }]), 503, "POOL_EXHAUSTED");
        // one attempt is the 700 ms acquire timeout; a retry would add at least 1 s of wait and another 700 ms
        assert.ok(Date.now() - t0 < 2200, "no retry of a write");
    } finally {
        // never leave the pool held for the next test
        await Promise.all([...sleeps, ...again]);
    }
});

test("admin: role (and 409 when it exists), db user, password, revoke, rls, schema grants", async () => {
    const role = unique("ts_role");
    const made = await admin.createRole({ role_name: role, permissions: ["SELECT"], description: "ts" });
    assert.equal(made.status, "success");
    await rejects(admin.createRole({ role_name: role, permissions: ["SELECT"] }), 409, "CONFLICT");
    await rejects(admin.createRole({ role_name: "x; DROP ROLE postgres", permissions: ["SELECT"] }), 400, "VALIDATION_FAILED");
    const dbUser = unique("ts_user");
    assert.equal((await admin.createDbUser({ username: dbUser, password: "Db-pass-0123456789", roles: [role],
        connection_limit: 2 })).status, "success");
    assert.equal((await admin.changeDbUserPassword(dbUser, "Db-pass-9876543210")).status, "success");
    assert.equal((await admin.revokeDbUser(dbUser)).status, "success");
    await rejects(admin.changeDbUserPassword(unique("ts_absent"), "Db-pass-9876543210"), 404, "NOT_FOUND");
    const policy = unique("ts_pol");
    await rejects(admin.enableRls({ table_name: "media_assets", policy_name: policy, policy: "true" }), 403, "FORBIDDEN");
    assert.equal((await admin.enableRls({ table_name: TABLE, policy_name: policy,
        policy: "true", roles: [role] })).status, "success");
    assert.equal((await admin.setSchemaPermissions("public", { role, permissions: ["USAGE"] })).status, "success");
    report("role", role);
    report("db_user", dbUser);
    assert.equal((await admin.transferOwnership({ object_type: "table", object_name: TABLE, new_owner: role })).status,
        "success");
    await rejects(admin.transferOwnership({ object_type: "table", object_name: "users", new_owner: role }), 403, "FORBIDDEN");
    report("rls_table", TABLE);
    report("rls_policy", policy);
});

test("encryption: a column encrypted by the service, its audit, 404 for an unknown job", async () => {
    const setup = await admin.encryptColumn({ table_name: TABLE, column_name: "ssn" });
    assert.equal(setup.status, "success");
    let audit;
    for (let i = 0; i < 50; i++) {
        audit = await admin.encryptionAudit(TABLE);
        const col = audit.columns.find((c) => c.column_name === "ssn");
        if (col && col.plaintext_rows === 0)
            break;
        await sleep(200);
    }
    const col = audit.columns.find((c) => c.column_name === "ssn");
    assert.equal(col.plaintext_rows, 0, JSON.stringify(audit));
    const rotated = await admin.rotateColumnKey({ table_name: TABLE, column_name: "ssn" });
    assert.equal(rotated.status, "success");
    await rejects(admin.encryptColumn({ table_name: TABLE, column_name: "no_such_col" }), 400, "UNKNOWN_COLUMN");
    await rejects(admin.encryptionJob("00000000-0000-4000-8000-000000000000"), 404, "NOT_FOUND");
    report("encrypted", { table: TABLE, column: "ssn" });
});

test("backups: create, list, verify, 404; audit log and its chain", async () => {
    const b = await admin.createBackup();
    assert.match(b.name, /\S/);
    assert.match(b.sha256, /^[0-9a-f]{64}$/);
    const list = await admin.listBackups();
    assert.ok(JSON.stringify(list).includes(b.name));
    const v = await admin.verifyBackup(b.name);
    assert.equal(v.valid, true);
    await rejects(admin.verifyBackup("coredb-20000101T000000000Z"), 404, "NOT_FOUND");
    await rejects(admin.verifyBackup("../../etc/passwd"), 400, "VALIDATION_FAILED");
    const audit = await admin.auditLog();
    assert.ok(JSON.stringify(audit).includes("role"), "role creation audited");
    const chain = await admin.auditVerify();
    assert.equal(chain.status, "success");
});

test("health and monitoring: detailed checks, metrics JSON and Prometheus text", async () => {
    assert.equal((await admin.live()).status, "UP");
    for (const check of [admin.connectionHealth(), admin.queryHealth(), admin.resourceHealth(), admin.adminHealth()])
        assert.ok((await check).status);
    for (const m of [admin.tableMetrics(), admin.performanceMetrics(), admin.errorMetrics(), admin.allMetrics()])
        assert.equal((await m).status, "success");
    const text = await admin.metricsText();
    assert.match(text, /^# (HELP|TYPE) /m);
    const line = text.split("\n").find((l) => l.startsWith('coredb_client_requests_total{client_version="coredb-ts/' + VERSION + '"}'));
    assert.ok(line, "X-Client-Version counted");
    report("metrics_excerpt", line);
    const status = await admin.migrationStatus();
    assert.ok("current_version" in status);
    const doc = await admin.openapi();
    assert.equal(doc.info.version, VERSION);
});

test("README quick start runs as written (as a user)", async () => {
    const { user } = await newUser();
    const db = await CoreDB.login({ baseUrl: BASE, email: user.email, password: PASSWORD });
    await db.transaction([{ database: "postgresql", operation: "insert", table: "projects",
        data: { title: "Hello", user_id: db.user?.user_id } }]);
    const { data } = await db.query({ database: "postgresql", query_type: "select", table: "projects" });
    assert.deepEqual(data.map((p) => [p.title, p.user_id]), [["Hello", user.user_id]]);
});

test("sessions: delete one session by id (its token stops working), 404 for an unknown one", async () => {
    const { client, user } = await newUser();
    const second = await CoreDB.login({ baseUrl: BASE, email: user.email, password: PASSWORD });
    const mine = await second.listSessions();
    const list = mine.sessions ?? mine;
    const current = list.find((s) => s.current) ?? list[list.length - 1];
    const other = list.find((s) => s.session_id !== current.session_id);
    assert.ok(other, JSON.stringify(list));
    await second.deleteSession(other.session_id);
    await rejects(client.listSessions(), 401, "TOKEN_REVOKED");
    await rejects(second.deleteSession("00000000-0000-4000-8000-000000000000"), 404, "NOT_FOUND");
});

test("leases: renew extends a live lease; another user's lease id is 404", async () => {
    const { client } = await newUser();
    const lease = await client.acquire({ service_name: "ts-renew", database_type: "postgresql", operation_type: "read",
        ttl_seconds: 30 });
    const renewed = await client.renew(lease.connection_id, { ttl_seconds: 120 });
    assert.ok(Date.parse(renewed.expires_at) > Date.parse(lease.expires_at), JSON.stringify(renewed));
    const stranger = await newUser();
    await rejects(stranger.client.renew(lease.connection_id, { ttl_seconds: 60 }), 404, "NOT_FOUND");
    await rejects(stranger.client.release(lease.connection_id, "ts-renew"), 404, "NOT_FOUND");
    const all = await admin.listConnections();
    assert.ok(JSON.stringify(all).includes(lease.connection_id));
    assert.equal((await client.release(lease.connection_id, "ts-renew")).status, "released");
});

test("own tables: expose makes a table usable through the data API, unexpose takes it away", async () => {
    const name = process.env.COREDB_TS_EXPOSE;
    const { client, user } = await newUser();
    await rejects(client.query({ database: "postgresql", query_type: "select", table: name }), 404, "UNKNOWN_TABLE");
    assert.equal((await admin.exposeTable(name)).status, "success");
    const listed = await admin.listTables();
    assert.ok(JSON.stringify(listed).includes(name));
    await client.transaction([{ database: "postgresql", operation: "insert", table: name,
        data: { note: "mine", user_id: user.user_id } }]);
    const rows = await client.query({ database: "postgresql", query_type: "select", table: name });
    assert.deepEqual(rows.data.map((r) => r.note), ["mine"]);
    const tables = await client.tables();
    assert.ok(JSON.stringify(tables).includes(name));
    assert.equal((await admin.unexposeTable(name)).status, "success");
    await rejects(client.query({ database: "postgresql", query_type: "select", table: name,
        filters: { note: "again" } }), 404, "UNKNOWN_TABLE");
    await rejects(admin.exposeTable("users; DROP TABLE users"), 404, "UNKNOWN_TABLE");
});

test("collections: documents and vectors through the data API, admin create/list/drop", async () => {
    const docs = `tsdocs_${Date.now()}`, vecs = `tsvecs_${Date.now()}`;
    assert.equal((await admin.createCollection({ name: docs, kind: "documents" })).name, docs);
    await admin.createCollection({ name: vecs, kind: "vectors", dimensions: 2, metric: "l2" });
    const listed = await admin.listCollections();
    assert.ok(JSON.stringify(listed).includes(docs) && JSON.stringify(listed).includes(vecs));
    await rejects(admin.createCollection({ name: "x; DROP TABLE users", kind: "documents" }), 400, "VALIDATION_FAILED");
    const { client } = await newUser();
    await rejects(client.listCollections(), 403, "FORBIDDEN");
    const out = await client.transaction([
        { database: "documents", operation: "insert", collection: docs, id: "d1", document: { city: "Lyon", n: 1 } },
        { database: "documents", operation: "insert", collection: docs, id: "d2", document: { city: "Paris", n: 2 } },
        { database: "vectors", operation: "upsert", collection: vecs, id: "v1", vector: [0, 0], payload: { k: "a" } },
        { database: "vectors", operation: "upsert", collection: vecs, id: "v2", vector: [3, 4], payload: { k: "b" } },
    ]);
    assert.equal(out.results.length, 4);
    const found = await client.query({ database: "documents", collection: docs, filters: { city: "Lyon" } });
    assert.deepEqual(found.data.map((d) => d.id), ["d1"]);
    const hits = await client.query({ database: "vectors", query_type: "search", collection: vecs, vector: [3, 4], k: 2 });
    assert.deepEqual(hits.data.map((h) => h.id), ["v2", "v1"]);
    assert.equal(hits.data[1].score, -5);
    await rejects(client.query({ database: "vectors", query_type: "search", collection: vecs, vector: [1] }), 400,
        "VALIDATION_FAILED");
    assert.equal((await admin.dropCollection(docs)).status, "success");
    await rejects(admin.dropCollection(docs), 404, "NOT_FOUND");
    await rejects(client.query({ database: "documents", collection: docs }), 404, "UNKNOWN_TABLE");
});

test("ready, backup cleanup, restore of an unknown backup", async () => {
    assert.ok(await admin.ready());
    assert.equal((await admin.cleanupBackups()).status, "success");
    await rejects(admin.restoreBackup("coredb-20000101T000000000Z"), 404, "NOT_FOUND");
    const { client } = await newUser();
    await rejects(client.createBackup(), 403, "FORBIDDEN");
});

// Last: a restore ends every session and puts the data API in maintenance.
test("restore: the data API answers 503 MAINTENANCE with Retry-After, which the client waits out", async () => {
    const { user } = await newUser();
    const root = await CoreDB.login({ baseUrl: BASE, email: ADMIN_EMAIL, password: ADMIN_PASSWORD });
    const backup = await root.createBackup();
    const probe = await CoreDB.login({ baseUrl: BASE, email: user.email, password: PASSWORD, maxRetries: 0 });
    const client = await CoreDB.login({ baseUrl: BASE, email: user.email, password: PASSWORD });
    const restoring = root.restoreBackup(backup.name).then((r) => ({ r }), (e) => ({ e }));
    let seen;
    for (let i = 0; i < 400 && seen === undefined; i++) {
        try {
            await probe.query({ database: "postgresql", query_type: "select", table: "projects" });
        } catch (err) {
            if (err.code === "MAINTENANCE")
                seen = err;
        }
        await sleep(25);
    }
    assert.ok(seen, "no 503 MAINTENANCE seen during the restore");
    assert.equal(seen.status, 503);
    assert.equal(seen.retryAfter, 5);
    const started = Date.now();
    // retried after Retry-After (5 s): by then the restore has ended every session
    await assert.rejects(client.query({ database: "postgresql", query_type: "select", table: "projects" }),
        (err) => { assert.equal(err.status, 401, `${err.code}: ${err.message}`); return true; });
    assert.ok(Date.now() - started >= 4900, `retried after ${Date.now() - started} ms`);
    const outcome = await restoring;
    assert.equal(outcome.e, undefined, String(outcome.e));
    assert.equal(outcome.r.status, "success");
});
