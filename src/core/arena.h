/*
 * arena.h - a bump allocator for what lives exactly as long as one request:
 * its struct, the head's bytes, the body, path, token, the loop's admission
 * record, the cache key. One block serves a whole request (most need a few
 * KiB), so a request costs no malloc of its own; freeing it is one call.
 *
 * Blocks come from a cdb_arena_pool, a bounded stack of first blocks kept
 * by their thread (an event loop: the next request, on this connection or
 * another, reuses the block the last one freed). A request larger than a
 * block (a big body) chains more blocks, freed with the arena.
 *
 * One thread at a time (no lock): an arena travels with its request (loop,
 * worker, loop); a pool is used by its loop thread only.
 */
#ifndef COREDB_CORE_ARENA_H
#define COREDB_CORE_ARENA_H

#include <stddef.h>

#define CDB_ARENA_BLOCK  8192      /* a first block: a whole typical request */
#define CDB_ARENA_ALIGN  16        /* alignof(max_align_t) on x86-64 and arm64 */

typedef struct cdb_arena cdb_arena;
typedef struct cdb_arena_pool cdb_arena_pool;

/* A pool keeping at most max_blocks spare first blocks; NULL on out of memory. */
cdb_arena_pool *cdb_arena_pool_new(size_t max_blocks);
/* Frees the pool and its spare blocks (every arena taken from it must be freed first). */
void cdb_arena_pool_free(cdb_arena_pool *pool);
/* Spare blocks held now (for tests and metrics). */
size_t cdb_arena_pool_spare(const cdb_arena_pool *pool);

/*
 * A new arena whose first block comes from pool (may be NULL: then from
 * malloc, and freed to it). The arena's own struct lives in that block.
 * NULL on out of memory.
 */
cdb_arena *cdb_arena_new(cdb_arena_pool *pool);
/* Frees every block; the first goes back to the arena's pool when it has room. */
void cdb_arena_free(cdb_arena *a);
/* Forgets every allocation but keeps the first block (the others are freed). */
void cdb_arena_reset(cdb_arena *a);

/* size bytes aligned to CDB_ARENA_ALIGN (size 0: a valid unique pointer); NULL on out of memory. */
void *cdb_arena_alloc(cdb_arena *a, size_t size);
/* The same, zeroed. */
void *cdb_arena_calloc(cdb_arena *a, size_t size);
/* A NUL-terminated copy of the first n bytes of s (or fewer: up to its NUL). */
char *cdb_arena_strndup(cdb_arena *a, const char *s, size_t n);
char *cdb_arena_strdup(cdb_arena *a, const char *s);
/* Bytes handed out and blocks held (for tests). */
size_t cdb_arena_used(const cdb_arena *a);
size_t cdb_arena_blocks(const cdb_arena *a);

#endif
