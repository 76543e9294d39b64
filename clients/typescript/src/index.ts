/* @coredb/client: the package's entry point (the client, its error, the generated types). */
export { CoreDB, VERSION } from "./client.js";
export type { Answer, Backup, Body, ClientOptions, Health, Lease, Operation, Query, QueryResult,
    RequestOptions, TokenPair, Tokens, TransactionResult, User } from "./client.js";
export { CoreDBError } from "./errors.js";
export type { components, operations, paths } from "./schema.js";
