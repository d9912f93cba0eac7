/* sp_session.h - a client context's session cache: the newest resumable session per peer. */
#ifndef SP_SESSION_H
#define SP_SESSION_H

/* Most peers (host, port) a context remembers; the least recently used one goes first. */
#define SP_SESSION_CACHE_SIZE 256

/* Give a client context its cache (once; later calls do nothing). 0 when out of memory. */
int sp_session_cache_attach(SSL_CTX *ctx);
/* Forget every session of the context (its verification policy changed) and start a new
 * epoch: its number (0 for a context without a cache), which goes with the new policy. */
unsigned long long sp_ctx_forget_sessions(SSL_CTX *ctx);

/* The peer key a connection caches under: "host:port", the host in ASCII lower case (a port
 * has no ':', so the key is unambiguous). A malloc'd string, or NULL (out of memory). */
char *sp_session_key(const char *host, int port);
/* The session cached for `key` (a new reference), or NULL: none, or no longer resumable (a
 * connection that used it failed), which is then dropped; NULL too when the cache is no
 * longer in `epoch` (the sessions were forgotten since the caller read its verify policy). */
SSL_SESSION *sp_session_lookup(SSL_CTX *ctx, const char *key, unsigned long long epoch);
/* Cache `session` (which gains a reference) for `key`, replacing the older one; nothing when
 * the sessions were forgotten since the connection's lookup (epoch): the connection was set
 * up under the old verification policy, and a resumed session is not verified again. */
void sp_session_store(SSL_CTX *ctx, const char *key, unsigned long long epoch,
                      SSL_SESSION *session);

#endif /* SP_SESSION_H */
