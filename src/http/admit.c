/*
 * admit.c - the admission of a caller, run just before its handler on the
 * thread that runs it: is the session behind the token still alive, does
 * the role fit the route, and is the caller within its quota.
 *
 * Quotas (API.md, RATE_LIMIT_*) are per caller: anonymous callers by client
 * address, others by user id, at the rate of their role (0 = unlimited),
 * with a burst of one second's worth. Every answer of a limited route carries
 * X-RateLimit-Limit/-Remaining/-Reset; a refusal is 429 with Retry-After.
 */
#include "coredb/audit.h"
#include "http_internal.h"
#include "core/metrics.h"
#include "service/service_internal.h"
#include "store/commit_lsn.h"

#include <string.h>

#include <math.h>
#include <stdio.h>

static int quota_for(const cdb_config *cfg, cdb_role role)
{
    switch (role) {
    case CDB_ROLE_ADMIN: return cfg->rate_limit_admin;
    case CDB_ROLE_PREMIUM: return cfg->rate_limit_premium;
    case CDB_ROLE_USER: return cfg->rate_limit_user;
    case CDB_ROLE_ANON: break;
    }
    return cfg->rate_limit_anon;
}

int cdb__admit_quota_rate(const cdb_request *r)
{
    return quota_for(cdb_service_config(r->svc), r->principal.role);
}

void cdb__admit_quota_key(const cdb_request *r, char *key, size_t len)
{
    if (r->principal.role == CDB_ROLE_ANON)
        snprintf(key, len, "coredb:rl:anon:%s", r->client_addr);
    else
        snprintf(key, len, "coredb:rl:user:%s", r->principal.user_id);
}

bool cdb__admit_quota_apply(cdb_request *r, const cdb_rl_result *rl)
{
    r->quota_checked = true;
    cdb_request_header(r, "X-RateLimit-Limit", "%d", rl->limit);
    cdb_request_header(r, "X-RateLimit-Remaining", "%d", rl->remaining);
    cdb_request_header(r, "X-RateLimit-Reset", "%d", (int)ceil(rl->reset_after_s));
    if (rl->allowed)
        return true;
    /* the roles' counters follow cdb_role's order (core/metrics.h) */
    cdb__metrics_inc((cdb__metric)(CDB_M_RATELIMIT_ANON + (int)r->principal.role));
    int retry = (int)ceil(rl->retry_after_s);
    if (retry < 1)
        retry = 1;
    cdb_request_header(r, "Retry-After", "%d", retry);
    cdb_error e;
    cdb_error_init(&e);
    cdb_error_set(&e, CDB_ERR_RATE_LIMITED, "Rate limit exceeded; retry in %d s", retry);
    cdb_error_detail(&e, "retry_after", json_integer(retry));
    cdb_error_detail(&e, "limit", json_integer(rl->limit));
    cdb_request_fail(r, &e);
    return false;
}

static bool within_quota(cdb_request *r)
{
    int rate = cdb__admit_quota_rate(r);
    if (rate <= 0 || r->quota_checked)
        return true;
    char key[128];
    cdb__admit_quota_key(r, key, sizeof key);
    cdb_rl_result rl;
    cdb_ratelimit_check(cdb_service_ratelimit(r->svc), key, rate, rate, &rl);
    return cdb__admit_quota_apply(r, &rl);
}

/*
 * A restore (coredb/restore.h) is running here or on another instance: the
 * data API answers 503 MAINTENANCE with Retry-After instead of reading a
 * database that is being replaced. Checked before the session, which may
 * itself be in the database being restored.
 */
static bool in_maintenance(cdb_request *r)
{
    if (strncmp(r->route->pattern, "/api/v1/data/", 13) != 0)
        return false;
    if (!cdb_service_maintenance_since(r->svc))
        return false;
    cdb_request_header(r, "Retry-After", "%d", CDB_SERVICE_RETRY_AFTER_S);
    cdb_error e;
    cdb_error_init(&e);
    cdb_error_set(&e, CDB_ERR_MAINTENANCE, "A restore is running; retry in %d s",
                  CDB_SERVICE_RETRY_AFTER_S);
    cdb_error_detail(&e, "retry_after", json_integer(CDB_SERVICE_RETRY_AFTER_S));
    cdb_request_fail(r, &e);
    return true;
}

/*
 * An authenticated caller without the admin role tried an admin route: the
 * attempt goes to the audit log (admin.refused, the route as its target).
 * Callers without a valid token are not recorded: anyone could fill the
 * table with those (docs/http.md, "Audit log").
 */
static void record_refusal(cdb_request *r)
{
    if (!cdb_principal_known(&r->principal))
        return;
    char target[256];
    snprintf(target, sizeof target, "%s %s", r->head.method ? r->head.method : "?", r->route->pattern);
    cdb_error refused = {.code = CDB_ERR_FORBIDDEN};
    cdb_audit_record(r->svc, &r->principal, "admin.refused", target, NULL, &refused);
}

bool cdb_admit_caller(cdb_request *r)
{
    cdb_route_auth mode = r->route->auth;
    if (in_maintenance(r))
        return false;
    if (mode == CDB_AUTH_PUBLIC)
        return true;
    if (r->session_checked) {
        /* the loop read the session's liveness (loop_admit.c), without the
           read-your-writes prefetch: forget one an earlier request left here */
        cdb_commit_lsn_prefetch_clear();
    } else if (r->bearer && mode >= CDB_AUTH_OPTIONAL) {
        /* the signature was checked on the loop (request.c); now the session */
        cdb_error e;
        cdb_error_init(&e);
        if (cdb_session_check(r->svc, &r->principal, &e) < 0) {
            cdb_request_header(r, "WWW-Authenticate", "Bearer");
            cdb_request_fail(r, &e);
            return false;
        }
    }
    if (mode == CDB_AUTH_ADMIN && r->principal.role != CDB_ROLE_ADMIN) {
        /* refusals count against the caller's quota, so they cannot flood the audit log */
        if (!within_quota(r))
            return false;
        cdb_request_failf(r, CDB_ERR_FORBIDDEN, "This route requires the admin role");
        record_refusal(r);
        return false;
    }
    return within_quota(r);
}
