/*
 * picohttpparser.h - the request-head tokenizer and chunked-body decoder we
 * use from Debian's libh2o (package libh2o-dev), which exports these
 * functions (phr_parse_request, phr_decode_chunked) but does not install
 * their header. The declarations below are the library's stable public API
 * as published with picohttpparser; tests/e2e/test_http_hostile.py drives
 * both through the server, so an incompatible libh2o shows at once.
 */
#ifndef COREDB_PICOHTTPPARSER_H
#define COREDB_PICOHTTPPARSER_H

#include <stddef.h>
#include <sys/types.h>

/* One header field; name is NULL for an obsolete folded continuation line. */
struct phr_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};

/*
 * Parses a request head in buf. Returns its length when complete, -2 when
 * more bytes are needed, -1 when it is malformed. last_len is the length of
 * buf at the previous (incomplete) call, 0 the first time.
 */
int phr_parse_request(const char *buf, size_t len, const char **method, size_t *method_len,
                      const char **path, size_t *path_len, int *minor_version,
                      struct phr_header *headers, size_t *num_headers, size_t last_len);

/* Zero-filled before the first call; consume_trailer = 1 eats the trailer section. */
struct phr_chunked_decoder {
    size_t bytes_left_in_chunk;
    char consume_trailer;
    char _hex_count;
    char _state;
};

/*
 * Decodes chunked data in place: on return *bufsz is the decoded length at
 * buf. Returns -2 while the body is incomplete, -1 when it is malformed,
 * else the number of bytes after the body, left right after the decoded
 * data (the start of the next request).
 */
ssize_t phr_decode_chunked(struct phr_chunked_decoder *decoder, char *buf, size_t *bufsz);

#endif
