/*
 * security/principal.c - the caller rules every module shares: role names
 * and their database roles (core/role.c), "self or admin", the one answer
 * to an anonymous caller, UUID normalization.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "coredb/principal.h"

#define ME    "0b8f7a2e-2f6a-4c55-9d0c-5a4f1c2d3e4f"
#define OTHER "1c9f8b3f-3a7b-4d66-8e1d-6b5a2d3e4f50"

static void test_roles(void **state)
{
    (void)state;
    assert_string_equal(cdb_role_name(CDB_ROLE_ANON), "anonymous");
    assert_string_equal(cdb_role_name(CDB_ROLE_PREMIUM), "premium");
    assert_string_equal(cdb_role_name((cdb_role)42), "anonymous");
    assert_int_equal(cdb_role_parse("admin"), CDB_ROLE_ADMIN);
    assert_int_equal(cdb_role_parse("anonymous"), -1);
    assert_int_equal(cdb_role_parse("Admin"), -1);
    assert_int_equal(cdb_role_parse(NULL), -1);
    assert_string_equal(cdb_role_db_name(CDB_ROLE_USER), "coredb_user");
    assert_string_equal(cdb_role_db_name(CDB_ROLE_ADMIN), "coredb_admin");
    assert_null(cdb_role_db_name(CDB_ROLE_ANON));
}

static void test_anonymous_is_unauthorized(void **state)
{
    (void)state;
    cdb_principal anon = {.role = CDB_ROLE_ANON}, user = {.role = CDB_ROLE_USER, .user_id = ME};
    cdb_error err;
    cdb_error_init(&err);
    assert_int_equal(cdb_principal_require(NULL, &err), CDB_ERR_UNAUTHORIZED);
    assert_int_equal(cdb_principal_require(&anon, &err), CDB_ERR_UNAUTHORIZED);
    cdb_error_destroy(&err);
    assert_int_equal(cdb_principal_require(&user, NULL), 0);
    assert_null(cdb_principal_db_role(&anon));
    assert_string_equal(cdb_principal_db_role(&user), "coredb_user");
}

static void test_self_or_admin(void **state)
{
    (void)state;
    cdb_principal user = {.role = CDB_ROLE_USER, .user_id = ME}, admin = {.role = CDB_ROLE_ADMIN};
    char id[37];
    cdb_error err;

    cdb_error_init(&err);
    assert_int_equal(cdb_principal_authorize_target(&user, ME, id, &err), 0);
    assert_string_equal(id, ME);
    /* upper case is the same user */
    assert_int_equal(cdb_principal_authorize_target(&user, "0B8F7A2E-2F6A-4C55-9D0C-5A4F1C2D3E4F", id, &err), 0);
    assert_string_equal(id, ME);
    assert_int_equal(cdb_principal_authorize_target(&user, OTHER, id, &err), CDB_ERR_FORBIDDEN);
    assert_int_equal(cdb_principal_authorize_target(&admin, OTHER, id, &err), 0);
    assert_int_equal(cdb_principal_authorize_target(&admin, "not-a-uuid", id, &err), CDB_ERR_NOT_FOUND);
    assert_int_equal(cdb_principal_authorize_target(NULL, ME, id, &err), CDB_ERR_UNAUTHORIZED);
    cdb_error_destroy(&err);
}

static void test_uuid_norm(void **state)
{
    (void)state;
    char out[37];
    assert_true(cdb_uuid_norm(ME, out));
    assert_false(cdb_uuid_norm("0b8f7a2e2f6a4c559d0c5a4f1c2d3e4f", out));
    assert_false(cdb_uuid_norm("0b8f7a2e-2f6a-4c55-9d0c-5a4f1c2d3e4g", out));
    assert_false(cdb_uuid_norm(ME "0", out));
    assert_false(cdb_uuid_norm(NULL, out));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roles),
        cmocka_unit_test(test_anonymous_is_unauthorized),
        cmocka_unit_test(test_self_or_admin),
        cmocka_unit_test(test_uuid_norm),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
