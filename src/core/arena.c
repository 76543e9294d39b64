/*
 * arena.c - the per-request bump allocator of arena.h: a chain of blocks,
 * allocation by advancing an offset, and a bounded stack of spare first
 * blocks per owner thread so that a steady stream of requests allocates
 * nothing.
 */
#include "core/arena.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct block {
    struct block *next;            /* older blocks of the same arena */
    size_t size, used;             /* of data[] */
    _Alignas(CDB_ARENA_ALIGN) unsigned char data[];
} block;

struct cdb_arena {
    cdb_arena_pool *pool;
    block *first;                  /* holds this struct; kept by reset */
    block *cur;                    /* where allocations go now */
    size_t used;                   /* bytes handed out, over every block */
    size_t nblocks;
};

struct cdb_arena_pool {
    block **spare;
    size_t count, max;
};

static size_t round_up(size_t n)
{
    return (n + CDB_ARENA_ALIGN - 1) & ~(size_t)(CDB_ARENA_ALIGN - 1);
}

static block *block_new(size_t size)
{
    block *b = malloc(sizeof *b + size);
    if (!b)
        return NULL;
    b->next = NULL;
    b->size = size;
    b->used = 0;
    return b;
}

cdb_arena_pool *cdb_arena_pool_new(size_t max_blocks)
{
    cdb_arena_pool *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->max = max_blocks;
    if (max_blocks && !(p->spare = calloc(max_blocks, sizeof *p->spare))) {
        free(p);
        return NULL;
    }
    return p;
}

void cdb_arena_pool_free(cdb_arena_pool *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->count; i++)
        free(p->spare[i]);
    free(p->spare);
    free(p);
}

size_t cdb_arena_pool_spare(const cdb_arena_pool *p)
{
    return p ? p->count : 0;
}

cdb_arena *cdb_arena_new(cdb_arena_pool *pool)
{
    block *b = pool && pool->count ? pool->spare[--pool->count] : block_new(CDB_ARENA_BLOCK);
    if (!b)
        return NULL;
    b->next = NULL;
    b->used = round_up(sizeof(cdb_arena));
    cdb_arena *a = (cdb_arena *)b->data;
    a->pool = pool;
    a->first = a->cur = b;
    a->used = 0;
    a->nblocks = 1;
    return a;
}

/* Frees the blocks chained after the first. */
static void free_extra(cdb_arena *a)
{
    block *b = a->cur;
    while (b != a->first) {
        block *next = b->next;
        free(b);
        b = next;
    }
    a->cur = a->first;
    a->nblocks = 1;
}

void cdb_arena_free(cdb_arena *a)
{
    if (!a)
        return;
    free_extra(a);
    block *first = a->first;
    cdb_arena_pool *pool = a->pool;
    if (pool && pool->count < pool->max)
        pool->spare[pool->count++] = first;
    else
        free(first);
}

void cdb_arena_reset(cdb_arena *a)
{
    free_extra(a);
    a->first->used = round_up(sizeof(cdb_arena));
    a->used = 0;
}

void *cdb_arena_alloc(cdb_arena *a, size_t size)
{
    size_t n = round_up(size ? size : 1);
    if (n < size)
        return NULL;               /* size near SIZE_MAX wrapped */
    block *b = a->cur;
    if (b->size - b->used < n) {
        /* a block of its own for a large piece, else a standard one; the
           rest of the current block is left unused (simple, and rare) */
        size_t want = n > CDB_ARENA_BLOCK / 2 ? n : CDB_ARENA_BLOCK;
        if (want > SIZE_MAX - sizeof(block) || !(b = block_new(want)))
            return NULL;
        b->next = a->cur;
        a->cur = b;
        a->nblocks++;
    }
    void *p = b->data + b->used;
    b->used += n;
    a->used += n;
    return p;
}

void *cdb_arena_calloc(cdb_arena *a, size_t size)
{
    void *p = cdb_arena_alloc(a, size);
    if (p)
        memset(p, 0, size);
    return p;
}

char *cdb_arena_strndup(cdb_arena *a, const char *s, size_t n)
{
    size_t len = strnlen(s, n);
    char *p = cdb_arena_alloc(a, len + 1);
    if (!p)
        return NULL;
    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}

char *cdb_arena_strdup(cdb_arena *a, const char *s)
{
    return cdb_arena_strndup(a, s, SIZE_MAX);
}

size_t cdb_arena_used(const cdb_arena *a)
{
    return a->used;
}

size_t cdb_arena_blocks(const cdb_arena *a)
{
    return a->nblocks;
}
