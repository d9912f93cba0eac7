/* sp_ctx.c - SSL_CTX helpers that are easier in C than through the FFI. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

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
 * A step's callbacks into Python (SNI, key log) run with the lock held: a change of that same
 * context from such a callback would wait for itself, so sp_ctx_config_lock refuses it
 * (SP_CTX_IN_HANDSHAKE), and a read lock this thread already holds is not taken again
 * (current_step: POSIX and Windows rwlocks may deadlock on a recursive read lock once a writer
 * waits). A sealed context never changes (sp_ctx_config_lock refuses), so its steps take no
 * lock at all. */
typedef struct ctx_guard {
    CRYPTO_RWLOCK *lock;
    int sealed;    /* set under the write lock; read without it (sp_flag_get) */
    int keylog;    /* read without the lock by the key-log callback (sp_flag_get) */
    unsigned char tag[8]; /* random, this context's part of its session id contexts */
} ctx_guard;

static int guard_index = -1;
static int guard_made;

/* The steps this thread is inside, innermost first (a callback may open a connection of its
 * own: steps nest). */
static SP_THREAD_LOCAL sp_step *current_step;

static void free_guard(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    ctx_guard *g = ptr;
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    if (g != NULL) {
        CRYPTO_THREAD_lock_free(g->lock);
        free(g);
    }
}

static int make_guard_index(void)
{
    guard_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, free_guard);
    return guard_index >= 0;
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
    g->lock = CRYPTO_THREAD_lock_new();
    if (g->lock == NULL || RAND_bytes(g->tag, (int)sizeof g->tag) != 1
        || !SSL_CTX_set_ex_data(ctx, guard_index, g)) {
        free_guard(NULL, g, NULL, 0, 0, NULL);
        return 0;
    }
    return 1;
}

/* Does this thread hold ctx's read lock (a step it is inside)? */
static int held_here(const SSL_CTX *ctx)
{
    const sp_step *st;
    for (st = current_step; st != NULL; st = st->outer)
        if (st->locked == ctx)
            return 1;
    return 0;
}

/* The guard whose read lock a reader must take, or NULL: none (a context sp_ctx_new did not
 * make, a sealed one) or already held by this thread. */
static ctx_guard *guard_to_read(const SSL_CTX *ctx)
{
    ctx_guard *g = guard_of(ctx);
    if (g == NULL || sp_flag_get(&g->sealed) || held_here(ctx))
        return NULL;
    return g;
}

int sp_ctx_config_lock(SSL_CTX *ctx)
{
    ctx_guard *g = guard_of(ctx);
    if (g == NULL)
        return -1;
    if (held_here(ctx))
        return sp_flag_get(&g->sealed) ? 0 : SP_CTX_IN_HANDSHAKE;
    if (!CRYPTO_THREAD_write_lock(g->lock))
        return -1;
    if (g->sealed) {
        CRYPTO_THREAD_unlock(g->lock);
        return 0;
    }
    return 1;
}

void sp_ctx_config_unlock(SSL_CTX *ctx)
{
    CRYPTO_THREAD_unlock(guard_of(ctx)->lock);
}

void sp_ctx_seal(SSL_CTX *ctx)
{
    ctx_guard *g = guard_of(ctx);
    if (g == NULL)
        return;
    if (held_here(ctx)) { /* (from a callback of its own handshake: no change is in progress) */
        sp_flag_set(&g->sealed, 1);
    } else if (CRYPTO_THREAD_write_lock(g->lock)) {
        sp_flag_set(&g->sealed, 1);
        CRYPTO_THREAD_unlock(g->lock);
    }
}

SSL *sp_ctx_new_ssl(SSL_CTX *ctx)
{
    ctx_guard *g = guard_to_read(ctx);
    SSL *ssl;
    if (g == NULL)
        return SSL_new(ctx);
    if (!CRYPTO_THREAD_read_lock(g->lock))
        return NULL;
    ssl = SSL_new(ctx);
    CRYPTO_THREAD_unlock(g->lock);
    return ssl;
}

void sp_ctx_step_begin(SSL *ssl, sp_step *st)
{
    SSL_CTX *ctx = SSL_get_SSL_CTX(ssl);
    ctx_guard *g = guard_to_read(ctx);
    st->outer = current_step;
    st->locked = NULL;
    /* (a lock that cannot be taken, a pthread error, leaves the step unguarded, as before) */
    if (g != NULL && CRYPTO_THREAD_read_lock(g->lock))
        st->locked = ctx;
    current_step = st;
}

void sp_ctx_step_end(sp_step *st)
{
    if (st->locked != NULL)
        CRYPTO_THREAD_unlock(guard_of(st->locked)->lock);
    current_step = st->outer;
}

int sp_ctx_step_needed(SSL *ssl)
{
    /* A handshake in progress, or TLS 1.2, where a renegotiation may start inside a read.
     * (TLS 1.3's post-handshake messages read no context state that a change frees.) */
    return SSL_in_init(ssl) || SSL_version(ssl) < TLS1_3_VERSION;
}

int sp_ctx_switch_ssl(SSL *ssl, SSL_CTX *to)
{
    sp_step *st = current_step;
    ctx_guard *g;
    int ok;
    /* Inside a step (the SNI callback): the rest of it reads `to`, not the old context. */
    if (st != NULL && st->locked == SSL_get_SSL_CTX(ssl) && st->locked != to) {
        CRYPTO_THREAD_unlock(guard_of(st->locked)->lock);
        st->locked = NULL;
    }
    g = guard_to_read(to);
    if (g == NULL)
        return SSL_set_SSL_CTX(ssl, to) != NULL;
    if (!CRYPTO_THREAD_read_lock(g->lock))
        return 0;
    ok = SSL_set_SSL_CTX(ssl, to) != NULL;
    if (st != NULL && st->locked == NULL)
        st->locked = to; /* (released by sp_ctx_step_end) */
    else
        CRYPTO_THREAD_unlock(g->lock);
    return ok;
}

/* A server resumes a session only under the session id context it was made under: make that
 * say which context (its random tag) and which client-certificate policy (the verify flags),
 * so that a session of a client that was not asked for a certificate, or was verified against
 * other roots, is never resumed where the policy demands a verified one: after the context's
 * ssl_set_verify, or after an SNI switch to a context that verifies clients. A server that
 * checks the client's name (host_tag: a digest of it) resumes only sessions made for that
 * name. */
int sp_ssl_set_session_id_context(SSL *ssl, int verify_flags, const unsigned char *host_tag)
{
    unsigned char sid[8 + sizeof ((ctx_guard *)0)->tag + 1 + SP_HOST_TAG_LEN];
    size_t len = 8 + sizeof ((ctx_guard *)0)->tag + 1;
    ctx_guard *g = guard_of(SSL_get_SSL_CTX(ssl));
    memcpy(sid, "sslports", 8);
    if (g != NULL)
        memcpy(sid + 8, g->tag, sizeof g->tag);
    else
        memset(sid + 8, 0, sizeof g->tag);
    sid[len - 1] = (unsigned char)(verify_flags & 0xff);
    if (host_tag != NULL) {
        memcpy(sid + len, host_tag, SP_HOST_TAG_LEN);
        len += SP_HOST_TAG_LEN;
    }
    return SSL_set_session_id_context(ssl, sid, (unsigned int)len);
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
    if (is_server)
        sp_ctx_remember_end_point(ctx);
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
    if (g != NULL && !CRYPTO_THREAD_read_lock(g->lock))
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    policy = SSL_CTX_get_ex_data(ctx, alpn_index);
    if (policy != NULL && policy->len > 0) {
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
        CRYPTO_THREAD_unlock(g->lock);
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

EVP_PKEY *sp_load_private_key(const unsigned char *data, size_t len, int der, int rsa_only,
                              const char *password, sp_err *err)
{
    BIO *bio;
    EVP_PKEY *key = NULL;
    sp_err_reset(err);
    ERR_clear_error();
    if (len > 0x7fffffff)
        return NULL;
    bio = BIO_new_mem_buf(data, (int)len);
    if (bio == NULL) {
        sp_err_drain(err);
        return NULL;
    }
    if (der) {
        key = d2i_PrivateKey_bio(bio, NULL);
        if (key != NULL && rsa_only && EVP_PKEY_base_id(key) != EVP_PKEY_RSA) {
            EVP_PKEY_free(key);
            key = NULL;
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
            if (!rsa_only || EVP_PKEY_base_id(key) == EVP_PKEY_RSA)
                break;
            EVP_PKEY_free(key);
            key = NULL;
        }
    }
    BIO_free(bio);
    if (key == NULL)
        sp_err_drain(err);
    else
        ERR_clear_error();
    return key;
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
        cert = PEM_read_bio_X509(bio, NULL, NULL, NULL);
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

int sp_ctx_load_client_ca_file(SSL_CTX *ctx, const char *path, sp_err *err)
{
    STACK_OF(X509_NAME) *names;
    sp_err_reset(err);
    ERR_clear_error();
    names = SSL_load_client_CA_file(path);
    if (names == NULL) {
        sp_err_drain(err);
        return 0;
    }
    SSL_CTX_set_client_CA_list(ctx, names); /* takes ownership */
    return 1;
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
