/*
 * result.c - builds the library's result form (see result.h) and the error
 * object the HTTP envelope wraps.
 *
 * Both front ends render a failure through cdb_result_error_object(), which
 * is the one place that decides how a cdb_error looks as JSON: the CLI's
 * --json "error" member and the HTTP body's "error" member (plus its
 * timestamp and request_id) start from the same object.
 */
#include "coredb/result.h"

#include <stdbool.h>
#include <string.h>

#include "core/timeutil.h"

/*
 * The message as a JSON string. cdb_error_set truncates at 255 bytes, which
 * can cut a UTF-8 sequence in two, and jansson refuses invalid UTF-8: drop
 * the broken tail rather than lose the whole error.
 */
static json_t *message_string(const char *msg)
{
    size_t len = strlen(msg);
    for (size_t cut = 0; cut < 4 && cut <= len; cut++) {
        json_t *s = json_stringn(msg, len - cut);
        if (s)
            return s;
    }
    return json_string("");
}

json_t *cdb_result_error_object(const cdb_error *err)
{
    json_t *details = err->details ? json_incref(err->details) : json_object();
    /* "o" steals its values even when packing fails, so nothing leaks here */
    return json_pack("{s:s, s:o, s:o}", "code", cdb_err_name(err->code), "message",
                     message_string(err->message), "details", details);
}

static bool reserved(const char *key)
{
    return !strcmp(key, "status") || !strcmp(key, "error") || !strcmp(key, "timestamp");
}

json_t *cdb_result_object(const cdb_error *err, json_t *data)
{
    bool ok = !err || err->code == CDB_OK;
    char ts[32];
    const char *key;
    json_t *value;

    cdb_iso_now(ts, sizeof ts);
    json_t *e = ok ? json_null() : cdb_result_error_object(err);
    json_t *out = json_pack("{s:s, s:o, s:s}", "status", ok ? "success" : "error", "error", e,
                            "timestamp", ts);
    if (!out)
        return NULL;
    if (json_is_object(data)) {
        json_object_foreach(data, key, value) {
            if (!reserved(key) && json_object_set(out, key, value) != 0)
                goto fail_free_out;
        }
    } else if (data && json_object_set(out, "data", data) != 0) {
        goto fail_free_out;
    }
    return out;
fail_free_out:
    json_decref(out);
    return NULL;
}
