// Compiled (never run) by tests/e2e/test_client_typescript.py under strict
// tsc: the document and vector bodies the service accepts (src/data/vec_query.c,
// vec_tx.c, doc_query.c) must type-check against the generated schema, so a
// field missing from docs/openapi.json fails the test. The calls themselves
// run against a real coredb in test/client.test.js ("collections: ...").
import { CoreDB, type Query, type Operation } from "@coredb/client";

export async function documentsAndVectors(db: CoreDB): Promise<number> {
    // a vector search with every member vec_query.c accepts
    const search: Query = {
        database: "vectors", query_type: "search", collection: "embeddings",
        vector: [0.1, 0.2, 0.3], k: 5, filter: { "tags.lang": { eq: "en" } },
        min_score: 0.25, with_payload: true, with_vector: false, exact: true,
    };
    const hits = await db.query(search);
    // a vector upsert (vec_tx.c: id, vector, payload) and a delete
    const upsert: Operation = {
        database: "vectors", operation: "upsert", collection: "embeddings",
        id: "p1", vector: [0.1, 0.2, 0.3], payload: { lang: "en" },
    };
    await db.transaction([upsert, { database: "vectors", operation: "upsert", collection: "embeddings",
                                   vector: [1, 0, 0], payload: null },
                          { database: "vectors", operation: "delete", collection: "embeddings", id: "p0" }]);
    // a document query with a path filter and order_by {path, direction} (doc_query.c)
    const docs = await db.query({
        database: "documents", query_type: "select", collection: "notes",
        select: ["title", "meta.author"],
        filters: { "meta.author": "ann", "meta.stars": { gte: 3 } },
        order_by: [{ path: "meta.stars", direction: "desc" }, { path: "title" }],
        pagination: { page: 1, limit: 20 },
    });
    // the table form keeps its {column, direction}
    const rows = await db.query({ database: "postgresql", query_type: "select", table: "projects",
                                  order_by: { column: "title", direction: "asc" } });
    return [hits.data, docs.data, rows.data].length;
}
