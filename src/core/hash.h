/*
 * hash.h - FNV-1a (64-bit), the one hash of coredb's in-process tables:
 * short keys, no adversarial input worth a keyed hash, and a collision only
 * costs a longer chain or a wider invalidation. Values are never shared
 * between processes.
 */
#ifndef COREDB_CORE_HASH_H
#define COREDB_CORE_HASH_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline uint64_t cdb__fnv1a(const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t h = 14695981039346656037ULL;
    for (size_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 1099511628211ULL;
    return h;
}

/* The same for a NUL-terminated string. */
static inline uint64_t cdb__fnv1a_str(const char *s)
{
    return cdb__fnv1a(s, strlen(s));
}

#endif
