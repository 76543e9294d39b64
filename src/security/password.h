/*
 * password.h - password hashing: argon2id (libsodium) for everything new,
 * verification of seed-era bcrypt hashes ($2a$, $2b$, $2y$ via libxcrypt's
 * crypt_r) so those users can log in once and be re-hashed.
 *
 * Every function here is slow on purpose (tens of milliseconds) and must
 * never run on an event loop. All are thread-safe.
 */
#ifndef COREDB_PASSWORD_H
#define COREDB_PASSWORD_H

#include <stdbool.h>
#include <stddef.h>

#include "coredb/error.h"

#define CDB_PASSWORD_HASH_MAX 128   /* >= crypto_pwhash_STRBYTES */
/* The longest password accepted, in bytes: registration refuses longer
 * ones, login does not hash them (bounds the work one request can ask). */
#define CDB_PASSWORD_MAX_BYTES 1024

typedef struct cdb_password_params {
    unsigned long long opslimit;    /* argon2id passes (PASSWORD_HASH_OPSLIMIT) */
    size_t memlimit;                /* bytes (PASSWORD_HASH_MEMLIMIT_KIB * 1024) */
} cdb_password_params;

/* Hashes with argon2id into out (a NUL-terminated "$argon2id$..." string). */
int cdb_password_hash(const cdb_password_params *p, const char *password, size_t len,
                      char out[CDB_PASSWORD_HASH_MAX], cdb_error *err);

/*
 * The length rule of the password policy, shared by coredb's users
 * (identity) and database logins (management): at most
 * CDB_PASSWORD_MAX_BYTES bytes, no NUL (len is the JSON length, so an
 * embedded NUL shows as strlen(pw) != len), at least min_chars characters
 * (PASSWORD_MIN_LENGTH, counted in UTF-8 code points). VALIDATION_FAILED
 * with details.field = field otherwise.
 */
int cdb_password_check_length(const char *pw, size_t len, int min_chars, const char *field,
                              cdb_error *err);

/*
 * Checks password against stored (argon2id or bcrypt). Returns true on a
 * match; *needs_rehash (may be NULL) is set when the hash is bcrypt or
 * argon2id with other parameters than p. Unknown formats never match.
 * Comparison is constant-time.
 */
bool cdb_password_verify(const cdb_password_params *p, const char *stored,
                         const char *password, size_t len, bool *needs_rehash);

/*
 * Does the same work as a verify against an argon2id hash with parameters p,
 * and always fails: used for unknown emails so that they cost the same time
 * as a wrong password.
 */
void cdb_password_burn(const cdb_password_params *p, const char *password, size_t len);

#endif
