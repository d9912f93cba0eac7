/* sp_session.c - a client context's session cache, so that ssl_connect resumes by itself.
 *
 * One entry per peer key ("host:port", sp_session_key), holding the resumable sessions a
 * server gave connections to that peer: the connection's new-session callback stores each as
 * soon as OpenSSL hands it over (TLS 1.3: each ticket, after the handshake; TLS 1.2: during
 * it), and the next connection to that peer looks one up when it is set up. Both happen in C,
 * so neither a connect nor a close runs any Python for it.
 *
 * A TLS 1.3 ticket is used once (RFC 8446 C.4): it travels in the clear, so a ticket offered
 * again would link the connections that offer it for anyone watching. A lookup takes the
 * newest ticket out of the entry, which keeps the last SP_TICKETS_PER_PEER (a server gives two
 * per full handshake and one per resumption, OpenSSL's defaults; a few cover connections
 * opened together). A TLS 1.2 session (an id or a ticket the server may renew) stays, shared,
 * until a newer one replaces it. When the server does not resume the session offered, the
 * cache forgets every session of that peer (sp_session_forget): they are as old or older, and
 * the server's (a restart, new ticket keys, a changed configuration) would decline them too,
 * each time in the clear; an OpenSSL server that declines a ticket does not even send new
 * ones, so a client that went on offering old tickets would not resume again before they
 * ran out.
 *
 * The cache hangs off the SSL_CTX (ex_data) and dies with it. The session objects are shared
 * with the connections (sp_conn.c keep_new_session): a connection that fails for real marks
 * its session unresumable (SSL_CTX_remove_session) and makes the cache forget every session
 * of its peer.
 * Entries are searched linearly by a hash first: at most SP_SESSION_CACHE_SIZE of them, a few
 * hundred integer compares beside a handshake. One mutex guards the table; nothing waits
 * while holding it.
 *
 * fork() from one thread while another is inside a cache (a lookup, a new ticket) would give
 * the child a table that may be half updated and a lock that stays taken (its holder does not
 * exist there): the child's first connect with that context would wait forever. So every cache
 * is on a list, and fork handlers take every cache's lock before the fork (briefly: nothing
 * waits while holding one) and release them after it, in both processes.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sp.h"

typedef struct {
    char *key;              /* NULL: a free slot */
    uint32_t hash;
    unsigned long long used; /* the cache's clock when last stored or found */
    int n;                   /* sessions held, oldest first: TLS 1.3 tickets, or one TLS 1.2 */
    SSL_SESSION *sessions[SP_TICKETS_PER_PEER];
} cache_entry;

typedef struct session_cache {
    sp_mutex lock;
    struct session_cache *prev, *next; /* every cache (the fork handlers' list) */
    unsigned long long clock;
    /* Bumped by sp_ctx_forget_sessions: a connection set up before (under the old policy)
     * neither resumes nor files anything afterwards (sp_session_lookup, sp_session_store). */
    unsigned long long epoch;
    cache_entry entries[SP_SESSION_CACHE_SIZE];
} session_cache;

static int cache_index = -1;
static int cache_made;

#ifndef _WIN32
static pthread_mutex_t caches_lock = PTHREAD_MUTEX_INITIALIZER;
static session_cache *caches;

static void lock_caches(void)
{
    session_cache *cache;
    pthread_mutex_lock(&caches_lock);
    for (cache = caches; cache != NULL; cache = cache->next)
        sp_mutex_lock(&cache->lock);
}

static void unlock_caches(void)
{
    session_cache *cache;
    for (cache = caches; cache != NULL; cache = cache->next)
        sp_mutex_unlock(&cache->lock);
    pthread_mutex_unlock(&caches_lock);
}

static void enlist(session_cache *cache)
{
    pthread_mutex_lock(&caches_lock);
    cache->next = caches;
    if (caches != NULL)
        caches->prev = cache;
    caches = cache;
    pthread_mutex_unlock(&caches_lock);
}

static void delist(session_cache *cache)
{
    pthread_mutex_lock(&caches_lock);
    if (cache->prev != NULL)
        cache->prev->next = cache->next;
    else if (caches == cache)
        caches = cache->next;
    if (cache->next != NULL)
        cache->next->prev = cache->prev;
    pthread_mutex_unlock(&caches_lock);
}
#else /* (no fork) */
static void enlist(session_cache *cache) { (void)cache; }
static void delist(session_cache *cache) { (void)cache; }
#endif

static void clear_entry(cache_entry *e)
{
    int i;
    free(e->key);
    for (i = 0; i < e->n; i++)
        SSL_SESSION_free(e->sessions[i]);
    memset(e, 0, sizeof *e);
}

/* A TLS 1.3 ticket, which a lookup takes out (see the top). */
static int single_use(const SSL_SESSION *s)
{
    return SSL_SESSION_get_protocol_version(s) >= TLS1_3_VERSION;
}

/* Take e's session i out of it (cache lock held); the caller owns its reference. */
static SSL_SESSION *take_out(cache_entry *e, int i)
{
    SSL_SESSION *s = e->sessions[i];
    memmove(&e->sessions[i], &e->sessions[i + 1], (size_t)(e->n - i - 1) * sizeof s);
    e->sessions[--e->n] = NULL;
    return s;
}

static void free_cache(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    session_cache *cache = ptr;
    size_t i;
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    if (cache == NULL)
        return;
    delist(cache);
    for (i = 0; i < SP_SESSION_CACHE_SIZE; i++)
        clear_entry(&cache->entries[i]);
    sp_mutex_destroy(&cache->lock);
    free(cache);
}

static int make_cache_index(void)
{
#ifndef _WIN32
    static int fork_handlers; /* (installed once: sp_once runs this again after a failure) */
    /* (on failure, ENOMEM, there is no cache yet: connects are full handshakes meanwhile) */
    if (!fork_handlers && pthread_atfork(lock_caches, unlock_caches, unlock_caches) != 0)
        return 0;
    fork_handlers = 1;
#endif
    cache_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, free_cache);
    return cache_index >= 0;
}

/* The ex_data index the caches hang off, made once; 0 when OpenSSL cannot make one (yet). */
static int have_cache_index(void)
{
    return sp_once(&cache_made, make_cache_index);
}

static session_cache *cache_of(SSL_CTX *ctx)
{
    return have_cache_index() ? SSL_CTX_get_ex_data(ctx, cache_index) : NULL;
}

int sp_session_cache_attach(SSL_CTX *ctx)
{
    session_cache *cache;
    if (!have_cache_index())
        return 0;
    if (SSL_CTX_get_ex_data(ctx, cache_index) != NULL)
        return 1;
    cache = calloc(1, sizeof *cache);
    if (cache == NULL)
        return 0;
    sp_mutex_init(&cache->lock);
    enlist(cache);
    if (!SSL_CTX_set_ex_data(ctx, cache_index, cache)) {
        ERR_clear_error();
        free_cache(NULL, cache, NULL, 0, 0, NULL);
        return 0;
    }
    return 1;
}

unsigned long long sp_ctx_forget_sessions(SSL_CTX *ctx)
{
    session_cache *cache = cache_of(ctx);
    unsigned long long epoch;
    size_t i;
    if (cache == NULL)
        return 0;
    sp_mutex_lock(&cache->lock);
    for (i = 0; i < SP_SESSION_CACHE_SIZE; i++)
        clear_entry(&cache->entries[i]);
    epoch = ++cache->epoch;
    sp_mutex_unlock(&cache->lock);
    return epoch;
}

char *sp_session_key(const char *host, int port)
{
    size_t len = strlen(host), i;
    char *key = malloc(len + 16);
    if (key == NULL)
        return NULL;
    for (i = 0; i < len; i++)
        key[i] = (char)tolower((unsigned char)host[i]);
    snprintf(key + len, 16, ":%d", port);
    return key;
}

static uint32_t hash_key(const char *key) /* FNV-1a */
{
    uint32_t h = 2166136261u;
    for (; *key; key++)
        h = (h ^ (unsigned char)*key) * 16777619u;
    return h;
}

/* The entry for key, or NULL (cache lock held). */
static cache_entry *find(session_cache *cache, const char *key, uint32_t hash)
{
    size_t i;
    for (i = 0; i < SP_SESSION_CACHE_SIZE; i++) {
        cache_entry *e = &cache->entries[i];
        if (e->key != NULL && e->hash == hash && strcmp(e->key, key) == 0)
            return e;
    }
    return NULL;
}

SSL_SESSION *sp_session_lookup(SSL_CTX *ctx, const char *key, unsigned long long epoch)
{
    session_cache *cache = cache_of(ctx);
    cache_entry *e = NULL;
    SSL_SESSION *s = NULL;
    if (cache == NULL)
        return NULL;
    sp_mutex_lock(&cache->lock);
    if (epoch == cache->epoch) /* (else: set up under a policy the context has since changed) */
        e = find(cache, key, hash_key(key));
    /* (the newest first; one that a connection which used it failed on goes) */
    while (e != NULL && e->n > 0 && !SSL_SESSION_is_resumable(e->sessions[e->n - 1]))
        SSL_SESSION_free(take_out(e, e->n - 1));
    if (e != NULL && e->n > 0) {
        SSL_SESSION *newest = e->sessions[e->n - 1];
        if (single_use(newest))
            s = take_out(e, e->n - 1);
        else if (SSL_SESSION_up_ref(newest))
            s = newest;
        e->used = ++cache->clock;
    }
    if (e != NULL && e->n == 0)
        clear_entry(e);
    sp_mutex_unlock(&cache->lock);
    return s;
}

void sp_session_store(SSL_CTX *ctx, const char *key, unsigned long long epoch,
                      SSL_SESSION *session)
{
    session_cache *cache = cache_of(ctx);
    uint32_t hash = hash_key(key);
    size_t key_size = strlen(key) + 1;
    cache_entry *e;
    char *copy;
    if (cache == NULL || !SSL_SESSION_up_ref(session))
        return;
    sp_mutex_lock(&cache->lock);
    if (epoch != cache->epoch) { /* made under a policy the context has since changed */
        sp_mutex_unlock(&cache->lock);
        SSL_SESSION_free(session);
        return;
    }
    e = find(cache, key, hash);
    if (e != NULL) { /* the same peer: a ticket joins the tickets, else it replaces all */
        if (!single_use(session) || (e->n > 0 && !single_use(e->sessions[0])))
            while (e->n > 0)
                SSL_SESSION_free(take_out(e, e->n - 1));
        if (e->n == SP_TICKETS_PER_PEER)
            SSL_SESSION_free(take_out(e, 0)); /* the oldest */
        e->sessions[e->n++] = session;
    } else if ((copy = malloc(key_size)) == NULL) {
        SSL_SESSION_free(session); /* out of memory: not cached, the next connect is full */
    } else {
        size_t i;
        memcpy(copy, key, key_size);
        e = &cache->entries[0];
        for (i = 0; i < SP_SESSION_CACHE_SIZE && e->key != NULL; i++) /* a free slot, else */
            if (cache->entries[i].key == NULL || cache->entries[i].used < e->used)
                e = &cache->entries[i]; /* the least recently used */
        clear_entry(e);
        e->key = copy;
        e->hash = hash;
        e->sessions[0] = session;
        e->n = 1;
    }
    if (e != NULL)
        e->used = ++cache->clock;
    sp_mutex_unlock(&cache->lock);
}

void sp_session_forget(SSL_CTX *ctx, const char *key, unsigned long long epoch)
{
    session_cache *cache = cache_of(ctx);
    cache_entry *e = NULL;
    if (cache == NULL)
        return;
    sp_mutex_lock(&cache->lock);
    if (epoch == cache->epoch) /* (else the sessions are of a policy newer than its own) */
        e = find(cache, key, hash_key(key));
    if (e != NULL)
        clear_entry(e);
    sp_mutex_unlock(&cache->lock);
}
