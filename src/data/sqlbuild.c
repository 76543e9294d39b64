/*
 * sqlbuild.c - one SQL statement with bound parameters, built from a
 * structured request (sqlbuild.h). Identifiers come only from the catalog
 * and are double-quoted; values only ever become $n parameters, each cast
 * to its column's type so PostgreSQL compares like with like.
 */
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/sqlbuild.h"

void cdb_sql_init(cdb_sql *q)
{
    memset(q, 0, sizeof *q);
    q->cap = 256;
    q->text = malloc(q->cap);
    if (q->text)
        q->text[0] = '\0';
    else
        q->oom = true, q->cap = 0;
}

void cdb_sql_destroy(cdb_sql *q)
{
    free(q->text);
    for (int i = 0; i < q->nparams; i++)
        free(q->params[i]);
    free(q->params);
    memset(q, 0, sizeof *q);
}

void cdb_sql_reset(cdb_sql *q)
{
    cdb_sql_destroy(q);
    cdb_sql_init(q);
}

static void append_n(cdb_sql *q, const char *s, size_t n)
{
    if (q->oom)
        return;
    if (q->len + n + 1 > q->cap) {
        size_t cap = q->cap ? q->cap : 256;
        while (q->len + n + 1 > cap)
            cap *= 2;
        char *text = realloc(q->text, cap);
        if (!text) {
            q->oom = true;
            return;
        }
        q->text = text;
        q->cap = cap;
    }
    memcpy(q->text + q->len, s, n);
    q->len += n;
    q->text[q->len] = '\0';
}

void cdb_sql_append(cdb_sql *q, const char *fragment)
{
    append_n(q, fragment, strlen(fragment));
}

void cdb_sql_ident(cdb_sql *q, const char *name)
{
    append_n(q, "\"", 1);
    for (const char *s = name; *s;) {
        size_t n = strcspn(s, "\"");
        append_n(q, s, n);
        s += n;
        if (*s == '"') {
            append_n(q, "\"\"", 2);
            s++;
        }
    }
    append_n(q, "\"", 1);
}

void cdb_sql_table(cdb_sql *q, const char *schema, const char *table)
{
    cdb_sql_ident(q, schema);
    append_n(q, ".", 1);
    cdb_sql_ident(q, table);
}

int cdb_sql_param(cdb_sql *q, const char *value)
{
    char ref[16];
    if (q->nparams >= CDB_SQL_MAX_PARAMS)
        return -1;
    if (q->nparams == q->pcap) {
        int cap = q->pcap ? q->pcap * 2 : 16;
        if (cap > CDB_SQL_MAX_PARAMS)
            cap = CDB_SQL_MAX_PARAMS;
        char **params = realloc(q->params, (size_t)cap * sizeof *params);
        if (!params) {
            q->oom = true;
            return -1;
        }
        q->params = params;
        q->pcap = cap;
    }
    char *copy = NULL;
    if (value && !(copy = strdup(value))) {
        q->oom = true;
        return -1;
    }
    q->params[q->nparams++] = copy;
    snprintf(ref, sizeof ref, "$%d", q->nparams);
    cdb_sql_append(q, ref);
    return 0;
}

void cdb_sql_take_params(cdb_sql *dst, cdb_sql *src)
{
    for (int i = 0; i < dst->nparams; i++)
        free(dst->params[i]);
    free(dst->params);
    dst->params = src->params;
    dst->nparams = src->nparams;
    dst->pcap = src->pcap;
    src->params = NULL;
    src->nparams = src->pcap = 0;
}

/* Replaces err (details included) with code, message and details. */
static int fail(cdb_error *err, cdb_err code, const char *column, const char *op,
                const char *field, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static int fail(cdb_error *err, cdb_err code, const char *column, const char *op,
                const char *field, const char *fmt, ...)
{
    va_list ap;
    if (!err)
        return code;
    va_start(ap, fmt);
    cdb_error_vset(err, code, fmt, ap);
    va_end(ap);
    if (field)
        cdb_error_detail(err, "field", json_string(field));
    if (column)
        cdb_error_detail(err, "column", json_string(column));
    if (op)
        cdb_error_detail(err, "operator", json_string(op));
    return code;
}

/* The shortest spelling of d that reads back as d. */
static char *real_text(double d)
{
    char buf[40];
    snprintf(buf, sizeof buf, "%.15g", d);
    if (strtod(buf, NULL) != d)
        snprintf(buf, sizeof buf, "%.17g", d);
    return strdup(buf);
}

/* Whether a JSON value of this type may be bound to a column of kind k. */
static bool value_fits(json_type type, cdb_col_kind k)
{
    switch (type) {
    case JSON_STRING:
        return true;
    case JSON_INTEGER:
        return k != CDB_COL_TIME;
    case JSON_REAL:
        return k == CDB_COL_NUMBER || k == CDB_COL_TEXT || k == CDB_COL_JSON;
    case JSON_TRUE:
    case JSON_FALSE:
        return k == CDB_COL_BOOL || k == CDB_COL_TEXT || k == CDB_COL_JSON;
    case JSON_OBJECT:
    case JSON_ARRAY:
        return k == CDB_COL_JSON;
    default:
        return true; /* null */
    }
}

int cdb_sql_value_text(const json_t *v, const cdb_column *c, const char *field,
                       char **out, cdb_error *err)
{
    char buf[32];
    char *text = NULL;

    *out = NULL;
    if (!v || json_is_null(v))
        return 0;
    if (!value_fits(json_typeof(v), c->kind))
        return fail(err, CDB_ERR_VALIDATION_FAILED, NULL, NULL, field,
                    "The value of %s does not fit its column type", field);
    switch (json_typeof(v)) {
    case JSON_STRING:
        if (strlen(json_string_value(v)) != json_string_length(v))
            return fail(err, CDB_ERR_VALIDATION_FAILED, NULL, NULL, field,
                        "The value of %s contains a NUL byte", field);
        text = strdup(json_string_value(v));
        break;
    case JSON_INTEGER:
        snprintf(buf, sizeof buf, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        text = strdup(buf);
        break;
    case JSON_REAL:
        text = real_text(json_real_value(v));
        break;
    case JSON_TRUE:
    case JSON_FALSE:
        text = strdup(json_is_true(v) ? "true" : "false");
        break;
    default: /* object or array, JSON columns only */
        text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        break;
    }
    if (!text)
        return fail(err, CDB_ERR_INTERNAL_ERROR, NULL, NULL, NULL, "Out of memory");
    *out = text;
    return 0;
}

/*
 * Appends "::type" for a parameter of column c. The type modifier is left
 * out, because an explicit cast to varchar(n) or numeric(p,s) silently
 * truncates or rounds and would make a longer value compare equal; char(n)
 * becomes bpchar for the same reason. bit(n) keeps its length (bit means
 * bit(1)). The text is format_type() output from the catalog, not user text.
 */
static void append_cast(cdb_sql *q, const cdb_column *c)
{
    const char *t = c->type_name;
    cdb_sql_append(q, "::");
    if (c->kind == CDB_COL_JSON) {
        cdb_sql_append(q, "jsonb");
        return;
    }
    if (strncmp(t, "bit", 3) == 0 && (t[3] == '(' || t[3] == '\0')) {
        cdb_sql_append(q, t);
        return;
    }
    if (strncmp(t, "character(", 10) == 0 || strcmp(t, "character") == 0) {
        cdb_sql_append(q, "bpchar");
        t += strcspn(t, "[");
    }
    while (*t) {
        size_t n = strcspn(t, "(");
        append_n(q, t, n);
        t += n;
        if (*t == '(')
            t += strcspn(t, ")") + (strchr(t, ')') ? 1 : 0);
    }
}

/* Appends "col" or "col"::jsonb, the left side of a comparison. */
static void append_column(cdb_sql *q, const cdb_column *c)
{
    cdb_sql_ident(q, c->name);
    if (c->kind == CDB_COL_JSON)
        cdb_sql_append(q, "::jsonb");
}

/* Binds v for column c as the next parameter, cast to the column type (or text). */
static int bind_value(cdb_sql *q, const cdb_column *c, const char *op, const json_t *v,
                      bool as_text, cdb_error *err)
{
    char *text;
    if (json_is_null(v) || (json_is_array(v) && c->kind != CDB_COL_JSON) ||
        (json_is_object(v) && c->kind != CDB_COL_JSON))
        return fail(err, CDB_ERR_INVALID_FILTER, c->name, op, NULL,
                    "Filter %s on %s needs a single value", op, c->name);
    if (cdb_sql_value_text(v, c, c->name, &text, err) < 0) {
        if (err && err->code == CDB_ERR_INTERNAL_ERROR)
            return err->code;
        return fail(err, CDB_ERR_INVALID_FILTER, c->name, op, NULL,
                    "Invalid value for filter %s on %s", op, c->name);
    }
    int rc = cdb_sql_param(q, text);
    free(text);
    if (rc < 0)
        return q->oom ? fail(err, CDB_ERR_INTERNAL_ERROR, NULL, NULL, NULL, "Out of memory")
                      : fail(err, CDB_ERR_INVALID_FILTER, c->name, op, NULL,
                             "Too many filter values (at most %d)", CDB_SQL_MAX_PARAMS);
    if (as_text)
        cdb_sql_append(q, "::text");
    else
        append_cast(q, c);
    return 0;
}

static const struct {
    const char *name, *sql;
} comparisons[] = {
    {"eq", " = "}, {"neq", " <> "}, {"gt", " > "}, {"gte", " >= "},
    {"lt", " < "}, {"lte", " <= "}, {"like", " LIKE "}, {"ilike", " ILIKE "},
};

/* Appends one condition: "col" <op> value. */
static int append_condition(cdb_sql *q, const cdb_column *c, const char *op, const json_t *v,
                            cdb_error *err)
{
    bool is_eq = strcmp(op, "eq") == 0, is_neq = strcmp(op, "neq") == 0;

    if (strcmp(op, "is_null") == 0) {
        if (!json_is_boolean(v))
            return fail(err, CDB_ERR_INVALID_FILTER, c->name, op, NULL,
                        "Filter is_null on %s takes true or false", c->name);
        cdb_sql_ident(q, c->name);
        cdb_sql_append(q, json_is_true(v) ? " IS NULL" : " IS NOT NULL");
        return 0;
    }
    if ((is_eq || is_neq) && json_is_null(v)) {
        cdb_sql_ident(q, c->name);
        cdb_sql_append(q, is_eq ? " IS NULL" : " IS NOT NULL");
        return 0;
    }
    if (c->kind == CDB_COL_JSON && !is_eq && !is_neq)
        return fail(err, CDB_ERR_INVALID_FILTER, c->name, op, NULL,
                    "Only eq and neq apply to the JSON column %s", c->name);

    if (strcmp(op, "in") == 0) {
        size_t n = json_array_size(v);
        if (!json_is_array(v) || n == 0 || n > CDB_SQL_MAX_IN)
            return fail(err, CDB_ERR_INVALID_FILTER, c->name, op, NULL,
                        "Filter in on %s takes a non-empty array of at most %d values",
                        c->name, CDB_SQL_MAX_IN);
        cdb_sql_ident(q, c->name);
        cdb_sql_append(q, " IN (");
        for (size_t i = 0; i < n; i++) {
            if (i)
                cdb_sql_append(q, ", ");
            int rc = bind_value(q, c, op, json_array_get(v, i), false, err);
            if (rc < 0)
                return rc;
        }
        cdb_sql_append(q, ")");
        return 0;
    }

    for (size_t i = 0; i < sizeof comparisons / sizeof comparisons[0]; i++) {
        if (strcmp(op, comparisons[i].name) != 0)
            continue;
        bool like = strcmp(op, "like") == 0 || strcmp(op, "ilike") == 0;
        if (like && (c->kind != CDB_COL_TEXT || !json_is_string(v)))
            return fail(err, CDB_ERR_INVALID_FILTER, c->name, op, NULL,
                        "Filter %s applies to text columns with a string pattern", op);
        /* patterns match the text form, so uuid and enum columns take them too */
        if (like) {
            cdb_sql_ident(q, c->name);
            cdb_sql_append(q, "::text");
        } else {
            append_column(q, c);
        }
        cdb_sql_append(q, comparisons[i].sql);
        return bind_value(q, c, op, v, like, err);
    }
    return fail(err, CDB_ERR_INVALID_FILTER, c->name, op, NULL, "Unknown filter operator");
}

int cdb_sql_where(cdb_sql *q, const cdb_table *t, const json_t *filters, cdb_error *err)
{
    const char *key, *op;
    json_t *value, *operand;
    int n = 0, rc;

    if (!filters || json_is_null(filters))
        return 0;
    if (!json_is_object(filters))
        return fail(err, CDB_ERR_INVALID_FILTER, NULL, NULL, NULL,
                    "filters must be an object of column names");
    json_object_foreach((json_t *)filters, key, value) {
        const cdb_column *c = cdb_catalog_column(t, key);
        if (!c || !(c->privs & CDB_PRIV_SELECT))
            return fail(err, CDB_ERR_UNKNOWN_COLUMN, key, NULL, NULL, "Unknown column");
        if (!json_is_object(value)) {
            /* shorthand for eq; an array is only a value for a JSON column */
            cdb_sql_append(q, n++ ? " AND " : " WHERE ");
            if ((rc = append_condition(q, c, "eq", value, err)) < 0)
                return rc;
            continue;
        }
        if (json_object_size(value) == 0)
            return fail(err, CDB_ERR_INVALID_FILTER, c->name, NULL, NULL,
                        "Filter on %s has no operator", c->name);
        json_object_foreach(value, op, operand) {
            cdb_sql_append(q, n++ ? " AND " : " WHERE ");
            if ((rc = append_condition(q, c, op, operand, err)) < 0)
                return rc;
        }
    }
    if (q->oom)
        return fail(err, CDB_ERR_INTERNAL_ERROR, NULL, NULL, NULL, "Out of memory");
    return 0;
}
