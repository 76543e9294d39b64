/*
 * user_input.h - validation of the JSON bodies of the users API (internal to
 * src/identity). Pure: no I/O, so the rules are unit tested on their own
 * (tests/unit/identity/user_input.c). Every failure is VALIDATION_FAILED with
 * details.field naming the field.
 */
#ifndef COREDB_USER_INPUT_H
#define COREDB_USER_INPUT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "coredb/config.h"
#include "coredb/error.h"
#include "security/password.h"

#define EMAIL_MAX 255
#define USERNAME_MIN 3
#define USERNAME_MAX 50
#define DISPLAY_NAME_MAX 100
#define PICTURE_URL_MAX 500

/* A validated body; strings point into the JSON it came from. */
typedef struct cdb_user_input {
    char email[EMAIL_MAX + 1];     /* lowercased; valid when has_email */
    const char *username;
    const char *password;
    size_t password_len;
    const char *role;
    const char *display_name;      /* NULL with has_display_name: set to null */
    const char *picture_url;
    bool has_email, has_display_name, has_picture_url;
} cdb_user_input;

/*
 * Checks every field of a create (required: email, username, password) or
 * update (all optional) body: email syntax (dot-atom, a dotted domain,
 * <= 255, lowercased into in->email), username 3-50 of [a-z0-9_.-],
 * password policy, role, display_name <= 100 without control characters,
 * profile_picture_url http(s) <= 500; unknown fields, wrong types and NUL
 * characters are refused. The password-equals-email rule is checked when
 * the body carries both. Strings of *in point into body.
 */
int cdb_user_input_parse(const cdb_config *cfg, json_t *body, bool create, cdb_user_input *in,
                         cdb_error *err);

/* One email address: 0 and its lowercase form in out, or VALIDATION_FAILED. */
int cdb_user_check_email(const char *s, char out[EMAIL_MAX + 1], cdb_error *err);
/* 3-50 of [a-z0-9_.-]. */
int cdb_user_check_username(const char *s, cdb_error *err);

/*
 * The password policy: >= PASSWORD_MIN_LENGTH characters, <= 1024 bytes, no
 * NUL, not equal to email (case-insensitively; email may be NULL).
 */
int cdb_user_check_password(const cdb_config *cfg, const char *pw, size_t len, const char *email,
                            cdb_error *err);

#endif
