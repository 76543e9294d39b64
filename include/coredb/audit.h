/*
 * audit.h - the tamper-evident log of administrative actions
 * (coredb.audit_log, src/security/audit.c).
 *
 * Every administrative action is recorded, refused and failed attempts
 * too: who (a user id, else "cli", else the role), what (an action name
 * from the list below), on what (target), with which parameters (secrets
 * removed: see cdb_audit_record), the outcome (success or the error code),
 * the request id and the client address. Each row carries
 * sha256(previous row's hash || this row's canonical form), so
 * cdb_audit_verify finds the first row changed after the fact, even by a
 * superuser.
 *
 * "Append-only" is a guard against mistakes, not against coredb's own
 * login: that login has no UPDATE, DELETE or TRUNCATE on the table and
 * triggers refuse them, but it OWNS coredb.audit_log, so it (or whoever
 * holds its password) can GRANT itself UPDATE/DELETE again or ALTER TABLE
 * ... DISABLE TRIGGER. Against that login only the hash chain plus a copy
 * of the head hash (cdb_audit_verify's head.hash) kept outside coredb
 * protects the log: a rewrite of the whole chain after the last copy, or
 * the loss of the newest rows, is visible only against that copy.
 *
 * Action names (dotted, lower case; the docs list the same):
 *   role.create  db_user.create  db_user.password  db_user.revoke
 *   rls.create  schema.permissions  ownership.transfer
 *   table.expose  table.unexpose
 *   backup.create  backup.verify  backup.cleanup  backup.restore
 *   migration.up  migration.down
 *   user.role  session.revoke  admin.refused
 *   user.update  user.delete    (an admin on someone else's account;
 *                                user.update names the fields set, never
 *                                a value; a user's own edits are not
 *                                recorded, a role change always is)
 *   lease.acquire  lease.release  lease.renew      (connection leases)
 *   encryption.setup  encryption.rotate  encryption.rewrap
 *   collection.create  collection.drop             (document collections)
 */
#ifndef COREDB_AUDIT_H
#define COREDB_AUDIT_H

#include <jansson.h>
#include <libpq-fe.h>

#include "coredb/error.h"
#include "coredb/principal.h"

typedef struct cdb_service cdb_service;

/*
 * Where the calls this thread makes next come from, stamped on every entry
 * it records: the HTTP server sets it around each handler (request id,
 * client address, via "http"), the command line once (via "cli"). Copies
 * the strings (NULL = empty). Thread-local; nothing set means an embedder:
 * entries then carry no request id and no address.
 */
void cdb_audit_origin_set(const char *request_id, const char *client_addr, const char *via);
void cdb_audit_origin_clear(void);

/*
 * Records one action on a connection of its own, after the fact: for
 * refused and failed attempts, and for actions that are not one database
 * transaction (backups, restores). outcome NULL or CDB_OK: success.
 * params is borrowed; members whose names say they are secrets (password,
 * new_password, secret, token, key, and any name containing one of them)
 * are dropped, at any depth, before anything is stored. Returns 0, or < 0
 * when the entry could not be written (also logged): an action never
 * fails because its record could not be written after it.
 */
int cdb_audit_record(cdb_service *svc, const cdb_principal *who, const char *action,
                     const char *target, const json_t *params, const cdb_error *outcome);

/*
 * Records a success inside the caller's open transaction on conn, so the
 * action and its record commit together or not at all (the operations of
 * dbauth.h and access.h). < 0 with err set: the caller rolls back.
 * Appends are serialized by a transaction advisory lock held until the
 * caller's transaction ends: call it last, just before COMMIT, so the lock
 * is held briefly and no other lock is taken after it.
 */
int cdb_audit_record_in(PGconn *conn, const cdb_principal *who, const char *action,
                        const char *target, const json_t *params, cdb_error *err);

/* GET /api/v1/admin/audit: filters, each optional (NULL / 0). */
typedef struct cdb_audit_query {
    const char *actor;             /* user id, "cli" or role name */
    const char *action;            /* exact, or a prefix ending in '.' ("db_user.") */
    const char *since, *until;     /* ISO-8601 timestamps */
    const char *cursor;            /* from the previous page's next_cursor */
    int limit;                     /* 1..500, default 50 */
} cdb_audit_query;

/*
 * Admin only. Newest first: {entries: [{id, at, actor, actor_role, action,
 * target, params, outcome, request_id, client_addr}], next_cursor}.
 */
int cdb_audit_list(cdb_service *svc, const cdb_principal *caller, const cdb_audit_query *q,
                   json_t **out, cdb_error *err);

/*
 * Admin only. Recomputes the hash chain: {valid, rows_checked,
 * first_broken: null | {id, at, action}}.
 */
int cdb_audit_verify(cdb_service *svc, const cdb_principal *caller, json_t **out, cdb_error *err);

#endif
