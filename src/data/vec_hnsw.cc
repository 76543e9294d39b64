/*
 * vec_hnsw.cc - the C shim over hnswlib (data/vec_hnsw.h): the only C++
 * file of coredb. Each entry point catches every exception and answers
 * with an error value instead: hnswlib throws std::runtime_error (full
 * index, unknown label, failed allocations of its own) and the standard
 * library std::bad_alloc, and an exception unwinding into C frames would
 * be undefined behaviour.
 *
 * Known in hnswlib 0.6.2: with SSE, searchBaseLayer prefetches the address
 * of the link after a full neighbour list, reading 4 bytes past an upper
 * layer's list (only to compute a prefetch address). ASan and valgrind
 * builds compile this file with NO_MANUAL_VECTORIZATION (Makefile).
 * Concurrent inserts (the first build, vec_index.c) share hnswlib's level
 * generator without a lock, as its Python binding does.
 */
#include "data/vec_hnsw.h"

#include <hnswlib/hnswlib.h>

#include <new>

struct cdb_vec_hnsw {
    hnswlib::SpaceInterface<float> *space;
    hnswlib::HierarchicalNSW<float> *graph;
};

extern "C" {

cdb_vec_hnsw *cdb__vec_hnsw_new(int dims, cdb_vec_hnsw_space space, size_t max_elements, int m,
                                int ef_construction, int ef_search)
{
    cdb_vec_hnsw *h = nullptr;
    try {
        h = new cdb_vec_hnsw{nullptr, nullptr};
        if (space == CDB_VEC_HNSW_L2)
            h->space = new hnswlib::L2Space((size_t)dims);
        else
            h->space = new hnswlib::InnerProductSpace((size_t)dims);
        /* a fixed seed (inserts from several threads, the first build, still vary the graph) */
        h->graph = new hnswlib::HierarchicalNSW<float>(h->space, max_elements ? max_elements : 1, (size_t)m,
                                                       (size_t)ef_construction, 100);
        h->graph->setEf((size_t)ef_search);
        return h;
    } catch (...) {
        cdb__vec_hnsw_free(h);
        return nullptr;
    }
}

void cdb__vec_hnsw_free(cdb_vec_hnsw *h)
{
    if (!h)
        return;
    delete h->graph; /* destructors do not throw */
    delete h->space;
    delete h;
}

int cdb__vec_hnsw_add(cdb_vec_hnsw *h, size_t label, const float *x)
{
    try {
        h->graph->addPoint(x, label);
        return 0;
    } catch (...) {
        return -1;
    }
}

int cdb__vec_hnsw_mark_deleted(cdb_vec_hnsw *h, size_t label)
{
    try {
        h->graph->markDelete(label);
        return 0;
    } catch (...) {
        return -1;
    }
}

int cdb__vec_hnsw_resize(cdb_vec_hnsw *h, size_t max_elements)
{
    try {
        if (max_elements < h->graph->cur_element_count)
            return -1;
        h->graph->resizeIndex(max_elements);
        return 0;
    } catch (...) {
        return -1;
    }
}

size_t cdb__vec_hnsw_count(const cdb_vec_hnsw *h)
{
    return h->graph->cur_element_count;
}

size_t cdb__vec_hnsw_capacity(const cdb_vec_hnsw *h)
{
    return h->graph->max_elements_;
}

int cdb__vec_hnsw_search(const cdb_vec_hnsw *h, const float *q, int k, size_t *labels_out, float *dists_out)
{
    try {
        if (k <= 0)
            return 0;
        auto top = h->graph->searchKnn(q, (size_t)k);
        /* the queue pops the farthest first: fill from the back */
        int n = (int)top.size();
        for (int i = n - 1; i >= 0; i--) {
            labels_out[i] = top.top().second;
            dists_out[i] = top.top().first;
            top.pop();
        }
        return n;
    } catch (...) {
        return -1;
    }
}

const float *cdb__vec_hnsw_vector(const cdb_vec_hnsw *h, size_t label)
{
    try {
        auto it = h->graph->label_lookup_.find(label);
        if (it == h->graph->label_lookup_.end())
            return nullptr;
        return reinterpret_cast<const float *>(h->graph->getDataByInternalId(it->second));
    } catch (...) {
        return nullptr;
    }
}

} /* extern "C" */
