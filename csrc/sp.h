/* sp.h - the shim's C API: everything Python calls (declared again for CFFI in cdef/). */
#ifndef SP_H
#define SP_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "compat.h"

#define SP_EXPORT /* symbols are reached through the CFFI module only */

/* ---- error record (sp_err.c) -------------------------------------------------------- */

#define SP_ERR_TEXT 2048

/* What went wrong in one shim call; Python turns it into the exception API.md names. */
typedef struct sp_err {
    int ssl_error;       /* SSL_get_error() of the failing call, 0 if not an SSL call */
    int sys_errno;       /* errno (or WSA error) of a failing system call, else 0 */
    long verify_result;  /* SSL_get_verify_result() when certificate verification failed, else -1 */
    int nerrs;           /* how many OpenSSL errors were drained into text */
    char text[SP_ERR_TEXT]; /* the drained OpenSSL error queue, one error a line */
    /* The connection whose pump call filled it (set at the call's start), else NULL: the
     * ports' record is per thread, and a signal handler that runs as a failed call returns
     * may make a pump call on another connection before the caller reads it (ports.py
     * Connection.fail; sp_conn_failure). */
    const void *conn;
} sp_err;

/* Empty err (all but conn). */
void sp_err_reset(sp_err *err);
/* Drain the thread's OpenSSL error queue into err (always empties the queue). */
void sp_err_drain(sp_err *err);
const char *sp_build_version(void);
/* Run make() until it succeeds once (*done then stays 1): CRYPTO_THREAD_run_once, except that a
 * make() that failed (out of memory) is tried again by the next caller, instead of failing
 * every later call for the life of the process. 1 once made, 0 when make() failed (its errors
 * stay queued). make() must not call sp_once itself. */
int sp_once(int *done, int (*make)(void));
const char *sp_openssl_version_text(void);
unsigned long sp_openssl_version_number(void);
unsigned long sp_openssl_linked_version_number(void);

/* ---- streaming digests (sp_digest.c) ------------------------------------------------- */
#include "sp_digest.h"

/* ---- connections (sp_conn.c) --------------------------------------------------------- */
#include "sp_conn.h"

/* ---- contexts (sp_ctx.c) --------------------------------------------------------------- */
#include "sp_ctx.h"

/* ---- peer verification, facts, Python callbacks (sp_verify.c) -------------------------- */
#include "sp_verify.h"

/* ---- client session cache (sp_session.c) ---------------------------------------------- */
#include "sp_session.h"

#endif /* SP_H */
