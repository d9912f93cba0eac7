/* sp_session.h - a client context's session cache: the newest resumable session per peer. */
#ifndef SP_SESSION_H
#define SP_SESSION_H

/* Most peers (host, port) a context remembers; the least recently used one goes first. */
#define SP_SESSION_CACHE_SIZE 256

/* Give a client context its cache (once; later calls do nothing). 0 when out of memory. */
int sp_session_cache_attach(SSL_CTX *ctx);
/* Forget every session of the context (its verification policy changed). */
void sp_ctx_forget_sessions(SSL_CTX *ctx);

/* The peer key a connection caches under: "host:port", the host in ASCII lower case (a port
 * has no ':', so the key is unambiguous). A malloc'd string, or NULL (out of memory). */
char *sp_session_key(const char *host, int port);
/* The session cached for `key` (a new reference), or NULL: none, or no longer resumable (a
 * connection that used it failed), which is then dropped. */
SSL_SESSION *sp_session_lookup(SSL_CTX *ctx, const char *key);
/* Cache `session` (which gains a reference) for `key`, replacing the older one. */
void sp_session_store(SSL_CTX *ctx, const char *key, SSL_SESSION *session);

#endif /* SP_SESSION_H */
