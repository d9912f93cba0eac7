/* sp_session.h - a client context's session cache: the newest resumable sessions per peer. */
#ifndef SP_SESSION_H
#define SP_SESSION_H

/* Most peers (host, port) a context remembers; the least recently used one goes first. */
#define SP_SESSION_CACHE_SIZE 256
/* Most TLS 1.3 tickets kept per peer (each is used once; the oldest goes first). */
#define SP_TICKETS_PER_PEER 4

/* Give a client context its cache (once; later calls do nothing). 0 when out of memory. */
int sp_session_cache_attach(SSL_CTX *ctx);
/* Forget every session of the context (its verification policy changed) and start a new
 * epoch: its number (0 for a context without a cache), which goes with the new policy. */
unsigned long long sp_ctx_forget_sessions(SSL_CTX *ctx);

/* The peer key a connection caches under: "host:port", the host in ASCII lower case (a port
 * has no ':', so the key is unambiguous). A malloc'd string, or NULL (out of memory). */
char *sp_session_key(const char *host, int port);
/* The newest session cached for `key` (a new reference; a TLS 1.3 ticket is taken out of
 * the cache, used once), or NULL: none resumable (one that a connection which used it failed
 * on is dropped); NULL too when the cache is no longer in `epoch` (the sessions were
 * forgotten since the caller read its verify policy). */
SSL_SESSION *sp_session_lookup(SSL_CTX *ctx, const char *key, unsigned long long epoch);
/* Cache `session` (which gains a reference) for `key`: a TLS 1.3 ticket beside the tickets
 * there (the oldest goes beyond SP_TICKETS_PER_PEER), else replacing all; nothing when
 * the sessions were forgotten since the connection's lookup (epoch): the connection was set
 * up under the old verification policy, and a resumed session is not verified again. */
void sp_session_store(SSL_CTX *ctx, const char *key, unsigned long long epoch,
                      SSL_SESSION *session);

/* Drop every session cached for `key`: the peer did not resume the one a connection offered
 * (it would decline the others too), or a connection to it failed for real; nothing when the
 * cache is no longer in `epoch` (the connection's, from before a policy change). */
void sp_session_forget(SSL_CTX *ctx, const char *key, unsigned long long epoch);

#endif /* SP_SESSION_H */
