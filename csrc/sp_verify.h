/* sp_verify.h - peer verification, names, channel binding and connection facts, plus the
 * callbacks that reach Python (SNI, key log). All take the connection lock themselves. */
#ifndef SP_VERIFY_H
#define SP_VERIFY_H

enum { SP_CB_TLS_UNIQUE = 1, SP_CB_TLS_SERVER_END_POINT = 2, SP_CB_TLS_EXPORTER = 3 };

/* 1 when the peer presented a certificate and it verified. */
int sp_peer_verified(sp_conn *c);
/* The peer's names into out, each as a 4-byte big-endian length and its bytes (a name may
 * hold a NUL); returns the bytes needed (call again if > cap). When names the certificate
 * holds cannot be read (out of memory, malformed), err says why (nerrs or sys_errno). */
size_t sp_peer_hostnames(sp_conn *c, char *out, size_t cap, sp_err *err);
/* The certificate the last failed verification step on c was about, for an error message. */
typedef struct sp_verify_failure {
    long code;              /* its X509 verify code */
    int depth;              /* its depth in the chain (0: the peer's own certificate) */
    char subject[256];      /* X509_NAME_oneline (cut at 255 bytes), or "" */
    char issuer[256];
    char not_before[32];    /* "YYYY-MM-DD HH:MM:SS UTC", or "" */
    char not_after[32];
    size_t names_len;       /* the bytes of names used: sp_peer_hostnames' format, the names */
    char names[1024];       /* that fit (whole; one that does not is left out) */
    size_t names_count;     /* how many names there are, also those that did not fit */
    int names_unreadable;   /* 1: the subjectAltName cannot be decoded (no names then) */
} sp_verify_failure;
/* 1 and out filled when a verification step on c failed, else 0 (out zeroed). */
int sp_conn_verify_failure(sp_conn *c, sp_verify_failure *out);
/* Do these subjectAltNames (NULL: none) hold a DNS-ID, SRV-ID or URI-ID? Then the subject's CN
 * names no host (RFC 6125 6.4.4): a certificate for a service or a workload (a SPIFFE URI)
 * whose CN happens to say "victim.example" is no certificate for victim.example. OpenSSL's own
 * check reads the CN unless there is a DNS name. */
int sp_sans_replace_cn(const GENERAL_NAMES *sans);
/* RFC 6125 check of the peer certificate (no partial wildcards); 0 without a certificate. */
int sp_peer_check_hostname(sp_conn *c, const char *name, size_t len, int is_ip);
/* X509_NAME_oneline of the peer's subject (issuer != 0: issuer), NUL-terminated, into out;
 * returns the bytes needed with the NUL (call again if > cap); 0 without a certificate. */
size_t sp_peer_name(sp_conn *c, int issuer, char *out, size_t cap);
/* Channel binding data of `type`; 1 on success with *outlen set, 0 with err filled. */
int sp_channel_binding(sp_conn *c, int type, unsigned char *out, size_t cap, size_t *outlen,
                       sp_err *err);
size_t sp_export_max_len(sp_conn *c);
int sp_export_keying_material(sp_conn *c, unsigned char *out, size_t len, const char *label,
                              size_t label_len, const unsigned char *context, size_t context_len,
                              int use_context, sp_err *err);
/* Negotiated facts; strings are static or live as long as the connection. */
int sp_conn_version(sp_conn *c);
const char *sp_conn_cipher(sp_conn *c);
/* The current cipher's name, the protocol version that defines it (SSL_CIPHER_get_version:
 * "TLSv1.3", "TLSv1.2", "SSLv3", ...) and its secret bits, from one look under the lock: what
 * Python's ssl reports as cipher(). NULL (version NULL, bits 0) before a cipher was chosen. */
const char *sp_conn_cipher_info(sp_conn *c, const char **version, int *bits);
int sp_conn_alpn(sp_conn *c, unsigned char *out, size_t cap);
int sp_conn_session_reused(sp_conn *c);
/* Client sessions for resumption (the cache itself: sp_session.c). A client connection files
 * each new session under its peer key (host, port), and resumes the one found there; 0 when
 * out of memory; nothing while the cache is past `epoch` (sp_ctx_open_conn).
 * sp_conn_set_session: installs a session before the handshake.
 * sp_conn_drain_tickets: before a client's socket closes, processes the tickets that already
 * arrived (one SSL_read: the caller holds the read lock, so that no read of another thread is
 * under way, whose bytes it would take). */
int sp_conn_use_session_cache(sp_conn *c, const char *host, int port, unsigned long long epoch);
int sp_conn_set_session(sp_conn *c, SSL_SESSION *session);
void sp_conn_drain_tickets(sp_conn *c);

/* Re-verify the peer of an established connection (server: TLS 1.3 post-handshake auth or a
 * TLS 1.2 renegotiation; flags as in sp_conn_set_verify). 1 when the request was queued;
 * SP_REAUTH_LATER, changing nothing, while a TLS 1.3 post-handshake message from the client
 * (a KeyUpdate) is half received: OpenSSL is back "in init" until the rest arrives, and takes
 * no request meanwhile ("still in init"); read on (the pump), then ask again. */
#define SP_REAUTH_LATER 2
int sp_request_reauth(sp_conn *c, int flags, sp_err *err);
/* 1 while sp_request_reauth would answer SP_REAUTH_LATER. */
int sp_reauth_blocked(sp_conn *c);
/* 1 while the re-verification asked by sp_request_reauth has not completed. */
int sp_reauth_pending(sp_conn *c);

/* Client contexts: a session cache, fed by each connection's new sessions. 0: out of memory. */
int sp_ctx_track_sessions(SSL_CTX *ctx);

/* Server contexts: each new session records the tls-server-end-point of the certificate the
 * full handshake presented, for the connections that resume it. */
void sp_ctx_remember_end_point(SSL_CTX *ctx);

/* Callbacks into Python, enabled per context. */
void sp_ctx_enable_sni(SSL_CTX *ctx);
/* Every server context's ClientHello callback (sp_ctx_new): the SNI switch where enabled, then
 * the key exchange groups of the context the connection ends up with. */
void sp_ctx_watch_hello(SSL_CTX *ctx);
void sp_ctx_enable_keylog(SSL_CTX *ctx, int on);

#endif /* SP_VERIFY_H */
