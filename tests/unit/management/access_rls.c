/*
 * management/access_rls.c - unit tests of the policy expression's lexical
 * check (expr_lex_check in src/management/access_rls.c): what may stay
 * inside CREATE POLICY ... USING (expr) and what could leave it. Parsing by
 * PostgreSQL and the stored-clause check are covered end to end
 * (tests/e2e/test_admin_access.py).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "management/access_rls.c"

static const char *check(const char *s)
{
    return expr_lex_check(s, strlen(s));
}

static void test_accepted(void **state)
{
    (void)state;
    const char *good[] = {
        "true", "user_id = coredb.current_user_id()", "label <> 'hidden'", "(a AND (b OR c))",
        "note = 'it''s ; -- /* ) ('", "\"Odd; Name)\" = 1", "\"a\"\"b\" IS NULL", "note = E'\\' ) ('",
        "note = e'x\\\\'", "name = U&'d\\0061t'", "x = ANY (ARRAY[1, 2])", "a - -1 > 0", "a / 2 > 1",
        "date'2020-01-01' < now()", "label LIKE '%$%'",
    };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++)
        assert_null(check(good[i]));
}

static void test_refused(void **state)
{
    (void)state;
    const char *bad[] = {
        "true); DROP TABLE x; --", "true) OR (true", "true) WITH CHECK (true", "true)) OR ((true",
        "1=1; DELETE FROM t", "true /* */", "true -- c", "'open", "\"open", "note = 'a''",
        "(true", "true)", ")(", "$$x$$ = 'x'", "id = $1", "x = E'\\'", "x = E'abc\\",
        /* a standard string ends at the quote after the backslash, so the ')' is outside */
        "x = '\\' ) OR (true",
        /* an identifier ending in E before a quote is not an E string */
        "somE'\\' ) OR ( 'x' = 'x'",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_non_null(check(bad[i]));
    const char nul[] = "true\0) OR (true";
    assert_non_null(expr_lex_check(nul, sizeof nul - 1));
    const char nul_in_literal[] = "x = 'a\0b'";
    assert_non_null(expr_lex_check(nul_in_literal, sizeof nul_in_literal - 1));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accepted),
        cmocka_unit_test(test_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
