/*
 * colcrypt.h - column encryption's keys and value format (issue 11), below
 * the data layer so both the data API (reads, writes) and the management
 * jobs (setup, rotation, rewrap) use one implementation.
 *
 * Keys. DB_ENCRYPTION_KEY (32 bytes) is the key-encryption key. Each
 * encrypted column has data keys, one per version, drawn from libsodium's
 * CSPRNG and stored only wrapped:
 *     wrapped = nonce(24) || XChaCha20-Poly1305(data key, AD = "cdbkey1|" table "|" column "|" version)
 * so a wrapped key moved to another column or version does not unwrap.
 * Plaintext keys live in sodium_malloc'd (guarded, mlocked) memory and are
 * zeroed when freed (cdb__colkey_free).
 *
 * Values. "cdb1:<version>:<base64(nonce(24) || ciphertext || tag(16))>",
 * text in the column itself. The associated data is
 *     "cdb1|" table "|" column "|" primary key text
 * so a ciphertext copied into another row or column fails to decrypt.
 */
#ifndef COREDB_SECURITY_COLCRYPT_H
#define COREDB_SECURITY_COLCRYPT_H

#include <stdbool.h>
#include <stddef.h>

#include "coredb/error.h"

#define CDB_COLKEY_BYTES 32
#define CDB_COLVAL_PREFIX "cdb1:"

/* One unwrapped data key (sodium_malloc'd). */
typedef struct cdb_colkey {
    unsigned char *key;            /* CDB_COLKEY_BYTES, sodium_malloc'd */
    int version;
} cdb_colkey;

/*
 * The master key from its configured text (64 hex digits or base64 of 32
 * bytes) into out. CONFIG_INVALID naming `var` when it is not one.
 */
int cdb__colcrypt_master(const char *text, const char *var, unsigned char out[CDB_COLKEY_BYTES],
                         cdb_error *err);

/* A fresh random data key of `version`; NULL on out of memory. */
cdb_colkey *cdb__colkey_new(int version);
void cdb__colkey_free(cdb_colkey *k);

/*
 * The wrapped form of k for (table, column), hex text (malloc'd), or NULL
 * on out of memory.
 */
char *cdb__colkey_wrap(const unsigned char master[CDB_COLKEY_BYTES], const cdb_colkey *k,
                       const char *table, const char *column);
/*
 * Unwraps hex text made by cdb__colkey_wrap. NULL with err
 * ENCRYPTION_KEY_INVALID-style CONFIG_INVALID when the master key is not the
 * one that wrapped it (or the text was altered / moved).
 */
cdb_colkey *cdb__colkey_unwrap(const unsigned char master[CDB_COLKEY_BYTES], const char *hex,
                               int version, const char *table, const char *column, cdb_error *err);

/* Whether text has the encrypted value form; *version its key version. */
bool cdb__colval_is_encrypted(const char *text, int *version);

/*
 * Encrypts plaintext (len bytes) bound to (table, column, pk): the value
 * text (malloc'd), NULL on out of memory.
 */
char *cdb__colval_encrypt(const cdb_colkey *k, const char *table, const char *column, const char *pk,
                          const char *plain, size_t len);
/*
 * Decrypts value text bound to (table, column, pk) with k (whose version
 * must be the value's): the plaintext (malloc'd, NUL-terminated, *len its
 * length), or NULL with DECRYPTION_FAILED (never naming the value).
 */
char *cdb__colval_decrypt(const cdb_colkey *k, const char *table, const char *column, const char *pk,
                          const char *value, size_t *len, cdb_error *err);

/*
 * The blind index of plain: keyed BLAKE2b (subkey 2 of k via crypto_kdf,
 * context "cdbblind") truncated to 16 bytes, hex text into out (33 bytes).
 * k is the column's index key (stored as key version 0), not a data key:
 * the index stays valid across rotations. It leaks equality: rows with the
 * same value have the same index.
 */
void cdb__colval_blind(const cdb_colkey *k, const char *plain, size_t len, char out[33]);

#endif
