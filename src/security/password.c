/*
 * password.c - password hashing for password.h: argon2id through libsodium
 * for every new hash, and verification of the seed-era bcrypt hashes
 * ($2a$, $2b$, $2y$) through libxcrypt so their owners can log in once and be
 * re-hashed by the caller (needs_rehash is always true for bcrypt).
 *
 * The stored string's prefix picks the algorithm; anything else never
 * matches. "$argon2i$" is refused on purpose: we never wrote it.
 *
 * cdb_password_burn keeps unknown emails as slow as wrong passwords by
 * verifying against a dummy argon2id hash of a random secret. The dummy is
 * computed on first use and again whenever the parameters change, so the work
 * always matches what a real hash with those parameters costs.
 */
#include "security/password.h"

#include <crypt.h>
#include <pthread.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#define ARGON2ID_PREFIX "$argon2id$"

int cdb_password_hash(const cdb_password_params *p, const char *password, size_t len,
                      char out[CDB_PASSWORD_HASH_MAX], cdb_error *err)
{
    _Static_assert(CDB_PASSWORD_HASH_MAX >= crypto_pwhash_STRBYTES,
                   "CDB_PASSWORD_HASH_MAX too small for libsodium");

    if (p->opslimit < crypto_pwhash_OPSLIMIT_MIN || p->opslimit > crypto_pwhash_OPSLIMIT_MAX ||
        p->memlimit < crypto_pwhash_MEMLIMIT_MIN || p->memlimit > crypto_pwhash_MEMLIMIT_MAX)
        return cdb_error_set(err, CDB_ERR_CONFIG_INVALID,
                             "Password hash parameters out of range");
    if (len > crypto_pwhash_PASSWD_MAX)
        return cdb_error_set(err, CDB_ERR_VALIDATION_FAILED, "Password too long");
    /* Fails only when memlimit bytes cannot be allocated. */
    if (crypto_pwhash_str_alg(out, password, len, p->opslimit, p->memlimit,
                              crypto_pwhash_ALG_ARGON2ID13) != 0)
        return cdb_error_set(err, CDB_ERR_INTERNAL_ERROR, "Password hashing failed");
    return 0;
}

/* crypt_data is ~32 KiB: too big for a worker thread's stack. */
typedef struct bcrypt_work {
    struct crypt_data cd;
    char password[];
} bcrypt_work;

static bool verify_bcrypt(const char *stored, size_t stored_len,
                          const char *password, size_t len)
{
    bcrypt_work *w;
    const char *out;
    bool ok = false;

    /* crypt takes a C string: an embedded NUL would silently truncate. */
    if (memchr(password, '\0', len))
        return false;
    w = calloc(1, sizeof(*w) + len + 1);
    if (!w)
        return false;
    memcpy(w->password, password, len);
    out = crypt_rn(w->password, stored, &w->cd, sizeof(w->cd));
    if (!out || strlen(out) != stored_len)
        goto out_free;
    ok = sodium_memcmp(out, stored, stored_len) == 0;
out_free:
    sodium_memzero(w, sizeof(*w) + len + 1);
    free(w);
    return ok;
}

static bool is_bcrypt(const char *stored)
{
    return strncmp(stored, "$2a$", 4) == 0 || strncmp(stored, "$2b$", 4) == 0 ||
           strncmp(stored, "$2y$", 4) == 0;
}

bool cdb_password_verify(const cdb_password_params *p, const char *stored,
                         const char *password, size_t len, bool *needs_rehash)
{
    size_t stored_len = stored ? strnlen(stored, CDB_PASSWORD_HASH_MAX) : 0;
    bool rehash = true, ok = false;

    if (stored_len == 0 || stored_len == CDB_PASSWORD_HASH_MAX)
        goto out;
    if (strncmp(stored, ARGON2ID_PREFIX, strlen(ARGON2ID_PREFIX)) == 0) {
        ok = len <= crypto_pwhash_PASSWD_MAX &&
             crypto_pwhash_str_verify(stored, password, len) == 0;
        rehash = crypto_pwhash_str_needs_rehash(stored, p->opslimit, p->memlimit) != 0;
    } else if (is_bcrypt(stored)) {
        ok = verify_bcrypt(stored, stored_len, password, len);
    }
out:
    if (needs_rehash)
        *needs_rehash = rehash;
    return ok;
}

/* The dummy hash and the parameters it was made with; under dummy_lock. */
static pthread_mutex_t dummy_lock = PTHREAD_MUTEX_INITIALIZER;
static cdb_password_params dummy_params;
static char dummy_hash[CDB_PASSWORD_HASH_MAX];

void cdb_password_burn(const cdb_password_params *p, const char *password, size_t len)
{
    char hash[CDB_PASSWORD_HASH_MAX] = "";
    unsigned char secret[32];

    pthread_mutex_lock(&dummy_lock);
    if (dummy_params.opslimit == p->opslimit && dummy_params.memlimit == p->memlimit)
        memcpy(hash, dummy_hash, sizeof(hash));
    pthread_mutex_unlock(&dummy_lock);

    /* Hashing outside the lock: racing first callers each pay one hash,
     * which is the cost they are meant to pay anyway. */
    if (hash[0] == '\0') {
        randombytes_buf(secret, sizeof(secret));
        if (cdb_password_hash(p, (const char *)secret, sizeof(secret), hash, NULL) < 0)
            return;
        pthread_mutex_lock(&dummy_lock);
        dummy_params = *p;
        memcpy(dummy_hash, hash, sizeof(hash));
        pthread_mutex_unlock(&dummy_lock);
    }
    (void)cdb_password_verify(p, hash, password, len, NULL);
}

/* Code points, not bytes: "at least 10 characters" should mean what a person counts. */
static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

int cdb_password_check_length(const char *pw, size_t len, int min_chars, const char *field,
                              cdb_error *err)
{
    if (len > CDB_PASSWORD_MAX_BYTES || strlen(pw) != len)
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", field,
                                    "%s must be at most %d bytes, without NUL characters", field,
                                    CDB_PASSWORD_MAX_BYTES);
    if (utf8_chars(pw) < (size_t)min_chars)
        return cdb_error_set_detail(err, CDB_ERR_VALIDATION_FAILED, "field", field,
                                    "%s must be at least %d characters", field, min_chars);
    return 0;
}
