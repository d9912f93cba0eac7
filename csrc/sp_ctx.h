/* sp_ctx.h - SSL_CTX helpers: creation with our defaults, DH parameters, server ALPN policy. */
#ifndef SP_CTX_H
#define SP_CTX_H

/* A fresh SSL_CTX for a client or server with sslports' defaults (no compression, release
 * buffers, no client-initiated renegotiation, session tickets on). NULL on failure. */
SSL_CTX *sp_ctx_new(int is_server, sp_err *err);
void sp_ctx_free(SSL_CTX *ctx);
/* Finite-field DH parameters from PEM bytes; 1 on success. */
int sp_ctx_set_dh_pem(SSL_CTX *ctx, const unsigned char *pem, size_t len, sp_err *err);
/* Server ALPN: `wire` is the RFC 7301 list (length-prefixed names) in server preference
 * order; kept on the context and used by a C selection callback (the caller holds the
 * context's write lock: sp_ctx_config_lock). 1 on success. */
int sp_ctx_set_server_alpn(SSL_CTX *ctx, const unsigned char *wire, size_t len,
                           int allow_no_match);
/* What failed, in sp_err.ssl_error, for the loads below (as well as the drained queue). */
#define SP_LOAD_NOTHING (-1)  /* no certificate (or CRL) in the data at all */
#define SP_LOAD_MISMATCH (-2) /* a key and a certificate that do not go together */
#define SP_LOAD_NOT_RSA (-3)  /* rsa_only, and the data held keys of other types only */
#define SP_LOAD_NO_KEY (-4)   /* no key any decoder could read (the queue has OpenSSL's say) */
#define SP_LOAD_ENCRYPTED (-5)    /* an encrypted DER key, and no password */
#define SP_LOAD_BAD_PASSWORD (-6) /* an encrypted DER key the password does not decrypt */
#define SP_LOAD_BAD_EXTENSIONS (-7) /* a leaf whose X509v3 extensions cannot be read */
#define SP_LOAD_KEY_BROKEN (-8) /* a private key whose two halves do not belong together */
/* A private key from PEM/DER bytes (password may be NULL; never prompts). NULL on failure. */
EVP_PKEY *sp_load_private_key(const unsigned char *data, size_t len, int der, int rsa_only,
                              const char *password, sp_err *err);
/* Add every certificate of a PEM blob to the trust store (a block it cannot read is skipped);
 * 1 if at least one was added. */
int sp_ctx_add_pem_roots(SSL_CTX *ctx, const unsigned char *pem, size_t len);

/* A server context's key exchange groups (ssl_server_context_enable_ecdh), kept on the
 * context and applied to each connection once its ClientHello is in and any SNI switch done
 * (sp_ctx_apply_groups), so that the context it ends up with decides (SSL_set_SSL_CTX does
 * not move groups). The caller holds the context's write lock. 1: set; 0: this OpenSSL
 * refuses the list (nothing changed) or no memory. */
int sp_ctx_set_groups(SSL_CTX *ctx, const char *list);
/* The groups of the SSL's (final) context, if it set any: 1, or 0 on failure. */
int sp_ctx_apply_groups(SSL *ssl);
/* sp_ctx_enable_sni ran on ctx (its SNI callback is to be called), and the query. */
void sp_ctx_note_sni(SSL_CTX *ctx);
int sp_ctx_sni_wanted(const SSL_CTX *ctx);
/* SSL_CTX_set_cipher_list that changes nothing when it rejects `spec` (1: set). */
int sp_ctx_set_cipher_list(SSL_CTX *ctx, const char *spec);
/* The loads of context.py, from bytes Python read (a PEM blob); each parses everything before
 * it changes the context (the caller holds its write lock), so a failure changes nothing, and
 * no PEM password prompt is ever shown. 1 on success; else 0, with err filled (ssl_error may
 * be one of the SP_LOAD_* codes). sp_ctx_use_chain_pem: this end's certificate, leaf first,
 * and its chain; refused when a key loaded before any certificate of its type
 * (sp_ctx_use_private_key) does not go with the leaf. sp_ctx_use_private_key: the key, which
 * must match the certificate of its type; need_certificate: there must be one. */
int sp_ctx_use_chain_pem(SSL_CTX *ctx, const unsigned char *pem, size_t len, sp_err *err);
int sp_ctx_use_private_key(SSL_CTX *ctx, EVP_PKEY *key, int need_certificate, sp_err *err);
/* Trusted roots and CRLs, all of the blob or nothing (the store has its own lock: no need
 * for the context's). */
int sp_ctx_load_verify_pem(SSL_CTX *ctx, const unsigned char *pem, size_t len, sp_err *err);
/* A ("directory", path) verify source (sp_dir.c): the hashed directory `dir`, looked up as
 * OpenSSL's by_dir does, its files read only when regular and of bounded size. 1 on success;
 * 0 (out of memory) with what OpenSSL queued. */
int sp_ctx_add_verify_dir(SSL_CTX *ctx, const char *dir);
/* The CA names sent with a certificate request, from every certificate of the blob. */
int sp_ctx_load_client_ca_pem(SSL_CTX *ctx, const unsigned char *pem, size_t len, sp_err *err);

/* The configuration guard (see sp_ctx.c): changes to a context run between
 * sp_ctx_config_lock (1: locked; 0: sealed, not locked; -1: failure; SP_CTX_IN_HANDSHAKE: not
 * locked, called from a callback of one of the context's own handshakes; SP_CTX_FORKED: not
 * locked, this process is a child forked while another thread used the lock; SP_CTX_BUSY: not
 * locked, called from a callback of another context's handshake while other handshakes held
 * the lock for ~2 s: they may wait for this one) and sp_ctx_config_unlock
 * (sp_ctx_set_server_alpn among them). */
#define SP_CTX_IN_HANDSHAKE 2
#define SP_CTX_FORKED 3
#define SP_CTX_BUSY 4
int sp_ctx_config_lock(SSL_CTX *ctx);
void sp_ctx_config_unlock(SSL_CTX *ctx);
void sp_ctx_seal(SSL_CTX *ctx);
/* SSL_new / SSL_set_SSL_CTX under the context's read lock. */
SSL *sp_ctx_new_ssl(SSL_CTX *ctx);
int sp_ctx_switch_ssl(SSL *ssl, SSL_CTX *to);
/* An OpenSSL call that may run a handshake step (one that never waits) runs between
 * sp_ctx_step_begin and sp_ctx_step_end, with `st` on the caller's stack: it holds the read
 * lock of the connection's (unsealed) context. sp_ctx_step_needed: may a read or write on
 * this established connection run one? */
typedef struct sp_step {
    SSL_CTX *locked;          /* the context whose read lock this step holds, or NULL */
    struct sp_step *outer;
} sp_step;
void sp_ctx_step_begin(SSL *ssl, sp_step *st);
void sp_ctx_step_end(sp_step *st);
int sp_ctx_step_needed(SSL *ssl);
int sp_ctx_keylog_wanted(const SSL_CTX *ctx);
/* A server connection's session id context: its context, client-verify policy and, with
 * host_tag (SP_HOST_TAG_LEN bytes, sp_conn.h), the client name it checks. */
int sp_ssl_set_sid(SSL *ssl, int verify_flags, unsigned identity, const unsigned char *host_tag);
/* The same with the context's identity count now (bench/c/conn_one.c: no reloads there). */
int sp_ssl_set_session_id_context(SSL *ssl, int verify_flags, const unsigned char *host_tag);
/* After this end's certificate, key or trusted roots changed (any thread, no lock, once the
 * load is done): a server connection set up from now on resumes no session made before.
 * sp_ctx_identity: the count, read before an SSL takes the context's certificate (SSL_new,
 * SSL_set_SSL_CTX), so that it is never newer than what the connection serves. */
void sp_ctx_identity_changed(SSL_CTX *ctx);
unsigned sp_ctx_identity(const SSL_CTX *ctx);
void sp_ctx_set_keylog_flag(SSL_CTX *ctx, int on);

/* Which step of sp_ctx_open_conn failed. */
enum { SP_SETUP_CONNECTION = 1, SP_SETUP_HOSTNAME = 2, SP_SETUP_ALPN = 3 };
/* A new connection from `ctx` (fd >= 0: socket mode), configured in one call: the verify
 * policy (SP_VERIFY_* flags); with `host`, SNI (clients, DNS names) and, with check_host, the
 * name the peer's certificate must match; the ALPN offer (RFC 7301 wire format, alpn_len > 0);
 * with `cache_host` (a client whose context keeps sessions), the peer (cache_host, cache_port)
 * whose cached session it resumes and under which it files new ones, as long as the cache is
 * still in `cache_epoch` (the verify policy the flags came from: sp_ctx_forget_sessions).
 * NULL on failure, with err filled and *failed_step saying which step failed; nothing is left
 * allocated then. */
sp_conn *sp_ctx_open_conn(SSL_CTX *ctx, int is_server, int fd, int verify_flags,
                          const char *host, int host_is_ip, int check_host,
                          const unsigned char *alpn, size_t alpn_len, const char *cache_host,
                          int cache_port, unsigned long long cache_epoch, sp_err *err,
                          size_t *failed_step);

#endif /* SP_CTX_H */
