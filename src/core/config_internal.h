/*
 * config_internal.h - what config.c and config_url.c share: the URL syntax
 * checks and encoders behind DATABASE_URL, DATABASE_READ_URLS and
 * REDIS_URL, and the redaction mark.
 */
#ifndef COREDB_CONFIG_INTERNAL_H
#define COREDB_CONFIG_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include "coredb/error.h"

#define REDACTED "[redacted]"

/* host[:port] or [ipv6][:port] in h[0..n); the host may not be empty. */
bool cdb__config_hostport_ok(const char *h, size_t n);
/* No blanks or control characters, and every '%' starts a valid escape. */
bool cdb__config_url_chars_ok(const char *s);
/* End of the URL starting at s inside a comma-separated list of URLs. */
const char *cdb__config_url_end(const char *s);
/* RFC 3986 unreserved characters kept, the rest %XX; malloc'd, NULL on out of memory. */
char *cdb__config_pct_encode(const char *s);
/* REDIS_URL's syntax: redis://[[user]:password@]host[:port][/db]; errors name `name`. */
int cdb__config_check_redis_url(const char *name, const char *url, cdb_error *err);
/* REDIS_SENTINELS: host:port[,host:port...], a port required, at most 16; errors name `name`. */
int cdb__config_check_sentinels(const char *name, const char *list, cdb_error *err);

#endif
