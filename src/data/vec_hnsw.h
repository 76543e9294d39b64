/*
 * vec_hnsw.h - a plain C shim over hnswlib (Debian's libhnswlib-dev,
 * header-only C++): the approximate nearest-neighbour graph of the vector
 * store's "hnsw" collections (vec_index.c). vec_hnsw.cc is the project's
 * only C++ file; every C++ exception (std::bad_alloc, hnswlib's
 * std::runtime_error) is caught there and becomes an error return, so none
 * crosses into C.
 *
 * Labels are the caller's (size_t); distances are hnswlib's: squared
 * Euclidean for CDB_VEC_HNSW_L2, 1 - x.q for CDB_VEC_HNSW_IP (cosine is the
 * inner product of normalized vectors: the caller normalizes). Not
 * thread-safe for writes: the caller serializes add/mark_deleted/resize
 * against everything else (searches may run together).
 */
#ifndef COREDB_DATA_VEC_HNSW_H
#define COREDB_DATA_VEC_HNSW_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cdb_vec_hnsw cdb_vec_hnsw;
typedef enum cdb_vec_hnsw_space { CDB_VEC_HNSW_L2, CDB_VEC_HNSW_IP } cdb_vec_hnsw_space;

/* An empty index of room for max_elements points; NULL on failure (memory). */
cdb_vec_hnsw *cdb__vec_hnsw_new(int dims, cdb_vec_hnsw_space space, size_t max_elements, int m,
                                int ef_construction, int ef_search);
void cdb__vec_hnsw_free(cdb_vec_hnsw *h);

/* Adds point `label`, or replaces its vector (and undeletes it) when it is there. 0, or -1 (full: resize first; memory). */
int cdb__vec_hnsw_add(cdb_vec_hnsw *h, size_t label, const float *x);
/* Marks `label` deleted (searches skip it). 0, or -1 when there is no such live label. */
int cdb__vec_hnsw_mark_deleted(cdb_vec_hnsw *h, size_t label);
/* Room for max_elements points (at least the current count). 0, or -1 (memory). */
int cdb__vec_hnsw_resize(cdb_vec_hnsw *h, size_t max_elements);
/* Points added (deleted ones included), and room. */
size_t cdb__vec_hnsw_count(const cdb_vec_hnsw *h);
size_t cdb__vec_hnsw_capacity(const cdb_vec_hnsw *h);

/*
 * The up to k live points nearest q, nearest first, searching with a
 * candidate list of max(ef_search, k): labels_out[i], dists_out[i] (each k
 * long). Returns how many, or -1 on failure.
 */
int cdb__vec_hnsw_search(const cdb_vec_hnsw *h, const float *q, int k, size_t *labels_out, float *dists_out);

/* The stored vector of live or deleted `label` (valid until the next write), or NULL. */
const float *cdb__vec_hnsw_vector(const cdb_vec_hnsw *h, size_t label);

#ifdef __cplusplus
}
#endif

#endif
