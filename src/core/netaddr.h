/*
 * netaddr.h - IP addresses and CIDR ranges as text: TRUSTED_PROXIES (the
 * configuration checks it, the HTTP layer matches peers against it).
 */
#ifndef COREDB_NETADDR_H
#define COREDB_NETADDR_H

#include <stdbool.h>
#include <stddef.h>

#define CDB_NETMASK_MAX 32         /* entries of one list */
#define CDB_IP_TEXT_MAX 46         /* INET6_ADDRSTRLEN */

typedef struct cdb_netmask {
    int family;                    /* AF_INET or AF_INET6 */
    unsigned char addr[16];
    int bits;                      /* prefix length */
} cdb_netmask;

/*
 * "10.0.0.0/8, 127.0.0.1, fd00::/8": the entries into out (at most max).
 * Returns their count, or -1 when an entry is not an address or range, a
 * prefix is out of range, or there are more than max.
 */
int cdb_netmask_parse_list(const char *text, cdb_netmask *out, int max);

/*
 * Whether the address ip (text; an IPv4-mapped IPv6 address counts as its
 * IPv4 one) is in one of the n ranges. false for text that is no address.
 */
bool cdb_netmask_contains(const cdb_netmask *list, int n, const char *ip);

/*
 * The canonical text of the address in s[0..len) (inet_ntop's; a mapped
 * IPv4 address as IPv4) into out (>= CDB_IP_TEXT_MAX). false when it is no
 * address (a port, brackets, a name, garbage).
 */
bool cdb_ip_canonical(const char *s, size_t len, char *out);

#endif
