/*
 * client_limit.c - counts open connections per client address so that one
 * address cannot hold every file descriptor (HTTP_MAX_CONNECTIONS_PER_IP).
 *
 * A chained hash table of addresses under one mutex: it is touched twice
 * per connection (accept and close), never per request, so the lock is
 * cheap next to the accept itself. An entry exists only while its address
 * has connections, so the table's size follows the open connections.
 * IPv4-mapped IPv6 addresses count as their IPv4 address.
 */
#include "http_internal.h"

#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "coredb/log.h"
#include "core/hash.h"

#define BUCKETS 4096

typedef struct addr_key {
    uint8_t bytes[16];
    uint8_t len;                   /* 4 or 16; 0 for an address we do not count (unix) */
} addr_key;

typedef struct entry {
    addr_key key;
    int count;
    struct entry *next;
} entry;

struct cdb_client_limit {
    int max;
    pthread_mutex_t lock;
    entry *buckets[BUCKETS];
};

static addr_key key_of(const struct sockaddr *sa)
{
    static const uint8_t v4_mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    addr_key k = {.len = 0};
    if (sa->sa_family == AF_INET) {
        memcpy(k.bytes, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        k.len = 4;
    } else if (sa->sa_family == AF_INET6) {
        const uint8_t *a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
        bool mapped = memcmp(a, v4_mapped, sizeof v4_mapped) == 0;
        k.len = mapped ? 4 : 16;
        memcpy(k.bytes, mapped ? a + 12 : a, k.len);
    }
    return k;
}

static entry **slot_of(cdb_client_limit *limit, const addr_key *k)
{
    entry **e = &limit->buckets[cdb__hash(k->bytes, (size_t)k->len) % BUCKETS];
    while (*e && ((*e)->key.len != k->len || memcmp((*e)->key.bytes, k->bytes, k->len) != 0))
        e = &(*e)->next;
    return e;
}

cdb_client_limit *cdb_client_limit_new(int max_per_address)
{
    cdb_client_limit *limit = calloc(1, sizeof *limit);
    if (!limit)
        return NULL;
    limit->max = max_per_address;
    pthread_mutex_init(&limit->lock, NULL);
    return limit;
}

void cdb_client_limit_free(cdb_client_limit *limit)
{
    if (!limit)
        return;
    for (int i = 0; i < BUCKETS; i++) {
        while (limit->buckets[i]) {
            entry *next = limit->buckets[i]->next;
            free(limit->buckets[i]);
            limit->buckets[i] = next;
        }
    }
    pthread_mutex_destroy(&limit->lock);
    free(limit);
}

bool cdb_client_limit_take(cdb_client_limit *limit, const struct sockaddr *sa)
{
    addr_key k = key_of(sa);
    if (limit->max <= 0 || k.len == 0)
        return true;
    bool taken = false;
    pthread_mutex_lock(&limit->lock);
    entry **slot = slot_of(limit, &k);
    if (!*slot && (*slot = calloc(1, sizeof **slot)))
        (*slot)->key = k;
    if (*slot && (*slot)->count < limit->max) {
        (*slot)->count++;
        taken = true;
    }
    pthread_mutex_unlock(&limit->lock);
    return taken; /* out of memory refuses the connection: the safe side */
}

void cdb_client_limit_release(cdb_client_limit *limit, const struct sockaddr *sa)
{
    addr_key k = key_of(sa);
    if (limit->max <= 0 || k.len == 0)
        return;
    pthread_mutex_lock(&limit->lock);
    entry **slot = slot_of(limit, &k);
    entry *e = *slot;
    if (!e) {
        pthread_mutex_unlock(&limit->lock);
        cdb_log_error("http.client_limit", "release of an address that holds no connection");
        abort(); /* a release without a take: the counts can no longer be trusted */
    }
    if (--e->count == 0) {
        *slot = e->next;
        free(e);
    }
    pthread_mutex_unlock(&limit->lock);
}
