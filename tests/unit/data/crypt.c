/*
 * data/crypt.c - the data API over encrypted columns without a database:
 * filters rewritten to the blind index (and refused otherwise), order_by
 * refused, writes encrypted and bound to the primary key (refused without
 * it), rows decrypted (the swap of a value between rows refused per row),
 * the page form kept.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <sodium.h>

#include "../../../src/data/crypt.c"

static cdb_enccol col;
static cdb_colset set = {.refs = 1, .n = 1, .cols = &col};

static int setup(void **state)
{
    (void)state;
    col = (cdb_enccol){.table = "people", .column = "ssn", .pk = "id", .pk_kind = CDB_PK_INT, .searchable = true,
                       .current = 1};
    col.keys[0] = cdb__colkey_new(0);
    col.keys[1] = cdb__colkey_new(1);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    cdb__colkey_free(col.keys[0]);
    cdb__colkey_free(col.keys[1]);
    return 0;
}

/* cdb__crypt_write_values on the "people" fixture, without a pool (nothing drawn from a sequence) */
static int write(cdb_crypt_write_kind kind, const json_t *data, const json_t *filters, json_t **enc, cdb_error *err)
{
    bool override_identity;
    return cdb__crypt_write_values(&set, NULL, "people", kind, data, filters, enc, &override_identity, err);
}

/* The blind-index column a write may set before the catalog lists it (data/tx_parse.c value_column). */
static void test_is_blind_index(void **state)
{
    (void)state;
    assert_true(cdb__crypt_is_blind_index(&set, "people", "ssn_bidx"));
    assert_false(cdb__crypt_is_blind_index(&set, "people", "ssn"));
    assert_false(cdb__crypt_is_blind_index(&set, "people", "name_bidx"));
    assert_false(cdb__crypt_is_blind_index(&set, "other", "ssn_bidx"));
    assert_false(cdb__crypt_is_blind_index(NULL, "people", "ssn_bidx"));
    col.searchable = false;
    assert_false(cdb__crypt_is_blind_index(&set, "people", "ssn_bidx"));
    col.searchable = true;
}

static void test_read_plan(void **state)
{
    cdb_error err;
    json_t *out = NULL;
    (void)state;
    cdb_error_init(&err);
    json_t *f = json_pack("{s:s, s:i}", "ssn", "123", "id", 4);
    assert_int_equal(cdb__crypt_read_plan(&set, "people", f, NULL, &out, &err), 0);
    assert_non_null(out);
    assert_null(json_object_get(out, "ssn"));
    assert_int_equal(json_string_length(json_object_get(out, "ssn_bidx")), 32);
    assert_int_equal(json_integer_value(json_object_get(out, "id")), 4);
    json_decref(out);
    json_decref(f);
    /* eq and in */
    f = json_pack("{s:{s:[ss]}}", "ssn", "in", "a", "b");
    assert_int_equal(cdb__crypt_read_plan(&set, "people", f, NULL, &out, &err), 0);
    assert_int_equal(json_array_size(json_object_get(json_object_get(out, "ssn_bidx"), "in")), 2);
    json_decref(out);
    json_decref(f);
    /* another operator, a number, order_by: refused */
    f = json_pack("{s:{s:s}}", "ssn", "like", "1%");
    assert_int_equal(cdb__crypt_read_plan(&set, "people", f, NULL, &out, &err), CDB_ERR_INVALID_FILTER);
    assert_null(out);
    cdb_error_destroy(&err);
    json_decref(f);
    f = json_pack("{s:i}", "ssn", 5);
    assert_int_equal(cdb__crypt_read_plan(&set, "people", f, NULL, &out, &err), CDB_ERR_INVALID_FILTER);
    cdb_error_destroy(&err);
    json_decref(f);
    json_t *order = json_pack("[{s:s, s:s}]", "column", "ssn", "direction", "asc");
    assert_int_equal(cdb__crypt_read_plan(&set, "people", NULL, order, &out, &err), CDB_ERR_INVALID_FILTER);
    cdb_error_destroy(&err);
    json_decref(order);
    /* another table: untouched */
    f = json_pack("{s:s}", "ssn", "x");
    assert_int_equal(cdb__crypt_read_plan(&set, "other", f, NULL, &out, &err), 0);
    assert_null(out);
    json_decref(f);
}

static void test_write_then_read(void **state)
{
    cdb_error err;
    json_t *enc = NULL;
    (void)state;
    cdb_error_init(&err);
    json_t *data = json_pack("{s:i, s:s}", "id", 7, "ssn", "123-45-6789");
    assert_int_equal(write(CDB_CRYPT_INSERT, data, NULL, &enc, &err), 0);
    const char *v = json_string_value(json_object_get(enc, "ssn"));
    assert_true(cdb__colval_is_encrypted(v, NULL));
    assert_null(strstr(v, "123-45"));
    assert_non_null(json_object_get(enc, "ssn_bidx"));
    assert_string_equal(json_string_value(json_object_get(data, "ssn")), "123-45-6789"); /* request untouched */

    /* read back through the page form: row 7 decrypts, the same value in row 8 does not */
    char *part = NULL, *out = NULL;
    size_t len = 0;
    assert_true(asprintf(&part, "\"data\":[{\"id\":7,\"ssn\":\"%s\",\"ssn_bidx\":\"x\",\"__cdb_pk\":\"7\"},"
                                "{\"id\":8,\"ssn\":\"%s\",\"__cdb_pk\":\"8\"},{\"id\":9,\"ssn\":null,\"__cdb_pk\":\"9\"}],"
                                "\"pagination\":{\"page\":1}", v, v) > 0);
    assert_int_equal(cdb__crypt_read_page(&set, "people", part, strlen(part), &out, &len, &err), 0);
    assert_int_equal(strlen(out), len);
    char *wrapped = NULL;
    assert_true(asprintf(&wrapped, "{%s}", out) > 0);
    json_t *doc = json_loads(wrapped, 0, NULL);
    assert_non_null(doc);
    json_t *rows = json_object_get(doc, "data");
    assert_string_equal(json_string_value(json_object_get(json_array_get(rows, 0), "ssn")), "123-45-6789");
    assert_null(json_object_get(json_array_get(rows, 0), "ssn_bidx"));
    assert_null(json_object_get(json_array_get(rows, 0), "__cdb_pk"));
    assert_true(json_is_null(json_object_get(json_array_get(rows, 1), "ssn")));
    assert_non_null(json_object_get(json_array_get(rows, 1), "_decryption_failed"));
    assert_true(json_is_null(json_object_get(json_array_get(rows, 2), "ssn")));
    assert_null(json_object_get(json_array_get(rows, 2), "_decryption_failed"));
    assert_non_null(json_object_get(doc, "pagination"));
    assert_null(strstr(out, "123-45-6789\",\"__cdb_pk\":\"8"));
    json_decref(doc);
    free(wrapped);
    free(part);
    free(out);
    json_decref(enc);
    json_decref(data);
}

static void test_write_refusals(void **state)
{
    cdb_error err;
    json_t *enc = NULL;
    (void)state;
    cdb_error_init(&err);
    json_t *data = json_pack("{s:s}", "ssn", "x");       /* no primary key */
    assert_int_equal(write(CDB_CRYPT_INSERT, data, NULL, &enc, &err), CDB_ERR_VALIDATION_FAILED);
    cdb_error_destroy(&err);
    json_t *filters = json_pack("{s:s}", "name", "n");   /* update not by primary key */
    assert_int_equal(write(CDB_CRYPT_UPDATE, data, filters, &enc, &err), CDB_ERR_INVALID_FILTER);
    cdb_error_destroy(&err);
    json_decref(filters);
    filters = json_pack("{s:{s:i}}", "id", "eq", 3);     /* by primary key: fine */
    assert_int_equal(write(CDB_CRYPT_UPDATE, data, filters, &enc, &err), 0);
    assert_non_null(enc);
    json_decref(enc);
    json_decref(filters);
    json_decref(data);
    data = json_pack("{s:i, s:i}", "id", 1, "ssn", 5);  /* not a string */
    assert_int_equal(write(CDB_CRYPT_INSERT, data, NULL, &enc, &err), CDB_ERR_VALIDATION_FAILED);
    cdb_error_destroy(&err);
    json_decref(data);
    data = json_pack("{s:i, s:s, s:s}", "id", 1, "ssn", "x", "ssn_bidx", "forged");
    assert_int_equal(write(CDB_CRYPT_INSERT, data, NULL, &enc, &err), CDB_ERR_VALIDATION_FAILED);
    cdb_error_destroy(&err);
    json_decref(data);
    data = json_pack("{s:i, s:n}", "id", 1, "ssn");     /* NULL stays NULL */
    assert_int_equal(write(CDB_CRYPT_INSERT, data, NULL, &enc, &err), 0);
    assert_null(enc);
    json_decref(data);
}

/* the key a value is bound to is the text PostgreSQL gives the key, whatever form the caller wrote */
static void test_key_canonical(void **state)
{
    char buf[PK_TEXT_MAX];
    cdb_enccol u = {.pk_kind = CDB_PK_UUID}, n = {.pk_kind = CDB_PK_INT}, t = {.pk_kind = CDB_PK_TEXT};
    (void)state;
    const char *uuids[] = {"A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
                           "a0eebc999c0b4ef8bb6d6bb9bd380a11", "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11"};
    for (size_t i = 0; i < sizeof uuids / sizeof *uuids; i++) {
        json_t *v = json_string(uuids[i]);
        assert_true(pk_canon(&u, v, buf));
        assert_string_equal(buf, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
        json_decref(v);
    }
    const char *bad[] = {"a0eebc99", "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "-a0eebc999c0b4ef8bb6d6bb9bd380a11",
                         "a0eebc99--9c0b4ef8bb6d6bb9bd380a11", "a0eebc999c0b4ef8bb6d6bb9bd380a1100", ""};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        json_t *v = json_string(bad[i]);
        assert_false(pk_canon(&u, v, buf));
        json_decref(v);
    }
    json_t *v = json_string("0042");
    assert_true(pk_canon(&n, v, buf));
    assert_string_equal(buf, "42");
    assert_true(pk_canon(&t, v, buf));                  /* text keys are what they are */
    assert_string_equal(buf, "0042");
    json_decref(v);
    v = json_string("42abc");
    assert_false(pk_canon(&n, v, buf));
    json_decref(v);
    v = json_real(4.2);
    assert_false(pk_canon(&n, v, buf));
    json_decref(v);
}

/* an insert without its key: a uuid key with a default is drawn by coredb, and stored with the row */
static void test_insert_draws_uuid(void **state)
{
    cdb_enccol c = col;
    cdb_colset s = {.refs = 1, .n = 1, .cols = &c};
    cdb_error err;
    json_t *enc = NULL;
    bool override_identity = true;
    (void)state;
    cdb_error_init(&err);
    c.pk_kind = CDB_PK_UUID;
    json_t *data = json_pack("{s:s}", "ssn", "123-45-6789");
    assert_int_equal(cdb__crypt_write_values(&s, NULL, "people", CDB_CRYPT_INSERT, data, NULL, &enc,
                                             &override_identity, &err), CDB_ERR_VALIDATION_FAILED);
    cdb_error_destroy(&err);
    c.pk_has_default = true;
    assert_int_equal(cdb__crypt_write_values(&s, NULL, "people", CDB_CRYPT_INSERT, data, NULL, &enc,
                                             &override_identity, &err), 0);
    assert_false(override_identity);
    const char *id = json_string_value(json_object_get(enc, "id"));
    assert_non_null(id);
    assert_int_equal(strlen(id), 36);
    assert_int_equal(id[14], '4');                      /* version 4 */
    json_t *row = json_pack("{s:s, s:O}", "__cdb_pk", id, "ssn", json_object_get(enc, "ssn"));
    cdb__crypt_row(&s, "people", row, NULL);
    assert_string_equal(json_string_value(json_object_get(row, "ssn")), "123-45-6789");
    json_decref(row);
    json_decref(enc);
    /* an upsert never draws one: it could not conflict */
    assert_int_equal(cdb__crypt_write_values(&s, NULL, "people", CDB_CRYPT_UPSERT, data, NULL, &enc,
                                             &override_identity, &err), CDB_ERR_VALIDATION_FAILED);
    cdb_error_destroy(&err);
    json_decref(data);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_is_blind_index),
        cmocka_unit_test(test_read_plan),
        cmocka_unit_test(test_write_then_read),
        cmocka_unit_test(test_write_refusals),
        cmocka_unit_test(test_key_canonical),
        cmocka_unit_test(test_insert_draws_uuid),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
