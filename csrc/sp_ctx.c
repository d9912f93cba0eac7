/* sp_ctx.c - SSL_CTX helpers that are easier in C than through the FFI. */
#ifndef _WIN32
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* pthread_rwlock_t under -std=c99 */
#endif
#if defined(__APPLE__) && !defined(_DARWIN_C_SOURCE)
#define _DARWIN_C_SOURCE 1 /* (else _POSIX_C_SOURCE hides MSG_DONTWAIT: compat.h) */
#endif
#endif
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>

#include "sp.h"

typedef struct alpn_policy {
    unsigned char *wire;
    size_t len;
    int allow_no_match;
} alpn_policy;

static int alpn_index = -1;
static int alpn_made;

static void free_alpn(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    alpn_policy *policy = ptr;
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    if (policy != NULL) {
        free(policy->wire);
        free(policy);
    }
}

static int make_alpn_index(void)
{
    alpn_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, free_alpn);
    return alpn_index >= 0;
}

static int get_alpn_index(void)
{
    return sp_once(&alpn_made, make_alpn_index) ? alpn_index : -1;
}


/* ---- configuration guard --------------------------------------------------------------
 * OpenSSL does not allow an SSL_CTX to change while SSL_new / SSL_set_SSL_CTX copy from it
 * (certificate, key, DH parameters, groups, CA names) or while handshakes read it (the cipher
 * lists, the ALPN policy, the key-log callback). An unsealed context may be changed while it
 * serves, so each context has a readers-writer lock:
 * - every change runs under its write lock (sp_ctx_config_lock; Python takes it around its
 *   OpenSSL calls, always with the GIL released while waiting: a CFFI call);
 * - readers: SSL_new (sp_ctx_new_ssl), and every OpenSSL call that may run a handshake step
 *   (sp_ctx_step_begin / _end around SSL_do_handshake, and around SSL_read_ex / SSL_write_ex
 *   while a handshake may run in them: sp_ctx_step_needed). A step never waits for the
 *   network (the pump waits between calls), so a change waits for the steps in progress,
 *   never for a whole handshake. A connection has no cipher lists of its own: the step reads
 *   its context's, which a change of ciphers frees; the lock is why that is safe;
 * - the SNI switch (SSL_set_SSL_CTX, inside a step) moves the step's hold from the old
 *   context to the new one, whose lists the rest of the step reads: a thread holds at most
 *   one of these locks per step, so two contexts' locks never wait for each other;
 * - the key-log callback, once installed, stays installed (OpenSSL reads the pointer twice:
 *   a NULL in between would be called) and a flag decides whether a line is passed on.
 * - three callback pointers are stored without the lock, so that a callback may set them for
 *   its own context: client_hello_cb and ext.servername_cb (sp_ctx_enable_sni) and
 *   keylog_callback (sp_ctx_enable_keylog). Each store only turns a NULL into our one
 *   function, or writes the same function again; a handshake loads the pointer, tests it and
 *   loads it again to call it, so it sees NULL (the change is not yet its own) or our
 *   function, never a torn or freed value. Which user callback runs, if any, is read under
 *   the GIL at the call (sni.py) and from the key-log flag.
 * A step's callbacks into Python (SNI, key log) run with the lock held: a change of that same
 * context from such a callback would wait for itself, so sp_ctx_config_lock refuses it
 * (SP_CTX_IN_HANDSHAKE), and a read lock this thread already holds is not taken again
 * (current_step: POSIX and Windows rwlocks may deadlock on a recursive read lock once a writer
 * waits). A change of another context from such a callback waits ~2 s at most
 * (write_lock_within): the other context's readers may be callbacks waiting for this one's.
 * A sealed context never changes (sp_ctx_config_lock refuses), so its steps take no
 * lock at all.
 * After a fork (POSIX): a lock that another thread of the parent held, or was about to take,
 * stays taken in the child, where that thread does not exist. `users` counts the threads
 * between wanting the lock and releasing it (never fewer than hold it); the fork handler
 * marks each context that had any `orphaned`. The child then treats it as sealed for its
 * readers (no lock: nothing can change it) and refuses changes (SP_CTX_FORKED), where they
 * waited forever, with no way to interrupt them. */
/* A readers-writer lock (the guards' own: OpenSSL's CRYPTO_RWLOCK has no try); each of these
 * is 1 when taken. */
#ifdef _WIN32
typedef SRWLOCK sp_rwlock;
#define sp_rwlock_init(l) (InitializeSRWLock(l), 1)
#define sp_rwlock_destroy(l) ((void)(l))
#define sp_rwlock_read(l) (AcquireSRWLockShared(l), 1)
#define sp_rwlock_write(l) (AcquireSRWLockExclusive(l), 1)
#define sp_rwlock_try_write(l) (TryAcquireSRWLockExclusive(l) != 0)
#define sp_rwlock_unlock_read(l) ReleaseSRWLockShared(l)
#define sp_rwlock_unlock_write(l) ReleaseSRWLockExclusive(l)
#else
typedef pthread_rwlock_t sp_rwlock;
#define sp_rwlock_init(l) (pthread_rwlock_init((l), NULL) == 0)
#define sp_rwlock_destroy(l) pthread_rwlock_destroy(l)
#define sp_rwlock_read(l) (pthread_rwlock_rdlock(l) == 0)
#define sp_rwlock_write(l) (pthread_rwlock_wrlock(l) == 0)
#define sp_rwlock_try_write(l) (pthread_rwlock_trywrlock(l) == 0)
#define sp_rwlock_unlock_read(l) pthread_rwlock_unlock(l)
#define sp_rwlock_unlock_write(l) pthread_rwlock_unlock(l)
#endif

typedef struct ctx_guard {
    sp_rwlock lock;
    int users;     /* threads taking or holding `lock` (sp_counter_bump / _drop) */
    int orphaned;  /* set by the fork handler in a child: `lock` may never be released */
    struct ctx_guard *prev, *next; /* every guard (the fork handlers' list) */
    int sealed;    /* set under the write lock; read without it (sp_flag_get) */
    int keylog;    /* read without the lock by the key-log callback (sp_flag_get) */
    unsigned keys_alone; /* key_slot_bit()s of keys loaded before any certificate of their
                          * type (under the write lock: sp_ctx_use_private_key / _chain_pem) */
    unsigned char tag[8]; /* random, this context's part of its session id contexts */
    int identity;         /* ... and this: sp_ctx_identity_changed (read with sp_flag_get) */
    char *groups; /* the key exchange groups sp_ctx_set_groups set (under the write lock), or
                   * NULL: what SSL_new copies (OpenSSL's default, or the configuration's) */
    int sni;      /* sp_ctx_enable_sni ran: its SNI callback is called (sp_flag_get) */
} ctx_guard;

static int guard_index = -1;
static int guard_made;

/* The steps this thread is inside, innermost first (a callback may open a connection of its
 * own: steps nest). */
static SP_THREAD_LOCAL sp_step *current_step;

#ifndef _WIN32
static pthread_mutex_t guards_lock = PTHREAD_MUTEX_INITIALIZER;
static ctx_guard *guards;

static void lock_guards(void)
{
    pthread_mutex_lock(&guards_lock);
}

static void unlock_guards(void)
{
    pthread_mutex_unlock(&guards_lock);
}

/* In the child, the one thread left: a guard that another thread was using is orphaned. */
static void orphan_used_guards(void)
{
    ctx_guard *g;
    for (g = guards; g != NULL; g = g->next)
        if (g->users > 0)
            g->orphaned = 1;
    pthread_mutex_unlock(&guards_lock);
}

static void enlist(ctx_guard *g)
{
    pthread_mutex_lock(&guards_lock);
    g->next = guards;
    if (guards != NULL)
        guards->prev = g;
    guards = g;
    pthread_mutex_unlock(&guards_lock);
}

static void delist(ctx_guard *g)
{
    pthread_mutex_lock(&guards_lock);
    if (g->prev != NULL)
        g->prev->next = g->next;
    else if (guards == g)
        guards = g->next;
    if (g->next != NULL)
        g->next->prev = g->prev;
    pthread_mutex_unlock(&guards_lock);
}
#else /* (no fork) */
static void enlist(ctx_guard *g) { (void)g; }
static void delist(ctx_guard *g) { (void)g; }
#endif

static void free_guard(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    ctx_guard *g = ptr;
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    if (g != NULL) {
        delist(g);
        sp_rwlock_destroy(&g->lock);
        free(g->groups);
        free(g);
    }
}

static int make_guard_index(void)
{
#ifndef _WIN32
    static int fork_handlers; /* (installed once: sp_once runs this again after a failure) */
    if (!fork_handlers && pthread_atfork(lock_guards, unlock_guards, orphan_used_guards) != 0)
        return 0;
    fork_handlers = 1;
#endif
    guard_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, free_guard);
    return guard_index >= 0;
}

/* The guard's lock, counted in `users` from before it is asked for to after it is released. */
static int take_lock(ctx_guard *g, int write)
{
    sp_counter_bump(&g->users);
    if (write ? sp_rwlock_write(&g->lock) : sp_rwlock_read(&g->lock))
        return 1;
    sp_counter_drop(&g->users);
    return 0;
}

static int read_lock(ctx_guard *g)
{
    return take_lock(g, 0);
}

static int write_lock(ctx_guard *g)
{
    return take_lock(g, 1);
}

static void unlock_read(ctx_guard *g)
{
    sp_rwlock_unlock_read(&g->lock);
    sp_counter_drop(&g->users);
}

static void unlock_write(ctx_guard *g)
{
    sp_rwlock_unlock_write(&g->lock);
    sp_counter_drop(&g->users);
}

static ctx_guard *guard_of(const SSL_CTX *ctx)
{
    return guard_index < 0 ? NULL : SSL_CTX_get_ex_data(ctx, guard_index);
}

static int attach_guard(SSL_CTX *ctx)
{
    ctx_guard *g;
    if (!sp_once(&guard_made, make_guard_index))
        return 0;
    g = calloc(1, sizeof *g);
    if (g == NULL)
        return 0;
    if (!sp_rwlock_init(&g->lock)) {
        free(g);
        return 0;
    }
    if (RAND_bytes(g->tag, (int)sizeof g->tag) != 1 || !SSL_CTX_set_ex_data(ctx, guard_index, g)) {
        sp_rwlock_destroy(&g->lock);
        free(g);
        return 0;
    }
    enlist(g);
    return 1;
}

/* Does this thread hold ctx's read lock (a step it is inside), or with NULL any context's
 * (inside a step, from a callback)? */
static int held_here(const SSL_CTX *ctx)
{
    const sp_step *st;
    for (st = current_step; st != NULL; st = st->outer)
        if (st->locked != NULL && (ctx == NULL || st->locked == ctx))
            return 1;
    return 0;
}

/* The guard whose read lock a reader must take, or NULL: none (a context sp_ctx_new did not
 * make, a sealed one) or already held by this thread. */
static ctx_guard *guard_to_read(const SSL_CTX *ctx)
{
    ctx_guard *g = guard_of(ctx);
    if (g == NULL || sp_flag_get(&g->sealed) || g->orphaned || held_here(ctx))
        return NULL;
    return g;
}

/* The write lock, taken by a thread that holds another context's read lock (a callback of
 * its handshake) only if it comes within SP_CALLBACK_WRITE_MS, tried every millisecond or so:
 * the readers it waits for may be inside callbacks of their own that wait for the read lock
 * this thread holds (two listeners' SNI callbacks that reload each other's contexts), and
 * both would wait for ever. 1: taken; SP_CTX_BUSY: not within the time; 0: an error. */
#define SP_CALLBACK_WRITE_MS 2000

static int write_lock_within(ctx_guard *g)
{
    long long end;
    if (!held_here(NULL))
        return write_lock(g);
    sp_counter_bump(&g->users);
    end = sp_mono_ms() + SP_CALLBACK_WRITE_MS; /* (a clock: Windows' Sleep(1) is ~15 ms) */
    for (;;) {
        if (sp_rwlock_try_write(&g->lock))
            return 1;
        if (sp_mono_ms() >= end)
            break;
        sp_sleep_ms(1);
    }
    sp_counter_drop(&g->users);
    return SP_CTX_BUSY;
}

int sp_ctx_config_lock(SSL_CTX *ctx)
{
    ctx_guard *g = guard_of(ctx);
    if (g == NULL)
        return -1;
    if (held_here(ctx))
        return sp_flag_get(&g->sealed) ? 0 : SP_CTX_IN_HANDSHAKE;
    if (g->orphaned)
        return sp_flag_get(&g->sealed) ? 0 : SP_CTX_FORKED;
    switch (write_lock_within(g)) {
    case 1:
        break;
    case SP_CTX_BUSY:
        return SP_CTX_BUSY;
    default:
        return -1;
    }
    if (g->sealed) {
        unlock_write(g);
        return 0;
    }
    return 1;
}

void sp_ctx_config_unlock(SSL_CTX *ctx)
{
    unlock_write(guard_of(ctx));
}

void sp_ctx_seal(SSL_CTX *ctx)
{
    ctx_guard *g = guard_of(ctx);
    if (g == NULL)
        return;
    /* (from a callback of its own handshake, or orphaned: no change can be in progress) */
    if (held_here(ctx) || g->orphaned) {
        sp_flag_set(&g->sealed, 1);
    } else if (write_lock_within(g) == 1) {
        sp_flag_set(&g->sealed, 1);
        unlock_write(g);
    } /* (else from a callback, and other handshakes held it for SP_CALLBACK_WRITE_MS: the C
       * flag stays clear, as the try may have failed on a change in progress, and its steps go
       * on taking the read lock; sealed all the same, as Python refuses every change now) */
}

SSL *sp_ctx_new_ssl(SSL_CTX *ctx)
{
    ctx_guard *g = guard_to_read(ctx);
    SSL *ssl;
    if (g == NULL)
        return SSL_new(ctx);
    if (!read_lock(g))
        return NULL;
    ssl = SSL_new(ctx);
    unlock_read(g);
    return ssl;
}

void sp_ctx_step_begin(SSL *ssl, sp_step *st)
{
    SSL_CTX *ctx = SSL_get_SSL_CTX(ssl);
    ctx_guard *g = guard_to_read(ctx);
    st->outer = current_step;
    st->locked = NULL;
    /* (a lock that cannot be taken, a pthread error, leaves the step unguarded, as before) */
    if (g != NULL && read_lock(g))
        st->locked = ctx;
    current_step = st;
}

void sp_ctx_step_end(sp_step *st)
{
    if (st->locked != NULL)
        unlock_read(guard_of(st->locked));
    current_step = st->outer;
}

int sp_ctx_step_needed(SSL *ssl)
{
    /* A handshake in progress, or TLS 1.2, where a renegotiation may start inside a read.
     * (TLS 1.3's post-handshake messages read no context state that a change frees.) */
    return SSL_in_init(ssl) || SSL_version(ssl) < TLS1_3_VERSION;
}

/* The groups are kept on the context's guard, not set on the SSL_CTX: SSL_new copies a
 * context's groups into each SSL, and SSL_set_SSL_CTX (the SNI switch) does not copy them
 * again, nor can a connection's list be read back to restore the one the context switched to
 * would have given (OpenSSL's default, or a system policy's Groups). So every server SSL keeps
 * what SSL_new gave it until its ClientHello callback, after any switch, applies the final
 * context's own list (sp_ctx_apply_groups): the same list in each case, and never another
 * context's. The list is checked on a probe SSL first, so a list this OpenSSL refuses changes
 * nothing (the caller holds the context's write lock). */
int sp_ctx_set_groups(SSL_CTX *ctx, const char *list)
{
    ctx_guard *g = guard_of(ctx);
    SSL *probe;
    char *copy;
    int ok;
    if (g == NULL)
        return 0;
    probe = SSL_new(ctx);
    if (probe == NULL)
        return 0;
    ok = SSL_set1_groups_list(probe, list) == 1;
    SSL_free(probe);
    if (!ok)
        return 0;
    copy = malloc(strlen(list) + 1);
    if (copy == NULL)
        return 0;
    strcpy(copy, list);
    free(g->groups);
    g->groups = copy;
    return 1;
}

int sp_ctx_apply_groups(SSL *ssl)
{
    const ctx_guard *g = guard_of(SSL_get_SSL_CTX(ssl));
    /* (inside the handshake's step, which holds this context's read lock, or it is sealed:
     * the list cannot change under us) */
    return g == NULL || g->groups == NULL || SSL_set1_groups_list(ssl, g->groups) == 1;
}

void sp_ctx_note_sni(SSL_CTX *ctx)
{
    ctx_guard *g = guard_of(ctx);
    if (g != NULL)
        sp_flag_set(&g->sni, 1);
}

int sp_ctx_sni_wanted(const SSL_CTX *ctx)
{
    const ctx_guard *g = guard_of(ctx);
    return g == NULL || sp_flag_get(&g->sni);
}

int sp_ctx_switch_ssl(SSL *ssl, SSL_CTX *to)
{
    sp_step *st = current_step;
    ctx_guard *g;
    int ok;
    /* Inside a step (the SNI callback): the rest of it reads `to`, not the old context. */
    if (st != NULL && st->locked == SSL_get_SSL_CTX(ssl) && st->locked != to) {
        unlock_read(guard_of(st->locked));
        st->locked = NULL;
    }
    g = guard_to_read(to);
    if (g == NULL)
        return SSL_set_SSL_CTX(ssl, to) != NULL;
    if (!read_lock(g))
        return 0;
    ok = SSL_set_SSL_CTX(ssl, to) != NULL;
    if (st != NULL && st->locked == NULL)
        st->locked = to; /* (released by sp_ctx_step_end) */
    else
        unlock_read(g);
    return ok;
}

/* A server resumes a session only under the session id context it was made under: make that
 * say which context (its random tag and identity count), and which client-certificate policy
 * (the verify flags), so that a session of a client that was not asked for a certificate, or
 * was verified against other roots, is never resumed where the policy demands a verified one:
 * after the context's ssl_set_verify, or after an SNI switch to a context that verifies
 * clients; nor one made before the context's certificate, key or roots changed (a resumed
 * session shows the client the certificate it was made with): `identity`, the count the
 * connection read before its SSL took the certificate (sp_ctx_identity), also when a TLS 1.2
 * renegotiation makes a session long after. A server that checks the client's name
 * (host_tag: a digest of it) resumes only sessions made for that name. */
int sp_ssl_set_sid(SSL *ssl, int verify_flags, unsigned identity, const unsigned char *host_tag)
{
    unsigned char sid[8 + sizeof ((ctx_guard *)0)->tag + 4 + 1 + SP_HOST_TAG_LEN];
    size_t len = 8 + sizeof ((ctx_guard *)0)->tag + 4 + 1;
    ctx_guard *g = guard_of(SSL_get_SSL_CTX(ssl));
    memcpy(sid, "sslports", 8);
    if (g != NULL)
        memcpy(sid + 8, g->tag, sizeof g->tag);
    else
        memset(sid + 8, 0, sizeof g->tag);
    sid[8 + sizeof g->tag] = (unsigned char)(identity >> 24);
    sid[9 + sizeof g->tag] = (unsigned char)(identity >> 16);
    sid[10 + sizeof g->tag] = (unsigned char)(identity >> 8);
    sid[11 + sizeof g->tag] = (unsigned char)identity;
    sid[len - 1] = (unsigned char)(verify_flags & 0xff);
    if (host_tag != NULL) {
        memcpy(sid + len, host_tag, SP_HOST_TAG_LEN);
        len += SP_HOST_TAG_LEN;
    }
    return SSL_set_session_id_context(ssl, sid, (unsigned int)len);
}

int sp_ssl_set_session_id_context(SSL *ssl, int verify_flags, const unsigned char *host_tag)
{
    return sp_ssl_set_sid(ssl, verify_flags, sp_ctx_identity(SSL_get_SSL_CTX(ssl)), host_tag);
}

unsigned sp_ctx_identity(const SSL_CTX *ctx)
{
    ctx_guard *g = guard_of(ctx);
    return g != NULL ? (unsigned)sp_flag_get(&g->identity) : 0;
}

void sp_ctx_identity_changed(SSL_CTX *ctx)
{
    ctx_guard *g = guard_of(ctx);
    if (g != NULL)
        sp_counter_bump(&g->identity);
}

int sp_ctx_keylog_wanted(const SSL_CTX *ctx)
{
    ctx_guard *g = guard_of(ctx);
    return g == NULL || sp_flag_get(&g->keylog);
}

void sp_ctx_set_keylog_flag(SSL_CTX *ctx, int on)
{
    ctx_guard *g = guard_of(ctx);
    if (g != NULL)
        sp_flag_set(&g->keylog, on);
}

static int no_prompt(char *buf, int size, int rwflag, void *u)
{
    const char *password = u;
    size_t len;
    (void)rwflag;
    if (password == NULL)
        return 0; /* never fall back to a TTY prompt */
    len = strlen(password);
    if (len > (size_t)size)
        return -1;
    memcpy(buf, password, len);
    return (int)len;
}

SSL_CTX *sp_ctx_new(int is_server, sp_err *err)
{
    SSL_CTX *ctx;
    sp_err_reset(err);
    ERR_clear_error();
    if (get_alpn_index() < 0) {
        sp_err_drain(err);
        return NULL;
    }
    ctx = SSL_CTX_new(is_server ? TLS_server_method() : TLS_client_method());
    if (ctx == NULL || !attach_guard(ctx)) {
        sp_err_drain(err);
        if (err->nerrs == 0) /* (our allocations, and some of OpenSSL's, queue no error) */
            err->sys_errno = ENOMEM;
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    /* Whatever OpenSSL reads through the context (a PEM block with a Proc-Type: ENCRYPTED
     * header) must never fall back to PEM_def_callback, which prompts on the terminal, or
     * reads stdin when there is none, with signals held off. */
    SSL_CTX_set_default_passwd_cb(ctx, no_prompt);
    SSL_CTX_set_default_passwd_cb_userdata(ctx, NULL);
    if (is_server) {
        sp_ctx_remember_end_point(ctx);
        sp_ctx_watch_hello(ctx); /* (the groups: sp_ctx_apply_groups) */
    }
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (!SSL_CTX_set_min_proto_version(ctx, TLS1_VERSION)) {
        sp_err_drain(err);
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

void sp_ctx_free(SSL_CTX *ctx)
{
    SSL_CTX_free(ctx);
}

int sp_ctx_set_dh_pem(SSL_CTX *ctx, const unsigned char *pem, size_t len, sp_err *err)
{
    BIO *bio;
    int ok = 0;
    sp_err_reset(err);
    ERR_clear_error();
    if (len > 0x7fffffff)
        return 0;
    bio = BIO_new_mem_buf(pem, (int)len);
    if (bio != NULL) {
#if SP_OPENSSL3
        EVP_PKEY *params = PEM_read_bio_Parameters(bio, NULL);
        if (params != NULL && EVP_PKEY_is_a(params, "DH")) {
            ok = SSL_CTX_set0_tmp_dh_pkey(ctx, params);
            if (!ok)
                EVP_PKEY_free(params);
        } else {
            EVP_PKEY_free(params);
        }
#else
        DH *dh = PEM_read_bio_DHparams(bio, NULL, NULL, NULL);
        if (dh != NULL)
            ok = (int)SSL_CTX_set_tmp_dh(ctx, dh);
        DH_free(dh);
#endif
        BIO_free(bio);
    }
    if (!ok)
        sp_err_drain(err);
    return ok;
}

static int select_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    SSL_CTX *ctx = SSL_get_SSL_CTX(ssl);
    ctx_guard *g = guard_to_read(ctx); /* (NULL inside a step: it holds the lock already) */
    alpn_policy *policy;
    size_t i;
    int result = SSL_TLSEXT_ERR_NOACK;
    (void)arg;
    /* (under the context's read lock: ssl_set_server_alpn replaces and frees the policy under
     * its write lock, sp_ctx_set_server_alpn) */
    if (g != NULL && !read_lock(g))
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    policy = SSL_CTX_get_ex_data(ctx, alpn_index);
    if (policy != NULL) {
        /* (an empty list matches nothing: refused unless allow_no_match, as Racket does) */
        result = policy->allow_no_match ? SSL_TLSEXT_ERR_NOACK : SSL_TLSEXT_ERR_ALERT_FATAL;
        /* Server preference: the first of our names that the client also offers (*out points
         * into `in`, so nothing of the policy is used after the lock is released). */
        for (i = 0; i < policy->len && result != SSL_TLSEXT_ERR_OK; i += 1u + policy->wire[i]) {
            unsigned int j;
            unsigned char n = policy->wire[i];
            for (j = 0; j < inlen; j += 1u + in[j]) {
                if (in[j] == n && j + 1u + n <= inlen
                    && memcmp(in + j + 1, policy->wire + i + 1, n) == 0) {
                    *out = in + j + 1;
                    *outlen = n;
                    result = SSL_TLSEXT_ERR_OK;
                    break;
                }
            }
        }
    }
    if (g != NULL)
        unlock_read(g);
    return result;
}

int sp_ctx_set_server_alpn(SSL_CTX *ctx, const unsigned char *wire, size_t len,
                           int allow_no_match)
{
    alpn_policy *policy;
    alpn_policy *old;
    int ok;
    if (get_alpn_index() < 0)
        return 0;
    policy = calloc(1, sizeof *policy);
    if (policy == NULL)
        return 0;
    if (len > 0) {
        policy->wire = malloc(len);
        if (policy->wire == NULL) {
            free(policy);
            return 0;
        }
        memcpy(policy->wire, wire, len);
    }
    policy->len = len;
    policy->allow_no_match = allow_no_match;
    old = SSL_CTX_get_ex_data(ctx, alpn_index);
    ok = SSL_CTX_set_ex_data(ctx, alpn_index, policy);
    /* (the caller holds the context's write lock: no handshake can still read the old one) */
    free_alpn(NULL, ok ? old : policy, NULL, 0, 0, NULL);
    if (!ok)
        return 0;
    SSL_CTX_set_alpn_select_cb(ctx, select_alpn, NULL);
    return 1;
}

/* An RSA key in Racket's sense (PEM_read_bio_RSAPrivateKey also returns RSA-PSS keys). */
static int is_rsa(const EVP_PKEY *key)
{
    int id = EVP_PKEY_base_id(key);
    return id == EVP_PKEY_RSA || id == EVP_PKEY_RSA_PSS;
}

/* Whether a private key's two halves belong together: it signs a probe, and its public half
 * must verify the signature. OpenSSL's match against the certificate compares public halves
 * only: a key whose private half is corrupt (a flipped bit, an edited file) loaded, and every
 * handshake then failed at the peer ("bad signature"). (Not EVP_PKEY_pairwise_check, which
 * tests an RSA key's primes: 28 ms per RSA-2048 load, against ~1 ms for a signature.) A key
 * that cannot sign the probe (a hash its parameters forbid, a provider's key) is not judged. */
static int key_halves_match(EVP_PKEY *key)
{
    static const unsigned char probe[] = "sslports: the private half signs what the public "
                                         "half verifies";
    int id = EVP_PKEY_base_id(key);
    const EVP_MD *md = id == EVP_PKEY_ED25519 || id == EVP_PKEY_ED448 ? NULL : EVP_sha256();
    EVP_MD_CTX *mc = EVP_MD_CTX_new();
    int size = EVP_PKEY_size(key);
    unsigned char *sig = size > 0 ? malloc((size_t)size) : NULL;
    size_t siglen = size > 0 ? (size_t)size : 0;
    int verdict = -1; /* (not judged) */
    ERR_set_mark();
    if (mc != NULL && sig != NULL && EVP_DigestSignInit(mc, NULL, md, NULL, key) == 1
        && EVP_DigestSign(mc, sig, &siglen, probe, sizeof probe) == 1
        && EVP_MD_CTX_reset(mc) == 1 && EVP_DigestVerifyInit(mc, NULL, md, NULL, key) == 1)
        verdict = EVP_DigestVerify(mc, sig, siglen, probe, sizeof probe);
    ERR_pop_to_mark();
    EVP_MD_CTX_free(mc);
    free(sig);
    return verdict != 0;
}

/* Whether a failed read of a key (its last error `e`) found no further key block at all (no
 * block a decoder took: OpenSSL 3 says only "unsupported" or "no start line"), rather than a
 * key it could not read (a wrong password, a corrupt block). */
static int no_more_keys(unsigned long e, size_t len)
{
    return len == 0 /* (d2i says nothing, or "not enough data", by version) */
           || (ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE)
#if SP_OPENSSL3
           || (ERR_GET_LIB(e) == ERR_LIB_OSSL_DECODER && ERR_GET_REASON(e) == ERR_R_UNSUPPORTED)
#endif
        ;
}

EVP_PKEY *sp_load_private_key(const unsigned char *data, size_t len, int der, int rsa_only,
                              const char *password, sp_err *err)
{
    BIO *bio;
    EVP_PKEY *key = NULL;
    int skipped = 0;
    int encrypted = 0; /* SP_LOAD_ENCRYPTED / _BAD_PASSWORD for a DER key that is */
    sp_err_reset(err);
    ERR_clear_error();
    if (len > 0x7fffffff) {
        err->sys_errno = EFBIG;
        return NULL;
    }
    bio = BIO_new_mem_buf(data, (int)len);
    if (bio == NULL) {
        sp_err_drain(err);
        return NULL;
    }
    if (der) {
        key = d2i_PrivateKey_bio(bio, NULL);
        if (key == NULL) {
            /* An encrypted PKCS#8 key (EncryptedPrivateKeyInfo), which d2i_PrivateKey_bio
             * cannot decrypt: with the password, as PEM keys are. */
            const unsigned char *p = data;
            X509_SIG *p8;
            ERR_set_mark();
            p8 = d2i_X509_SIG(NULL, &p, (long)len);
            if (p8 == NULL) {
                ERR_pop_to_mark(); /* not that either: the first complaint stands */
            } else {
                ERR_clear_last_mark();
                ERR_clear_error(); /* (it is one: the first complaint is moot) */
                if (password == NULL) {
                    encrypted = SP_LOAD_ENCRYPTED;
                } else if (strlen(password) <= 0x7fffffff) {
                    PKCS8_PRIV_KEY_INFO *info =
                        PKCS8_decrypt(p8, password, (int)strlen(password));
                    if (info != NULL) {
                        key = EVP_PKCS82PKEY(info);
                        PKCS8_PRIV_KEY_INFO_free(info);
                    }
                    if (key == NULL)
                        encrypted = SP_LOAD_BAD_PASSWORD;
                }
                X509_SIG_free(p8);
            }
        }
        if (key != NULL && rsa_only && !is_rsa(key)) {
            EVP_PKEY_free(key);
            key = NULL;
            skipped = 1;
        }
    } else {
        /* PEM: walk the keys in order; rsa_only skips keys of other types. */
        for (;;) {
            ERR_set_mark();
            key = PEM_read_bio_PrivateKey(bio, NULL, no_prompt, (void *)password);
            if (key == NULL) {
                ERR_clear_last_mark(); /* keep the reason for the caller */
                break;
            }
            ERR_pop_to_mark();
            if (!rsa_only || is_rsa(key))
                break;
            EVP_PKEY_free(key);
            key = NULL;
            skipped = 1;
        }
    }
    BIO_free(bio);
    if (key == NULL && encrypted) {
        err->ssl_error = encrypted;
        sp_err_drain(err);
    } else if (key == NULL && skipped && (der || no_more_keys(ERR_peek_last_error(), len))) {
        /* The data held keys, none of them RSA: the end-of-data error says nothing useful.
         * (A key after the skipped ones that could not be read, an encrypted one without its
         * password say, is that failure, below.) */
        ERR_clear_error();
        err->ssl_error = SP_LOAD_NOT_RSA;
    } else if (key == NULL) {
        if (no_more_keys(ERR_peek_last_error(), len))
            err->ssl_error = SP_LOAD_NO_KEY;
        sp_err_drain(err);
    } else if (!key_halves_match(key)) { /* (here, not under the context's write lock) */
        EVP_PKEY_free(key);
        key = NULL;
        ERR_clear_error();
        err->ssl_error = SP_LOAD_KEY_BROKEN;
    } else {
        ERR_clear_error();
    }
    return key;
}

/* SSL_CTX_set_cipher_list changes the context before it finds that no TLS <= 1.2 suite matched
 * (OpenSSL 3: the list, and an @SECLEVEL the spec names): a rejected spec would leave a
 * context that refuses every TLS 1.2 peer, or one at a lower security level. So the spec is
 * tried on a throwaway SSL first, which has its own copy of both, and given to the context
 * only once accepted; the rejection's reason is on the error queue either way. */
int sp_ctx_set_cipher_list(SSL_CTX *ctx, const char *spec)
{
    SSL *probe = SSL_new(ctx);
    int ok;
    if (probe == NULL)
        return 0;
    ok = SSL_set_cipher_list(probe, spec);
    SSL_free(probe);
    return ok && SSL_CTX_set_cipher_list(ctx, spec);
}

int sp_ctx_add_pem_roots(SSL_CTX *ctx, const unsigned char *pem, size_t len)
{
    X509_STORE *store = SSL_CTX_get_cert_store(ctx);
    BIO *bio;
    X509 *cert;
    int added = 0;
    ERR_clear_error();
    if (store == NULL || len > 0x7fffffff)
        return 0;
    bio = BIO_new_mem_buf(pem, (int)len);
    if (bio == NULL)
        return 0;
    for (;;) {
        size_t left = BIO_ctrl_pending(bio);
        cert = PEM_read_bio_X509(bio, NULL, no_prompt, NULL); /* (never the terminal) */
        if (cert == NULL) {
            /* The end ("no start line"), or a block that is not a certificate OpenSSL can
             * read (a system store may hold one): skip it and go on with the next, as long as
             * the read got past it. */
            if (ERR_GET_REASON(ERR_peek_last_error()) == PEM_R_NO_START_LINE
                || BIO_ctrl_pending(bio) >= left)
                break;
            ERR_clear_error();
            continue;
        }
        if (X509_STORE_add_cert(store, cert))
            added++;
        X509_free(cert);
    }
    BIO_free(bio);
    ERR_clear_error();
    return added > 0;
}

/* ---- credentials and trusted roots from bytes -------------------------------------------
 * Python reads every file itself (a regular file, of bounded size: context.py _read_file), so
 * nothing here opens a path: no FIFO can block and no device can be read without end. Every
 * PEM read passes no_prompt, and each load parses everything before it changes the context:
 * a load that fails leaves the context as it was. */

/* One bit per OpenSSL certificate slot, as told by the key's type. */
static unsigned key_slot_bit(const EVP_PKEY *key)
{
    switch (key == NULL ? EVP_PKEY_NONE : EVP_PKEY_base_id(key)) {
    case EVP_PKEY_RSA:
        return 1u;
    case EVP_PKEY_RSA_PSS:
        return 2u;
    case EVP_PKEY_EC:
        return 4u;
    case EVP_PKEY_ED25519:
        return 8u;
    case EVP_PKEY_ED448:
        return 16u;
    case EVP_PKEY_DSA:
        return 32u;
    default:
        return 64u;
    }
}

/* Is the last queued error PEM's "no start line" (the end of the data, no more blocks)? It is
 * then taken off the queue. A read that failed with nothing queued is not the end: OpenSSL
 * fails some allocations in PEM_read_bio_ex without a word, and taking that for the end cut
 * a chain (or a CA list) short without an error. */
static int at_pem_end(void)
{
    unsigned long e = ERR_peek_last_error();
    if (ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE) {
        ERR_clear_error();
        return 1;
    }
    return 0;
}

/* The failure of a load into err: OpenSSL's queue, or, when it gave no reason (some of its
 * allocations fail without one), ENOMEM. */
static void load_failed(sp_err *err)
{
    if (ERR_peek_error() == 0 && err->sys_errno == 0)
        err->sys_errno = ENOMEM;
    sp_err_drain(err);
}

/* The end of a load: rc 1 (done: the queue cleared), 0 (failed: load_failed) or an SP_LOAD_*
 * code (failed for that reason: err->ssl_error, with what OpenSSL queued). 1 if done. */
static int load_end(int rc, sp_err *err)
{
    if (rc == 1) {
        ERR_clear_error();
    } else if (rc == 0) {
        load_failed(err);
    } else {
        sp_err_drain(err);
        err->ssl_error = rc;
    }
    return rc == 1;
}

static BIO *mem_bio(const unsigned char *data, size_t len, sp_err *err)
{
    BIO *bio;
    if (len > 0x7fffffff) {
        err->sys_errno = EFBIG;
        return NULL;
    }
    bio = BIO_new_mem_buf(data, (int)len);
    if (bio == NULL && ERR_peek_error() == 0)
        err->sys_errno = ENOMEM;
    return bio;
}

/* Every certificate of a PEM blob, in order (the first read as X509_AUX, as
 * SSL_CTX_use_certificate_chain_file reads the leaf). NULL on failure: a block that is not a
 * readable certificate, an allocation (errors queued, or none: load_failed), or no block at
 * all (*none set, queue empty). */
static STACK_OF(X509) *read_pem_certs(BIO *bio, int *none)
{
    STACK_OF(X509) *certs = sk_X509_new_null();
    *none = 0;
    if (certs == NULL)
        return NULL;
    for (;;) {
        X509 *x = sk_X509_num(certs) == 0 ? PEM_read_bio_X509_AUX(bio, NULL, no_prompt, NULL)
                                           : PEM_read_bio_X509(bio, NULL, no_prompt, NULL);
        if (x == NULL) {
            if (!at_pem_end())
                break;
            if (sk_X509_num(certs) > 0)
                return certs;
            *none = 1;
            break;
        }
        if (!sk_X509_push(certs, x)) {
            X509_free(x);
            break;
        }
    }
    sk_X509_pop_free(certs, X509_free);
    return NULL;
}

/* Every certificate of a PEM blob (read_pem_certs over a memory BIO of it). */
static STACK_OF(X509) *pem_certs(const unsigned char *pem, size_t len, sp_err *err, int *none)
{
    BIO *bio = mem_bio(pem, len, err);
    STACK_OF(X509) *certs;
    *none = 0;
    if (bio == NULL)
        return NULL;
    certs = read_pem_certs(bio, none);
    BIO_free(bio);
    return certs;
}

int sp_ctx_use_chain_pem(SSL_CTX *ctx, const unsigned char *pem, size_t len, sp_err *err)
{
    ctx_guard *g = guard_of(ctx);
    STACK_OF(X509) *certs = NULL;
    X509 *leaf = NULL;
    SSL *probe = NULL;
    unsigned bit;
    int none;
    int rc = 0;
    sp_err_reset(err);
    ERR_clear_error();
    certs = pem_certs(pem, len, err, &none);
    if (certs == NULL) {
        if (none)
            rc = SP_LOAD_NOTHING;
        goto done;
    }
    leaf = sk_X509_shift(certs); /* (certs: the rest of the chain) */
    /* A leaf whose extensions cannot be read (a malformed SAN) is refused whatever the context
     * holds: SSL_use_certificate below tells only through the error queue, which it clears
     * itself when a key is already there (so the same file loaded or not, by load order). */
    if (X509_get_extension_flags(leaf) & EXFLAG_INVALID) {
        rc = SP_LOAD_BAD_EXTENSIONS;
        goto done;
    }
    bit = key_slot_bit(X509_get0_pubkey(leaf));
    /* A dry run on a copy of the context's certificates (SSL_new copies them): the security
     * level checks, the slot, whether the key already there goes with the new leaf. */
    probe = SSL_new(ctx);
    if (probe == NULL || SSL_use_certificate(probe, leaf) != 1 || ERR_peek_error() != 0
        || !SSL_set1_chain(probe, certs))
        goto done;
    /* A key loaded before any certificate of its type (keys_alone) must go with this leaf:
     * OpenSSL would drop a key that does not match without a word, or keep a key of another
     * type waiting for a certificate that may never come; either way the context would serve
     * nothing, and the cause would show only at the first handshake. (Strict on purpose: a
     * context with keys of two types loads each chain before its key. A key that came with a
     * certificate of its own is dropped on purpose: a new chain replaces that identity, and
     * its key is loaded next.) */
    if (g != NULL && g->keys_alone != 0 && SSL_get_privatekey(probe) == NULL) {
        rc = SP_LOAD_MISMATCH;
        goto done;
    }
    /* Now the context, in one step that either fails before it changes anything or cannot
     * fail (the copy passed every check: only an allocation can fail). Not
     * SSL_CTX_use_certificate then SSL_CTX_set1_chain: when the copy of the chain failed to
     * allocate, the load failed with the new leaf already served, with the old chain and
     * without its key (SSL_CTX_use_certificate also checks the slot's key against the leaf
     * again, and drops it without an error whenever that check fails). */
    if (SSL_get_privatekey(probe) != NULL) { /* (the slot's key, which goes with the leaf) */
        if (SSL_CTX_use_cert_and_key(ctx, leaf, SSL_get_privatekey(probe), certs, 1) != 1)
            goto done;
    } else {
        STACK_OF(X509) *chain = X509_chain_up_ref(certs); /* (the one allocation, first) */
        if (chain == NULL)
            goto done;
        if (SSL_CTX_use_certificate(ctx, leaf) != 1 || !SSL_CTX_set0_chain(ctx, chain)) {
            sk_X509_pop_free(chain, X509_free);
            goto done;
        }
    }
    if (g != NULL)
        g->keys_alone &= ~bit;
    rc = 1;
done:
    load_end(rc, err);
    SSL_free(probe);
    X509_free(leaf);
    sk_X509_pop_free(certs, X509_free);
    return rc == 1;
}

int sp_ctx_use_private_key(SSL_CTX *ctx, EVP_PKEY *key, int need_certificate, sp_err *err)
{
    ctx_guard *g = guard_of(ctx);
    SSL *probe;
    int have_cert;
    int rc = 0;
    sp_err_reset(err);
    ERR_clear_error();
    /* The dry run (see sp_ctx_use_chain_pem): SSL_CTX_use_PrivateKey refuses a key that does
     * not match the certificate of its type, but takes one of a type without a certificate. */
    probe = SSL_new(ctx);
    if (probe == NULL)
        goto done;
    if (SSL_use_PrivateKey(probe, key) != 1) {
        unsigned long e = ERR_peek_last_error();
        if (ERR_GET_LIB(e) == ERR_LIB_X509
            && (ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH
                || ERR_GET_REASON(e) == X509_R_KEY_TYPE_MISMATCH))
            rc = SP_LOAD_MISMATCH;
        goto done;
    }
    have_cert = SSL_get_certificate(probe) != NULL; /* (the key's own slot now) */
    if (need_certificate && !have_cert) {
        rc = SP_LOAD_MISMATCH;
        goto done;
    }
    if (SSL_CTX_use_PrivateKey(ctx, key) != 1)
        goto done;
    if (g != NULL) {
        if (have_cert)
            g->keys_alone &= ~key_slot_bit(key);
        else
            g->keys_alone |= key_slot_bit(key);
    }
    rc = 1;
done:
    SSL_free(probe);
    return load_end(rc, err);
}

/* A new X509_OBJECT holding x (or crl) pushed onto objs, whose room is reserved; 1 (also
 * when both are NULL), or 0 when out of memory. */
static int push_object(STACK_OF(X509_OBJECT) *objs, X509 *x, X509_CRL *crl)
{
    X509_OBJECT *obj;
    if (x == NULL && crl == NULL)
        return 1;
    obj = X509_OBJECT_new();
    if (obj == NULL
        || !(x != NULL ? X509_OBJECT_set1_X509(obj, x) : X509_OBJECT_set1_X509_CRL(obj, crl))
        || sk_X509_OBJECT_push(objs, obj) <= 0) {
        X509_OBJECT_free(obj);
        return 0;
    }
    return 1;
}

/* Trusted roots (and CRLs) all or nothing. X509_STORE_add_cert / _add_crl allocate as they
 * add (an X509_OBJECT, room in the store's stack of objects), and a store has no removal: an
 * allocation that failed at the third root of a bundle left the first two trusted. So every
 * allocation comes first: an X509_OBJECT for each item (X509_OBJECT_set1_*), and room in the
 * store's stack for all of them (sk_X509_OBJECT_reserve: the next pushes cannot fail); then,
 * under the store's lock, each one not already there is pushed, as x509_store_add does
 * (X509_STORE_get0_objects is the store's own stack; X509_OBJECT_retrieve_match sorts it
 * before it searches, as a lookup does). Nothing there can fail. */
int sp_ctx_load_verify_pem(SSL_CTX *ctx, const unsigned char *pem, size_t len, sp_err *err)
{
    X509_STORE *store = SSL_CTX_get_cert_store(ctx);
    STACK_OF(X509_INFO) *infos = NULL;
    STACK_OF(X509_OBJECT) *objs = NULL;
    STACK_OF(X509_OBJECT) *all;
    BIO *bio;
    int i;
    int found = 0;
    int ok = 0;
    sp_err_reset(err);
    ERR_clear_error();
    bio = mem_bio(pem, len, err);
    if (bio == NULL || store == NULL)
        goto done;
    /* (all or nothing: a block it cannot read fails the whole file, as
     * X509_load_cert_crl_file does; encrypted keys in it are kept encrypted and ignored) */
    infos = PEM_X509_INFO_read_bio(bio, NULL, no_prompt, NULL);
    if (infos == NULL)
        goto done;
    for (i = 0; i < sk_X509_INFO_num(infos); i++) {
        X509_INFO *info = sk_X509_INFO_value(infos, i);
        found += (info->x509 != NULL) + (info->crl != NULL);
    }
    if (found == 0) {
        err->ssl_error = SP_LOAD_NOTHING;
        goto done;
    }
    objs = sk_X509_OBJECT_new_reserve(NULL, found);
    if (objs == NULL)
        goto done;
    for (i = 0; i < sk_X509_INFO_num(infos); i++) {
        X509_INFO *info = sk_X509_INFO_value(infos, i);
        if (!push_object(objs, info->x509, NULL) || !push_object(objs, NULL, info->crl))
            goto done;
    }
    if (!X509_STORE_lock(store))
        goto done;
    all = X509_STORE_get0_objects(store);
    if (all != NULL && sk_X509_OBJECT_reserve(all, found)) {
        for (i = 0; i < sk_X509_OBJECT_num(objs); i++) {
            X509_OBJECT *obj = sk_X509_OBJECT_value(objs, i);
            /* (a push into reserved room cannot fail) */
            if (X509_OBJECT_retrieve_match(all, obj) == NULL && sk_X509_OBJECT_push(all, obj) > 0)
                (void)sk_X509_OBJECT_set(objs, i, NULL); /* (the store's now) */
        }
        ok = 1;
    }
    X509_STORE_unlock(store);
done:
    load_end(ok ? 1 : err->ssl_error < 0 ? err->ssl_error : 0, err);
    sk_X509_OBJECT_pop_free(objs, X509_OBJECT_free);
    sk_X509_INFO_pop_free(infos, X509_INFO_free);
    BIO_free(bio);
    return ok;
}

/* (a name and where it is in the file: the CA list keeps the file's order) */
typedef struct name_at {
    const X509_NAME *name;
    int at;
} name_at;

static int cmp_name_at(const void *a, const void *b)
{
    const name_at *x = a;
    const name_at *y = b;
    int c = X509_NAME_cmp(x->name, y->name);
    return c != 0 ? c : (x->at > y->at) - (x->at < y->at);
}

int sp_ctx_load_client_ca_pem(SSL_CTX *ctx, const unsigned char *pem, size_t len, sp_err *err)
{
    STACK_OF(X509) *certs = NULL;
    STACK_OF(X509_NAME) *names = NULL;
    name_at *sorted = NULL;
    unsigned char *keep = NULL;
    int none;
    int n;
    int i;
    int ok = 0;
    sp_err_reset(err);
    ERR_clear_error();
    certs = pem_certs(pem, len, err, &none);
    if (certs == NULL) {
        if (none)
            err->ssl_error = SP_LOAD_NOTHING;
        goto done;
    }
    /* Each name once, where it first appears (as SSL_load_client_CA_file): sorted by name,
     * then by place, a name equal to the one before it is a repeat. */
    n = sk_X509_num(certs);
    sorted = malloc((size_t)n * sizeof *sorted);
    keep = malloc((size_t)n);
    names = sk_X509_NAME_new_null();
    if (sorted == NULL || keep == NULL || names == NULL) {
        err->sys_errno = ENOMEM;
        goto done;
    }
    for (i = 0; i < n; i++) {
        sorted[i].name = X509_get_subject_name(sk_X509_value(certs, i));
        sorted[i].at = i;
    }
    qsort(sorted, (size_t)n, sizeof *sorted, cmp_name_at);
    for (i = 0; i < n; i++)
        keep[sorted[i].at] = i == 0 || X509_NAME_cmp(sorted[i - 1].name, sorted[i].name) != 0;
    for (i = 0; i < n; i++) {
        X509_NAME *name;
        if (!keep[i])
            continue;
        name = X509_NAME_dup(X509_get_subject_name(sk_X509_value(certs, i)));
        if (name == NULL || !sk_X509_NAME_push(names, name)) {
            X509_NAME_free(name);
            goto done;
        }
    }
    SSL_CTX_set_client_CA_list(ctx, names); /* takes ownership */
    names = NULL;
    ok = 1;
done:
    load_end(ok ? 1 : err->ssl_error < 0 ? err->ssl_error : 0, err);
    sk_X509_NAME_pop_free(names, X509_NAME_free);
    free(keep);
    free(sorted);
    sk_X509_pop_free(certs, X509_free);
    return ok;
}

/* ---- one connection from a context --------------------------------------------------- */

/* The per-connection setup of ssl_connect / ssl_accept / the wrappers in one crossing: the
 * Python around a handshake runs cold (between two waits on the network), where every call
 * and every bytecode costs several times what it costs in a loop. */
sp_conn *sp_ctx_open_conn(SSL_CTX *ctx, int is_server, int fd, int verify_flags,
                          const char *host, int host_is_ip, int check_host,
                          const unsigned char *alpn, size_t alpn_len, const char *cache_host,
                          int cache_port, unsigned long long cache_epoch, sp_err *err,
                          size_t *failed_step)
{
    sp_conn *c;
    sp_err_reset(err);
    *failed_step = SP_SETUP_CONNECTION;
    c = sp_conn_new(ctx, is_server, fd, err);
    if (c == NULL)
        return NULL;
    sp_conn_set_verify(c, verify_flags);
    if (host != NULL && !sp_conn_set_host(c, host, host_is_ip, !is_server, check_host, err)) {
        *failed_step = SP_SETUP_HOSTNAME;
        sp_conn_free(c);
        return NULL;
    }
    if (alpn_len > 0) {
        ERR_clear_error();
        if (alpn_len > 0xffffu || SSL_set_alpn_protos(sp_conn_ssl(c), alpn, (unsigned)alpn_len)) {
            *failed_step = SP_SETUP_ALPN;
            sp_err_drain(err);
            sp_conn_free(c);
            return NULL;
        }
    }
    if (cache_host != NULL && !sp_conn_use_session_cache(c, cache_host, cache_port, cache_epoch)) {
        err->sys_errno = ENOMEM;
        sp_conn_free(c);
        return NULL;
    }
    return c;
}
