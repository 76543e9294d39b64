/*
 * error.c - names, HTTP statuses and the fill/free helpers of cdb_error.
 * The table lives in include/coredb/error.h so codes, names and statuses can
 * never drift apart.
 */
#include "coredb/error.h"

#include <stdio.h>
#include <string.h>

const char *cdb_err_name(cdb_err code)
{
    switch (code) {
    case CDB_OK: return "OK";
#define CDB_ERR_NAME_(name, value, status) case CDB_ERR_##name: return #name;
    CDB_ERROR_TABLE(CDB_ERR_NAME_)
#undef CDB_ERR_NAME_
    }
    return "INTERNAL_ERROR";
}

int cdb_err_http_status(cdb_err code)
{
    switch (code) {
    case CDB_OK: return 200;
#define CDB_ERR_STATUS_(name, value, status) case CDB_ERR_##name: return status;
    CDB_ERROR_TABLE(CDB_ERR_STATUS_)
#undef CDB_ERR_STATUS_
    }
    return 500;
}

void cdb_error_init(cdb_error *err)
{
    err->code = CDB_OK;
    err->message[0] = '\0';
    err->details = NULL;
}

void cdb_error_destroy(cdb_error *err)
{
    if (!err)
        return;
    json_decref(err->details);
    cdb_error_init(err);
}

cdb_err cdb_error_vset(cdb_error *err, cdb_err code, const char *fmt, va_list ap)
{
    if (!err)
        return code;
    /* a new failure replaces an earlier one whole: its details too */
    json_decref(err->details);
    err->details = NULL;
    err->code = code;
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    return code;
}

cdb_err cdb_error_set(cdb_error *err, cdb_err code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cdb_error_vset(err, code, fmt, ap);
    va_end(ap);
    return code;
}

cdb_err cdb_error_oom(cdb_error *err)
{
    /* a literal message, so the error itself needs no allocation beyond the
     * copy cdb_error_set makes (and a failed copy still leaves the code) */
    return cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "Out of memory");
}

cdb_err cdb_error_set_detail(cdb_error *err, cdb_err code, const char *key, const char *value,
                             const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cdb_error_vset(err, code, fmt, ap);
    va_end(ap);
    if (key && value)
        cdb_error_detail(err, key, json_string(value));
    return code;
}

void cdb_error_detail(cdb_error *err, const char *key, json_t *value)
{
    if (!err) {
        json_decref(value);
        return;
    }
    if (!err->details)
        err->details = json_object();
    json_object_set_new(err->details, key, value);
}

void cdb_error_move(cdb_error *dst, cdb_error *src)
{
    json_decref(dst->details);
    *dst = *src;
    cdb_error_init(src);
}
