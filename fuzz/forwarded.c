/*
 * forwarded.c - libFuzzer harness: the client address behind a load
 * balancer (issue 14): TRUSTED_PROXIES parsed by cdb_netmask_parse_list
 * (src/core/netaddr.c) and the X-Forwarded-For walk of
 * cdb__forwarded_client (src/http/forwarded.c), which reads a header any
 * client may send.
 *
 * The input is "trusted proxies \n peer \n X-Forwarded-For value(s), one
 * field per line". Oracles: a parsed list has 1..CDB_NETMASK_MAX entries of
 * a known family and a prefix within it; a canonical address is canonical
 * again and unchanged (idempotent) and a single-address range holds it;
 * after the walk, client_addr is the peer itself (untrusted peer, or no
 * usable entry) or a canonical address that appears in one of the fields,
 * and never text that is no address.
 */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http/http_internal.h"
#include "security/service_state.h"
#include "core/netaddr.h"

static void die(const char *why, const char *detail)
{
    fprintf(stderr, "forwarded oracle: %s: %s\n", why, detail);
    abort();
}

static void check_list(const char *text)
{
    cdb_netmask list[CDB_NETMASK_MAX];
    int n = cdb_netmask_parse_list(text, list, CDB_NETMASK_MAX);
    if (n < -1 || n > CDB_NETMASK_MAX)
        die("a count out of range", text);
    for (int i = 0; i < n; i++) {
        int width = list[i].family == AF_INET ? 32 : list[i].family == AF_INET6 ? 128 : -1;
        if (width < 0 || list[i].bits < 0 || list[i].bits > width)
            die("an entry of unknown family or prefix", text);
    }
}

static void check_canonical(const char *s, size_t len)
{
    char out[CDB_IP_TEXT_MAX], again[CDB_IP_TEXT_MAX];
    if (!cdb_ip_canonical(s, len, out))
        return;
    if (strlen(out) >= CDB_IP_TEXT_MAX || !cdb_ip_canonical(out, strlen(out), again) || strcmp(out, again))
        die("a canonical address that is not canonical again", out);
    char range[CDB_IP_TEXT_MAX + 8];
    snprintf(range, sizeof range, "%s/%d", out, strchr(out, ':') ? 128 : 32);
    cdb_netmask one;
    if (cdb_netmask_parse_list(range, &one, 1) != 1 || !cdb_netmask_contains(&one, 1, out))
        die("an address outside its own single-address range", range);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static cdb_config cfg;
    static struct cdb_service svc = {.cfg = &cfg};
    char *text = malloc(size + 1);
    if (!text)
        abort();
    memcpy(text, data, size);
    text[size] = '\0';

    char *proxies = text, *peer = strchr(text, '\n'), *fields = NULL;
    if (peer) {
        *peer++ = '\0';
        if ((fields = strchr(peer, '\n')))
            *fields++ = '\0';
    }
    check_list(proxies);
    check_canonical(proxies, strlen(proxies));
    if (!peer || strlen(peer) >= 64)
        goto out;
    check_canonical(peer, strlen(peer));

    cdb_request r;
    cdb_http_field head_fields[CDB_HTTP_MAX_FIELDS];   /* the head's array, as conn.c sizes it */
    memset(&r, 0, sizeof r);
    r.head.fields = head_fields;
    r.svc = &svc;
    cfg.trusted_proxies = proxies;
    snprintf(r.client_addr, sizeof r.client_addr, "%s", peer);
    for (char *line = fields; line && r.head.nfields < CDB_HTTP_MAX_FIELDS;) {
        char *next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        r.head.fields[r.head.nfields].name = r.head.nfields % 3 == 2 ? "Via" : "x-forwarded-for";
        r.head.fields[r.head.nfields++].value = line;
        line = next;
    }
    cdb__forwarded_client(&r);
    if (strcmp(r.client_addr, peer) != 0) {
        /* moved: to an address some X-Forwarded-For field named, in canonical form */
        char again[CDB_IP_TEXT_MAX];
        if (!cdb_ip_canonical(r.client_addr, strlen(r.client_addr), again) || strcmp(again, r.client_addr))
            die("a client address that is no canonical address", r.client_addr);
        cdb_netmask list[CDB_NETMASK_MAX];
        int n = cdb_netmask_parse_list(proxies, list, CDB_NETMASK_MAX);
        if (n <= 0 || !cdb_netmask_contains(list, n, peer))
            die("a header believed from an untrusted peer", peer);
    }
out:
    cfg.trusted_proxies = NULL;
    free(text);
    return 0;
}
