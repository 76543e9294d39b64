/*
 * core/netaddr.c - unit tests of addresses and CIDR ranges
 * (src/core/netaddr.c): list parsing and its refusals, containment for
 * IPv4, IPv6 and IPv4-mapped IPv6, canonical text.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "core/netaddr.c"

static void test_parse_list(void **state)
{
    (void)state;
    cdb_netmask m[CDB_NETMASK_MAX];
    assert_int_equal(cdb_netmask_parse_list("", m, CDB_NETMASK_MAX), 0);
    assert_int_equal(cdb_netmask_parse_list("127.0.0.1", m, CDB_NETMASK_MAX), 1);
    assert_int_equal(m[0].bits, 32);
    assert_int_equal(cdb_netmask_parse_list(" 10.0.0.0/8, ::1 ,fd00::/8,", m, CDB_NETMASK_MAX), 3);
    assert_int_equal(m[0].bits, 8);
    assert_int_equal(m[1].bits, 128);
    assert_int_equal(m[2].bits, 8);
    assert_int_equal(cdb_netmask_parse_list("0.0.0.0/0", m, CDB_NETMASK_MAX), 1);
    const char *bad[] = {"10.0.0.0/33", "::/129", "10.0.0.0/", "10.0.0.0/x", "10.0.0.0/0008",
                         "localhost", "10.0.0.1:80", "[::1]", "10.0.0", "1.2.3.4; DROP TABLE x",
                         "10.0.0.0/-1"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_int_equal(cdb_netmask_parse_list(bad[i], m, CDB_NETMASK_MAX), -1);
    /* more entries than room */
    assert_int_equal(cdb_netmask_parse_list("1.1.1.1,2.2.2.2,3.3.3.3", m, 2), -1);
}

static void test_contains(void **state)
{
    (void)state;
    cdb_netmask m[CDB_NETMASK_MAX];
    int n = cdb_netmask_parse_list("10.0.0.0/8,192.168.1.128/25,fd00::/8,127.0.0.1", m, CDB_NETMASK_MAX);
    assert_int_equal(n, 4);
    assert_true(cdb_netmask_contains(m, n, "10.255.1.2"));
    assert_false(cdb_netmask_contains(m, n, "11.0.0.1"));
    assert_true(cdb_netmask_contains(m, n, "192.168.1.200"));
    assert_false(cdb_netmask_contains(m, n, "192.168.1.127"));
    assert_true(cdb_netmask_contains(m, n, "fd12::1"));
    assert_false(cdb_netmask_contains(m, n, "fe80::1"));
    assert_true(cdb_netmask_contains(m, n, "127.0.0.1"));
    assert_false(cdb_netmask_contains(m, n, "127.0.0.2"));
    /* an IPv4-mapped IPv6 peer (dual-stack listener) is its IPv4 address */
    assert_true(cdb_netmask_contains(m, n, "::ffff:10.1.2.3"));
    assert_false(cdb_netmask_contains(m, n, "not an address"));
    assert_false(cdb_netmask_contains(m, n, ""));
    assert_false(cdb_netmask_contains(m, n, NULL));
}

static void test_canonical(void **state)
{
    (void)state;
    char out[CDB_IP_TEXT_MAX];
    assert_true(cdb_ip_canonical("203.0.113.9", 11, out));
    assert_string_equal(out, "203.0.113.9");
    assert_true(cdb_ip_canonical("2001:DB8:0:0::1", 15, out));
    assert_string_equal(out, "2001:db8::1");
    assert_true(cdb_ip_canonical("::ffff:192.0.2.1", 16, out));
    assert_string_equal(out, "192.0.2.1");
    assert_false(cdb_ip_canonical("203.0.113.9:443", 15, out));
    assert_false(cdb_ip_canonical("", 0, out));
    char longer[200];
    memset(longer, '1', sizeof longer);
    assert_false(cdb_ip_canonical(longer, sizeof longer, out));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_list),
        cmocka_unit_test(test_contains),
        cmocka_unit_test(test_canonical),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
