/*
 * netaddr.c - IP addresses and CIDR ranges (netaddr.h), with inet_pton and
 * inet_ntop: no parsing of our own beyond the "/bits" suffix.
 */
#include "core/netaddr.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static const unsigned char V4_MAPPED[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* s[0..len) as an address: family and 4 or 16 bytes; mapped IPv4 becomes IPv4. */
static bool parse_ip(const char *s, size_t len, int *family, unsigned char addr[16])
{
    char buf[CDB_IP_TEXT_MAX];
    if (len == 0 || len >= sizeof buf)
        return false;
    memcpy(buf, s, len);
    buf[len] = '\0';
    if (inet_pton(AF_INET, buf, addr) == 1) {
        *family = AF_INET;
        return true;
    }
    if (inet_pton(AF_INET6, buf, addr) != 1)
        return false;
    *family = AF_INET6;
    if (memcmp(addr, V4_MAPPED, sizeof V4_MAPPED) == 0) {
        memmove(addr, addr + 12, 4);
        *family = AF_INET;
    }
    return true;
}

bool cdb_ip_canonical(const char *s, size_t len, char *out)
{
    int family;
    unsigned char addr[16];
    return parse_ip(s, len, &family, addr) && inet_ntop(family, addr, out, CDB_IP_TEXT_MAX) != NULL;
}

int cdb_netmask_parse_list(const char *text, cdb_netmask *out, int max)
{
    int n = 0;
    const char *p = text;
    while (*p) {
        while (*p == ' ' || *p == ',')
            p++;
        if (!*p)
            break;
        size_t len = strcspn(p, ", ");
        const char *slash = memchr(p, '/', len);
        size_t iplen = slash ? (size_t)(slash - p) : len;
        if (n >= max || !parse_ip(p, iplen, &out[n].family, out[n].addr))
            return -1;
        int full = out[n].family == AF_INET ? 32 : 128;
        out[n].bits = full;
        if (slash) {
            const char *b = slash + 1;
            size_t blen = len - iplen - 1;
            if (blen == 0 || blen > 3)
                return -1;
            int bits = 0;
            for (size_t i = 0; i < blen; i++) {
                if (!isdigit((unsigned char)b[i]))
                    return -1;
                bits = bits * 10 + (b[i] - '0');
            }
            if (bits > full)
                return -1;
            out[n].bits = bits;
        }
        n++;
        p += len;
    }
    return n;
}

static bool in_range(const cdb_netmask *m, int family, const unsigned char *addr)
{
    if (m->family != family)
        return false;
    int whole = m->bits / 8, rest = m->bits % 8;
    if (memcmp(m->addr, addr, (size_t)whole) != 0)
        return false;
    if (rest == 0)
        return true;
    unsigned char mask = (unsigned char)(0xff << (8 - rest));
    return (m->addr[whole] & mask) == (addr[whole] & mask);
}

bool cdb_netmask_contains(const cdb_netmask *list, int n, const char *ip)
{
    int family;
    unsigned char addr[16];
    if (!ip || !parse_ip(ip, strlen(ip), &family, addr))
        return false;
    for (int i = 0; i < n; i++)
        if (in_range(&list[i], family, addr))
            return true;
    return false;
}
