/*
 * forwarded.c - the client address behind a load balancer (TRUSTED_PROXIES).
 *
 * Behind HAProxy every connection comes from the balancer, so the limits
 * per client address (RATE_LIMIT_ANON, LOGIN_MAX_FAILURES_PER_ADDRESS) and
 * the ip_address of sessions and audit entries would all see one client.
 * When the peer is a trusted proxy, the client is read from X-Forwarded-For
 * the way proxies append to it: from the right, skipping trusted hops, the
 * first address that is not a trusted proxy. Anything left of it was written
 * by the client and is not believed (a client can send any X-Forwarded-For).
 * A peer that is not trusted: the header is ignored altogether. An entry
 * that is no address (a port, a name, garbage) stops the walk: the last
 * trusted hop is the client then, never the garbage.
 *
 * The list is parsed per request (a few inet_pton calls, only when
 * TRUSTED_PROXIES is set) rather than kept on the server, so this stays one
 * function with no state to share between loops.
 */
#include "http_internal.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "core/netaddr.h"

void cdb__forwarded_client(cdb_request *r)
{
    const char *setting = cdb_service_config(r->svc)->trusted_proxies;
    cdb_netmask proxies[CDB_NETMASK_MAX];
    int n = setting && *setting ? cdb_netmask_parse_list(setting, proxies, CDB_NETMASK_MAX) : 0;
    if (n <= 0 || !cdb_netmask_contains(proxies, n, r->client_addr))
        return;
    char hop[CDB_IP_TEXT_MAX];
    /* the last field first: a proxy appends its own field or entry at the end */
    for (int f = r->head.nfields - 1; f >= 0; f--) {
        if (strcasecmp(r->head.fields[f].name, "X-Forwarded-For") != 0)
            continue;
        const char *v = r->head.fields[f].value;
        size_t end = strlen(v);
        while (end > 0) {
            size_t start = end;
            while (start > 0 && v[start - 1] != ',')
                start--;
            size_t a = start, b = end;
            while (a < b && (v[a] == ' ' || v[a] == '\t'))
                a++;
            while (b > a && (v[b - 1] == ' ' || v[b - 1] == '\t'))
                b--;
            if (!cdb_ip_canonical(v + a, b - a, hop))
                return;
            snprintf(r->client_addr, sizeof r->client_addr, "%s", hop);
            if (!cdb_netmask_contains(proxies, n, hop))
                return;
            end = start > 0 ? start - 1 : 0;
        }
    }
}
