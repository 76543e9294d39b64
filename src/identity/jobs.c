/*
 * jobs.c - the identity module's background job: ending idle and expired
 * sessions (cdb_session_reap) every minute.
 */
#include "identity/jobs.h"
#include "coredb/sessions.h"
#include "coredb/log.h"

static int reap_sessions(void *arg, cdb_error *err)
{
    int reaped = 0;
    int rc = cdb_session_reap(arg, &reaped, err);
    if (rc == 0 && reaped > 0)
        cdb_log_info("jobs.sessions_reaped", "ended %d idle or expired sessions", reaped);
    return rc;
}

int cdb_identity_register_jobs(cdb_service *svc, cdb_jobs *jobs)
{
    return cdb_jobs_add(jobs, "reap_sessions", 60, reap_sessions, svc);
}
