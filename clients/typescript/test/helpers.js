// Shared by the node tests: the instance the e2e fixture started
// (tests/e2e/test_client_typescript.py passes COREDB_URL and the bootstrap
// admin's credentials) and a report of what the tests created, which the
// pytest file checks in the PostgreSQL catalogs and Redis afterwards.
import { readFileSync, writeFileSync, existsSync } from "node:fs";
import { randomBytes } from "node:crypto";

export const BASE = process.env.COREDB_URL;
export const ADMIN_EMAIL = process.env.COREDB_ADMIN_EMAIL;
export const ADMIN_PASSWORD = process.env.COREDB_ADMIN_PASSWORD;
if (!BASE || !ADMIN_EMAIL || !ADMIN_PASSWORD)
    throw new Error("COREDB_URL, COREDB_ADMIN_EMAIL and COREDB_ADMIN_PASSWORD must be set (run tests/e2e/test_client_typescript.py)");

export function unique(prefix) {
    return `${prefix}_${randomBytes(5).toString("hex")}`;
}

export function report(key, value) {
    const path = process.env.COREDB_TS_REPORT;
    if (!path)
        return;
    const data = existsSync(path) ? JSON.parse(readFileSync(path, "utf8")) : {};
    data[key] = value;
    writeFileSync(path, JSON.stringify(data));
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
