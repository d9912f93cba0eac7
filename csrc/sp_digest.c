/* sp_digest.c - streaming SHA-1 / MD5 through EVP, fed from memory or from a descriptor.
 *
 * Python's sha1/md5 (sslports/_digest.py) hash three kinds of input:
 *
 *   - a buffer (bytes, a readinto block): sp_digest_update, one call per block, GIL released
 *     by CFFI around it;
 *   - a descriptor (a real file or pipe behind a plain FileIO / BufferedReader):
 *     sp_digest_update_fd reads it here, in 256 KiB blocks (1 MiB with the reader thread),
 *     without going back to Python per block;
 *   - small buffers: sp_digest_oneshot, one crossing for new + update + final.
 *
 * The descriptor path. Hashing from the page cache costs a copy (read) plus the hash. On one
 * core the copy is ~15% of SHA-1 time, so reading and hashing in turn cannot reach the speed of
 * hashing alone. For a large regular file on a machine with more than one CPU the copy is
 * therefore moved to a short-lived reader thread: it fills a ring of SP_RING_SLOTS blocks while
 * the calling thread hashes the previous ones, one mutex and two condition variables handing
 * slots back and forth. Every other case (pipes, devices, small files, one CPU, a thread that
 * cannot be created) uses the plain loop in the calling thread. mmap was measured too: page
 * faults cost as much as the copy, and a file truncated under the mapping kills the process
 * with SIGBUS, so it is not used.
 *
 * Signals. A call never runs unbounded: it returns SP_DIGEST_MORE after `limit` bytes, and the
 * plain loop also returns it when read() or poll() fails with EINTR, so Python runs its signal
 * handlers (KeyboardInterrupt) between calls and calls again. The reader thread blocks every
 * signal, so they are delivered to threads that can act on them; regular files never block
 * indefinitely, which is why only they get a reader thread.
 *
 * Errors. Each entry point clears the thread's OpenSSL error queue first and drains it into
 * the caller's sp_err on failure (or just clears it when err is NULL); an I/O failure sets
 * err->sys_errno. Hashing always happens in the calling thread, so the error queue drained is
 * the one the failing EVP call filled. Every OpenSSL and I/O call is checked; the pthread
 * lock/wait/signal/join calls on objects this file initialised cannot fail and are not.
 */
#ifndef _WIN32
/* pread, posix_fadvise, pthread_sigmask, sysconf: POSIX.1-2008 under -std=c99. */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif
/* On macOS _POSIX_C_SOURCE alone hides what POSIX does not name, _SC_NPROCESSORS_ONLN among
 * it (sp_cpu_count would then say 1: never a reader thread), and MSG_DONTWAIT, which makes
 * compat.h's SP_RECV_WAITS differ here from the other files. */
#if defined(__APPLE__) && !defined(_DARWIN_C_SOURCE)
#define _DARWIN_C_SOURCE 1
#endif
#endif

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "sp.h"

#ifndef _WIN32
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>
#endif

/* One read of the plain loop. 256 KiB stays in the L2 cache between the copy and the hash;
 * larger reads did not go faster (measured with 64 KiB to 4 MiB). */
#define SP_BLOCK ((size_t)256 * 1024)
/* One read of the reader thread, and how many it may run ahead. Bigger blocks mean fewer
 * hand-overs; 4 x 1 MiB was as fast as any ring measured and keeps the ring in the L3 cache. */
#define SP_PIPE_BLOCK ((size_t)1024 * 1024)
#define SP_RING_SLOTS 4
/* Below this many bytes left in the file, a reader thread costs more than it saves. */
#define SP_PIPE_MIN ((long long)8 * 1024 * 1024)

struct sp_digest {
    EVP_MD_CTX *ctx;
    int size;
    int finished;
    unsigned char *ring; /* SP_RING_SLOTS * SP_PIPE_BLOCK bytes, made on the first fd read */
};

#if OPENSSL_VERSION_NUMBER >= 0x30000000L
/* These digests are checksums (Racket's sha1 and md5 of a file), not security: fetched with
 * "-fips", as hashlib's usedforsecurity=False, so that a configuration that asks for
 * FIPS-approved algorithms by default (default_properties = fips=yes, FIPS-mode systems)
 * still computes them. Fetched once, kept for the life of the process; where no provider
 * offers one so (NULL, also remembered: no fetch per call), the built-in one is used, whose
 * use then fails with OpenSSL's own reason. */
static EVP_MD *fetched_sha1, *fetched_md5;
static int sha1_made, md5_made;

static int fetch_sha1(void)
{
    ERR_set_mark(); /* (a failure's reasons go: the built-in one will give its own) */
    fetched_sha1 = EVP_MD_fetch(NULL, "SHA1", "-fips");
    ERR_pop_to_mark();
    return 1;
}

static int fetch_md5(void)
{
    ERR_set_mark();
    fetched_md5 = EVP_MD_fetch(NULL, "MD5", "-fips");
    ERR_pop_to_mark();
    return 1;
}

static const EVP_MD *fetched(int *made, int (*fetch)(void), EVP_MD **md, const EVP_MD *builtin)
{
    return sp_once(made, fetch) && *md != NULL ? *md : builtin;
}
#endif

static const EVP_MD *sp_digest_md(int kind)
{
    switch (kind) {
    case SP_DIGEST_SHA1:
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
        return fetched(&sha1_made, fetch_sha1, &fetched_sha1, EVP_sha1());
#else
        return EVP_sha1();
#endif
    case SP_DIGEST_MD5:
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
        return fetched(&md5_made, fetch_md5, &fetched_md5, EVP_md5());
#else
        return EVP_md5();
#endif
    default:
        return NULL;
    }
}

/* Record a failure: the drained OpenSSL queue and an errno (0 for none). */
static void sp_digest_fail(sp_err *err, int sys_errno)
{
    if (err == NULL) {
        ERR_clear_error();
        return;
    }
    sp_err_reset(err);
    err->sys_errno = sys_errno;
    sp_err_drain(err);
}

sp_digest *sp_digest_new(int kind, sp_err *err)
{
    const EVP_MD *md = sp_digest_md(kind);
    sp_digest *d;
    int size;

    ERR_clear_error();
    if (md == NULL) {
        sp_digest_fail(err, EINVAL);
        return NULL;
    }
    size = EVP_MD_size(md);
    if (size <= 0 || size > SP_DIGEST_MAX_SIZE) {
        sp_digest_fail(err, EINVAL);
        return NULL;
    }
    d = (sp_digest *)calloc(1, sizeof *d);
    if (d == NULL) {
        sp_digest_fail(err, ENOMEM);
        return NULL;
    }
    d->size = size;
    d->ctx = EVP_MD_CTX_new();
    if (d->ctx == NULL || EVP_DigestInit_ex(d->ctx, md, NULL) != 1) {
        sp_digest_fail(err, d->ctx == NULL ? ENOMEM : 0);
        EVP_MD_CTX_free(d->ctx);
        free(d);
        return NULL;
    }
    return d;
}

void sp_digest_free(sp_digest *d)
{
    if (d == NULL)
        return;
    EVP_MD_CTX_free(d->ctx);
    free(d->ring);
    free(d);
}

int sp_digest_update(sp_digest *d, const unsigned char *data, size_t len, sp_err *err)
{
    ERR_clear_error();
    if (d->finished) {
        sp_digest_fail(err, EINVAL);
        return 0;
    }
    if (len > 0 && EVP_DigestUpdate(d->ctx, data, len) != 1) {
        sp_digest_fail(err, 0);
        return 0;
    }
    return 1;
}

int sp_digest_final(sp_digest *d, unsigned char *out, size_t outlen, sp_err *err)
{
    unsigned int n = 0;

    ERR_clear_error();
    if (d->finished || outlen < (size_t)d->size) {
        sp_digest_fail(err, EINVAL);
        return -1;
    }
    d->finished = 1;
    if (EVP_DigestFinal_ex(d->ctx, out, &n) != 1 || n != (unsigned int)d->size) {
        sp_digest_fail(err, 0);
        return -1;
    }
    return (int)n;
}

int sp_digest_oneshot(int kind, const unsigned char *data, size_t len, unsigned char *out,
                      size_t outlen, sp_err *err)
{
    const EVP_MD *md = sp_digest_md(kind);
    unsigned int n = 0;

    ERR_clear_error();
    if (md == NULL || outlen < (size_t)EVP_MD_size(md)) {
        sp_digest_fail(err, EINVAL);
        return -1;
    }
    if (EVP_Digest(data, len, out, &n, md, NULL) != 1) {
        sp_digest_fail(err, 0);
        return -1;
    }
    return (int)n;
}

#ifdef _WIN32

int sp_digest_update_fd(sp_digest *d, int fd, long long offset, unsigned long long limit,
                        unsigned long long *done, sp_err *err)
{
    (void)d;
    (void)fd;
    (void)offset;
    (void)limit;
    *done = 0;
    sp_digest_fail(err, ENOSYS); /* SP_DIGEST_HAS_FD is 0: Python reads the stream itself */
    return SP_DIGEST_FAIL;
}

#else /* POSIX */

/* One read of at most `want` bytes at `pos` (pread) or at the current position (pos < 0).
 * Returns the count, 0 at EOF, or -1 with errno set. */
static ssize_t sp_read_block(int fd, long long pos, unsigned char *buf, size_t want)
{
    if (pos < 0)
        return read(fd, buf, want);
    if ((unsigned long long)pos > (unsigned long long)LLONG_MAX - want
        || (sizeof(off_t) < sizeof(long long) && pos > (long long)LONG_MAX)) {
        errno = EOVERFLOW;
        return -1;
    }
    return pread(fd, buf, want, (off_t)pos);
}

/* Wait until a non-blocking fd is readable. 0 when it is (or has an error read() will tell),
 * -1 with errno set (EINTR included). */
static int sp_wait_readable(int fd)
{
    struct pollfd p;
    p.fd = fd;
    p.events = POLLIN;
    p.revents = 0;
    return poll(&p, 1, -1) < 0 ? -1 : 0;
}

static size_t sp_block_want(unsigned long long limit, unsigned long long done, size_t block)
{
    unsigned long long left = limit - done;
    return left < block ? (size_t)left : block;
}

/* The plain loop: read a block, hash it, in the calling thread. */
static int sp_update_fd_plain(sp_digest *d, int fd, long long offset, unsigned long long limit,
                              unsigned long long *done, sp_err *err)
{
    unsigned char *buf = d->ring;

    for (;;) {
        size_t want;
        ssize_t n;

        if (*done >= limit)
            return SP_DIGEST_MORE;
        want = sp_block_want(limit, *done, SP_BLOCK);
        n = sp_read_block(fd, offset < 0 ? -1 : offset + (long long)*done, buf, want);
        if (n > 0) {
            if (EVP_DigestUpdate(d->ctx, buf, (size_t)n) != 1) {
                sp_digest_fail(err, 0);
                return SP_DIGEST_FAIL;
            }
            *done += (unsigned long long)n;
            continue;
        }
        if (n == 0)
            return SP_DIGEST_EOF;
        if (errno == EINTR)
            return SP_DIGEST_MORE; /* Python runs its signal handlers, then calls again */
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            if (sp_wait_readable(fd) == 0)
                continue;
            if (errno == EINTR)
                return SP_DIGEST_MORE;
        }
        sp_digest_fail(err, errno);
        return SP_DIGEST_FAIL;
    }
}

/* ---- the reader thread ---------------------------------------------------------------- */

enum { SP_SLOT_DATA, SP_SLOT_EOF, SP_SLOT_LIMIT, SP_SLOT_ERROR };

typedef struct sp_pipe {
    /* fixed before the reader starts */
    int fd;
    long long offset;
    unsigned long long limit;
    unsigned char *ring;
    /* guarded by lock */
    pthread_mutex_t lock;
    pthread_cond_t filled;  /* reader -> hasher: a slot became full */
    pthread_cond_t emptied; /* hasher -> reader: a slot became free, or stop was set */
    int full[SP_RING_SLOTS];
    int kind[SP_RING_SLOTS];
    size_t len[SP_RING_SLOTS];
    int sys_errno;
    int stop;
} sp_pipe;

static void *sp_pipe_reader(void *arg)
{
    sp_pipe *p = (sp_pipe *)arg;
    unsigned long long requested = 0;
    int slot = 0;

    for (;;) {
        size_t want;
        ssize_t n = 0;
        int kind = SP_SLOT_DATA, sys_errno = 0;

        pthread_mutex_lock(&p->lock);
        while (p->full[slot] && !p->stop)
            pthread_cond_wait(&p->emptied, &p->lock);
        if (p->stop) {
            pthread_mutex_unlock(&p->lock);
            return NULL;
        }
        pthread_mutex_unlock(&p->lock);

        want = sp_block_want(p->limit, requested, SP_PIPE_BLOCK);
        if (want == 0) {
            kind = SP_SLOT_LIMIT;
        } else {
            unsigned char *buf = p->ring + (size_t)slot * SP_PIPE_BLOCK;
            long long pos = p->offset < 0 ? -1 : p->offset + (long long)requested;
            do {
                n = sp_read_block(p->fd, pos, buf, want);
            } while (n < 0 && errno == EINTR);
            if (n == 0) {
                kind = SP_SLOT_EOF;
            } else if (n < 0) {
                kind = SP_SLOT_ERROR;
                sys_errno = errno;
            } else {
                requested += (unsigned long long)n;
            }
        }

        pthread_mutex_lock(&p->lock);
        p->kind[slot] = kind;
        p->len[slot] = n > 0 ? (size_t)n : 0;
        p->sys_errno = sys_errno;
        p->full[slot] = 1;
        pthread_cond_signal(&p->filled);
        pthread_mutex_unlock(&p->lock);
        if (kind != SP_SLOT_DATA)
            return NULL;
        slot = (slot + 1) % SP_RING_SLOTS;
    }
}

/* Start the reader with every signal blocked in it. 1 when it runs, 0 when it could not. */
static int sp_pipe_start(sp_pipe *p, pthread_t *thread)
{
    sigset_t all, old;
    int rc;

    if (pthread_mutex_init(&p->lock, NULL) != 0)
        return 0;
    if (pthread_cond_init(&p->filled, NULL) != 0) {
        pthread_mutex_destroy(&p->lock);
        return 0;
    }
    if (pthread_cond_init(&p->emptied, NULL) != 0) {
        pthread_cond_destroy(&p->filled);
        pthread_mutex_destroy(&p->lock);
        return 0;
    }
    sigfillset(&all);
    if (pthread_sigmask(SIG_SETMASK, &all, &old) != 0)
        rc = -1;
    else {
        rc = pthread_create(thread, NULL, sp_pipe_reader, p);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    if (rc != 0) {
        pthread_cond_destroy(&p->emptied);
        pthread_cond_destroy(&p->filled);
        pthread_mutex_destroy(&p->lock);
        return 0;
    }
    return 1;
}

/* Hash what the reader delivers, in order, until it reports EOF, the limit or an error. */
static int sp_update_fd_piped(sp_digest *d, sp_pipe *p, pthread_t thread,
                              unsigned long long *done, sp_err *err)
{
    int slot = 0, result = SP_DIGEST_FAIL, sys_errno = 0, evp_failed = 0;

    for (;;) {
        int kind;
        size_t len;

        pthread_mutex_lock(&p->lock);
        while (!p->full[slot])
            pthread_cond_wait(&p->filled, &p->lock);
        kind = p->kind[slot];
        len = p->len[slot];
        sys_errno = p->sys_errno;
        pthread_mutex_unlock(&p->lock);

        if (kind != SP_SLOT_DATA) {
            result = kind == SP_SLOT_EOF     ? SP_DIGEST_EOF
                     : kind == SP_SLOT_LIMIT ? SP_DIGEST_MORE
                                             : SP_DIGEST_FAIL;
            break;
        }
        if (EVP_DigestUpdate(d->ctx, p->ring + (size_t)slot * SP_PIPE_BLOCK, len) != 1) {
            evp_failed = 1;
            pthread_mutex_lock(&p->lock);
            p->stop = 1;
            pthread_cond_signal(&p->emptied);
            pthread_mutex_unlock(&p->lock);
            break;
        }
        *done += len;
        pthread_mutex_lock(&p->lock);
        p->full[slot] = 0;
        pthread_cond_signal(&p->emptied);
        pthread_mutex_unlock(&p->lock);
        slot = (slot + 1) % SP_RING_SLOTS;
    }

    pthread_join(thread, NULL);
    pthread_cond_destroy(&p->emptied);
    pthread_cond_destroy(&p->filled);
    pthread_mutex_destroy(&p->lock);
    if (evp_failed)
        sp_digest_fail(err, 0);
    else if (result == SP_DIGEST_FAIL)
        sp_digest_fail(err, sys_errno);
    return result;
}

static int sp_cpu_count(void)
{
#ifdef _SC_NPROCESSORS_ONLN
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 && n < INT_MAX ? (int)n : 1;
#else
    return 1;
#endif
}

/* Is fd a regular file with at least SP_PIPE_MIN bytes (and as much allowed by limit) left
 * after the read position? Also tells the kernel the file is read sequentially. */
static int sp_worth_a_reader(int fd, long long offset, unsigned long long limit)
{
    struct stat st;
    long long pos = offset;

    if (limit < (unsigned long long)SP_PIPE_MIN || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        return 0;
    if (pos < 0) {
        off_t cur = lseek(fd, 0, SEEK_CUR);
        if (cur < 0)
            return 0;
        pos = (long long)cur;
    }
#ifdef POSIX_FADV_SEQUENTIAL
    (void)posix_fadvise(fd, (off_t)pos, 0, POSIX_FADV_SEQUENTIAL); /* advice only */
#endif
    if ((long long)st.st_size - pos < SP_PIPE_MIN)
        return 0;
    return sp_cpu_count() > 1;
}

int sp_digest_update_fd(sp_digest *d, int fd, long long offset, unsigned long long limit,
                        unsigned long long *done, sp_err *err)
{
    *done = 0;
    ERR_clear_error();
    if (d->finished || fd < 0) {
        sp_digest_fail(err, d->finished ? EINVAL : EBADF);
        return SP_DIGEST_FAIL;
    }
    if (d->ring == NULL) {
        d->ring = (unsigned char *)malloc(SP_RING_SLOTS * SP_PIPE_BLOCK);
        if (d->ring == NULL) {
            sp_digest_fail(err, ENOMEM);
            return SP_DIGEST_FAIL;
        }
    }
    if (sp_worth_a_reader(fd, offset, limit)) {
        sp_pipe p;
        pthread_t thread;

        memset(&p, 0, sizeof p);
        p.fd = fd;
        p.offset = offset;
        p.limit = limit;
        p.ring = d->ring;
        if (sp_pipe_start(&p, &thread))
            return sp_update_fd_piped(d, &p, thread, done, err);
    }
    return sp_update_fd_plain(d, fd, offset, limit, done, err);
}

#endif /* POSIX */
