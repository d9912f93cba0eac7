/* sp_digest.h - streaming SHA-1 / MD5 over EVP, fed from memory or straight from a descriptor.
 * How the descriptor path works (and why it may use a reader thread) is explained at the top
 * of sp_digest.c. */
#ifndef SP_DIGEST_H
#define SP_DIGEST_H

/* Which digest sp_digest_new makes. */
enum {
    SP_DIGEST_SHA1 = 1,
    SP_DIGEST_MD5 = 2
};

/* What sp_digest_update_fd reports. */
enum {
    SP_DIGEST_MORE = 0, /* stopped before EOF (limit reached, or a signal arrived): call again */
    SP_DIGEST_EOF = 1,  /* the descriptor reached end of file */
    SP_DIGEST_FAIL = -1 /* failure; the sp_err record says what (sys_errno for I/O errors) */
};

/* 1 where sp_digest_update_fd works (POSIX); 0 where callers must read in Python. */
#ifdef _WIN32
#define SP_DIGEST_HAS_FD 0
#else
#define SP_DIGEST_HAS_FD 1
#endif

/* Largest digest any SP_DIGEST_* kind produces. */
#define SP_DIGEST_MAX_SIZE 20

typedef struct sp_digest sp_digest;

/* A fresh digest of `kind`; NULL on failure (err filled). Free with sp_digest_free. */
sp_digest *sp_digest_new(int kind, sp_err *err);
void sp_digest_free(sp_digest *d);
/* The digest's output size in bytes. */
/* Hash `len` bytes. 1 on success, 0 on failure (err, when not NULL, filled). */
int sp_digest_update(sp_digest *d, const unsigned char *data, size_t len, sp_err *err);
/* Read `fd` until EOF or until `limit` bytes were hashed, whichever comes first, and hash what
 * was read. offset >= 0: read with pread() from that offset, leaving the descriptor's position
 * alone; offset < 0: read() from the current position. *done receives how many bytes this call
 * hashed. Returns SP_DIGEST_EOF, SP_DIGEST_MORE or SP_DIGEST_FAIL. */
int sp_digest_update_fd(sp_digest *d, int fd, long long offset, unsigned long long limit,
                        unsigned long long *done, sp_err *err);
/* Finish: write the digest (its size in bytes) to out. Returns its size, or -1 on failure
 * (also when outlen is too small or the digest was already finished). */
int sp_digest_final(sp_digest *d, unsigned char *out, size_t outlen, sp_err *err);
/* One-shot digest of a buffer into out; returns the size, or -1 on failure. */
int sp_digest_oneshot(int kind, const unsigned char *data, size_t len, unsigned char *out,
                      size_t outlen, sp_err *err);

/* ---- the shared libraries behind this module (sp_libs.c) ------------------------------ */
#include "sp_libs.h"

#endif /* SP_DIGEST_H */
