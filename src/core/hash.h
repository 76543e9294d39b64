/*
 * hash.h - the one hash of coredb's in-process tables (kvtable, the
 * invalidation stripes, the pools' statement lists, the rate limiter's
 * scripts, the commit-LSN slots). Values are never shared between
 * processes, so the function may change freely.
 *
 * Eight bytes at a time, a multiply and a shift each, then a final mix so
 * the low bits (bucket indexes) depend on every byte. It replaced FNV-1a,
 * which takes a multiply per byte: the loops' memo is keyed by whole request
 * bodies, and hashing about 1.5 KB per cache hit was 14 % of a hit's
 * instructions (bench/hit_cost.sh, callgrind). Not keyed: a collision only
 * costs a longer chain or a wider invalidation, and every table it indexes
 * is bounded.
 */
#ifndef COREDB_CORE_HASH_H
#define COREDB_CORE_HASH_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline uint64_t cdb__hash(const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t h = 0x9e3779b97f4a7c15ULL ^ (uint64_t)len;
    while (len >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdULL;
        h ^= h >> 32;
        p += 8;
        len -= 8;
    }
    uint64_t tail = 0;
    if (len)
        memcpy(&tail, p, len);
    h = (h ^ tail) * 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;                  /* the final mix: every byte reaches the low bits */
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return h;
}

/* The same for a NUL-terminated string. */
static inline uint64_t cdb__hash_str(const char *s)
{
    return cdb__hash(s, strlen(s));
}

#endif
