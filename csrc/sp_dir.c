/* sp_dir.c - ("directory", path) verify sources: a hashed directory of trusted roots, looked up
 * as OpenSSL's by_dir (X509_LOOKUP_hash_dir) looks it up, but reading each file as context.py
 * _read_file reads one.
 *
 * A directory source is lazy: a verification that needs an issuer of subject S (not yet in
 * the store) reads <dir>/<hash of S>.0, .1, ... of each directory, in the order they were
 * added, stopping at the first suffix that is missing or cannot be read, adds every
 * certificate of those files to the store, and answers with the store's certificate of
 * subject S, if there is one now. by_dir reads those files with fopen(): a FIFO in the
 * directory blocked the handshake (inside a step: the GIL released, the context's read lock
 * held) until some writer came, and a link to a device (/dev/zero) was read without end.
 * Here a file is opened without waiting (O_NONBLOCK: a FIFO opens at once) and read only when
 * it is a regular file of at most SP_MAX_FILE_BYTES; anything else ends that directory's
 * sequence, as a file by_dir cannot load does. Everything else is by_dir's: the same names
 * (X509_NAME_hash_ex, "%08lx"), the certificates read as PEM_read_bio_X509_AUX reads them (a
 * "TRUSTED CERTIFICATE" keeps its trust settings), every file read again at each lookup
 * (by_dir remembers suffixes only for CRLs). CRLs (<hash>.rN) are not looked up: only a
 * verification with X509_V_FLAG_CRL_CHECK asks for them, and sslports never sets it.
 *
 * One lookup per store (the method is a process-wide singleton: X509_STORE_add_lookup returns
 * the store's existing lookup of it) holds the directories, under its own lock. The lookup runs
 * inside a handshake step: it never calls Python, and it leaves the error queue as it found it
 * (a file that does not load is not the handshake's error). */
#ifndef _WIN32
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* (O_CLOEXEC) */
#endif
#if defined(__APPLE__) && !defined(_DARWIN_C_SOURCE)
#define _DARWIN_C_SOURCE 1
#endif
#endif

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/types.h>

#include <openssl/pem.h>

#include "sp.h"

#ifdef _WIN32
#include <io.h>
typedef struct _stat64 sp_stat;
#define sp_open_file(path) _open((path), _O_RDONLY | _O_BINARY | _O_NOINHERIT)
#define sp_fstat(fd, st) _fstat64((fd), (st))
#define sp_read_file(fd, buf, n) _read((fd), (buf), (unsigned)(n))
#define sp_close_file(fd) _close(fd)
#define SP_IS_REGULAR(mode) (((mode) & _S_IFMT) == _S_IFREG)
#else
#include <unistd.h>
#ifndef O_CLOEXEC
#define O_CLOEXEC 0
#endif
typedef struct stat sp_stat;
#define sp_open_file(path) open((path), O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC)
#define sp_fstat(fd, st) fstat((fd), (st))
#define sp_read_file(fd, buf, n) read((fd), (buf), (n))
#define sp_close_file(fd) close(fd)
#define SP_IS_REGULAR(mode) S_ISREG(mode)
#endif

/* The largest file a lookup reads: context.py's MAX_FILE_BYTES. */
#define SP_MAX_FILE_BYTES (64L << 20)

#if SP_OPENSSL3
typedef const X509_NAME sp_lookup_name;
#else
typedef X509_NAME sp_lookup_name;
#endif

typedef struct dir_list {
    CRYPTO_RWLOCK *lock; /* dirs: added under the write lock, looked up under the read lock */
    char **dirs;
    size_t n, cap;
} dir_list;

static X509_LOOKUP_METHOD *dir_method;
static int dir_method_made;

static int dir_new(X509_LOOKUP *lu)
{
    dir_list *d = calloc(1, sizeof *d);
    if (d == NULL)
        return 0;
    d->lock = CRYPTO_THREAD_lock_new();
    if (d->lock == NULL || !X509_LOOKUP_set_method_data(lu, (char *)d)) {
        CRYPTO_THREAD_lock_free(d->lock);
        free(d);
        return 0;
    }
    return 1;
}

static void dir_free(X509_LOOKUP *lu)
{
    dir_list *d = (dir_list *)X509_LOOKUP_get_method_data(lu);
    size_t i;
    if (d == NULL)
        return;
    for (i = 0; i < d->n; i++)
        free(d->dirs[i]);
    free(d->dirs);
    CRYPTO_THREAD_lock_free(d->lock);
    free(d);
}

/* The contents of the regular file at `path` (at most SP_MAX_FILE_BYTES) in a memory BIO;
 * NULL for anything else: missing, not a regular file (a FIFO, a device, a directory), too
 * large, unreadable, or no memory. */
static BIO *read_regular_file(const char *path)
{
    unsigned char buf[16384];
    long total = 0;
    sp_stat st;
    BIO *bio = NULL;
    int fd = sp_open_file(path);
    if (fd < 0)
        return NULL;
    if (sp_fstat(fd, &st) != 0 || !SP_IS_REGULAR(st.st_mode) || st.st_size > SP_MAX_FILE_BYTES)
        goto done;
    bio = BIO_new(BIO_s_mem());
    if (bio == NULL)
        goto done;
    for (;;) {
        long n = (long)sp_read_file(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0)
            break;
        total += n;
        if (n < 0 || total > SP_MAX_FILE_BYTES /* (it grew while read) */
            || BIO_write(bio, buf, (int)n) != (int)n) {
            BIO_free(bio);
            bio = NULL;
            break;
        }
    }
done:
    sp_close_file(fd);
    return bio;
}

/* Add every certificate of the file at `path` to the store, as X509_load_cert_file does (PEM):
 * 1 when the file held at least one and all of them were added. */
static int load_cert_file(X509_STORE *store, const char *path)
{
    static char no_password[] = ""; /* (by_file's: no prompt; certificates are not encrypted) */
    BIO *bio = read_regular_file(path);
    int count = 0;
    if (bio == NULL)
        return 0;
    for (;;) {
        X509 *x = PEM_read_bio_X509_AUX(bio, NULL, NULL, no_password);
        int added;
        if (x == NULL) {
            unsigned long e = ERR_peek_last_error();
            if (count == 0 || ERR_GET_LIB(e) != ERR_LIB_PEM
                || ERR_GET_REASON(e) != PEM_R_NO_START_LINE)
                count = 0;
            break;
        }
        added = X509_STORE_add_cert(store, x);
        X509_free(x);
        if (!added) {
            count = 0;
            break;
        }
        count++;
    }
    BIO_free(bio);
    return count > 0;
}

/* The store's certificate of subject `name` into ret, as by_dir hands it back: the store's
 * own reference, which the caller (X509_STORE_CTX_get_by_subject) takes one of its own on.
 * (X509_OBJECT is opaque: X509_OBJECT_set1_X509 takes a reference, given back at once; the
 * store keeps the certificate alive, and never removes one.) */
static int answer(X509_STORE *store, sp_lookup_name *name, X509_OBJECT *ret)
{
    X509_OBJECT *obj;
    X509 *x = NULL;
    int ok;
    if (!X509_STORE_lock(store))
        return 0;
    obj = X509_OBJECT_retrieve_by_subject(X509_STORE_get0_objects(store), X509_LU_X509, name);
    if (obj != NULL)
        x = X509_OBJECT_get0_X509(obj);
    ok = x != NULL && X509_OBJECT_set1_X509(ret, x);
    X509_STORE_unlock(store);
    if (ok)
        X509_free(x);
    return ok;
}

static int dir_get_by_subject(X509_LOOKUP *lu, X509_LOOKUP_TYPE type, sp_lookup_name *name,
                              X509_OBJECT *ret)
{
    dir_list *d = (dir_list *)X509_LOOKUP_get_method_data(lu);
    X509_STORE *store = X509_LOOKUP_get_store(lu);
    char *path = NULL;
    size_t cap = 0;
    unsigned long hash;
    size_t i;
    int found = 0;
    if (type != X509_LU_X509 || d == NULL || store == NULL || name == NULL)
        return 0;
    ERR_set_mark();
#if SP_OPENSSL3
    {
        int ok = 0;
        hash = X509_NAME_hash_ex(name, NULL, NULL, &ok);
        if (!ok)
            goto end;
    }
#else
    hash = X509_NAME_hash(name);
#endif
    if (!CRYPTO_THREAD_read_lock(d->lock))
        goto end;
    for (i = 0; i < d->n && !found; i++) {
        /* <dir>/<8 hex digits>.<suffix> */
        size_t need = strlen(d->dirs[i]) + 1 + 8 + 1 + 11 + 1;
        int k;
        if (need > cap) {
            char *grown = realloc(path, need);
            if (grown == NULL)
                break;
            path = grown;
            cap = need;
        }
        for (k = 0; k < INT_MAX; k++) {
            snprintf(path, cap, "%s/%08lx.%d", d->dirs[i], hash & 0xffffffffUL, k);
            if (!load_cert_file(store, path))
                break;
        }
        found = answer(store, name, ret);
    }
    CRYPTO_THREAD_unlock(d->lock);
end:
    ERR_pop_to_mark();
    free(path);
    return found;
}

static int make_dir_method(void)
{
    X509_LOOKUP_METHOD *m = X509_LOOKUP_meth_new("sslports hashed directory");
    if (m == NULL || !X509_LOOKUP_meth_set_new_item(m, dir_new)
        || !X509_LOOKUP_meth_set_free(m, dir_free)
        || !X509_LOOKUP_meth_set_get_by_subject(m, dir_get_by_subject)) {
        X509_LOOKUP_meth_free(m);
        return 0;
    }
    dir_method = m;
    return 1;
}

int sp_ctx_add_verify_dir(SSL_CTX *ctx, const char *dir)
{
    X509_STORE *store = SSL_CTX_get_cert_store(ctx);
    X509_LOOKUP *lu;
    dir_list *d;
    char *copy;
    size_t i;
    int ok = 1;
    if (store == NULL || !sp_once(&dir_method_made, make_dir_method))
        return 0;
    lu = X509_STORE_add_lookup(store, dir_method); /* (the store's own, after the first) */
    d = lu == NULL ? NULL : (dir_list *)X509_LOOKUP_get_method_data(lu);
    if (d == NULL || !CRYPTO_THREAD_write_lock(d->lock))
        return 0;
    for (i = 0; i < d->n; i++) /* (by_dir, too, adds a directory once) */
        if (strcmp(d->dirs[i], dir) == 0)
            goto done;
    if (d->n == d->cap) {
        size_t cap = d->cap == 0 ? 4 : 2 * d->cap;
        char **grown = realloc(d->dirs, cap * sizeof *grown);
        if (grown == NULL) {
            ok = 0;
            goto done;
        }
        d->dirs = grown;
        d->cap = cap;
    }
    copy = malloc(strlen(dir) + 1);
    if (copy == NULL) {
        ok = 0;
        goto done;
    }
    strcpy(copy, dir);
    d->dirs[d->n++] = copy;
done:
    CRYPTO_THREAD_unlock(d->lock);
    return ok;
}
