/* sp_verify.c - what a connection knows about its peer, and the callbacks into Python.
 *
 * Every query takes the connection lock: OpenSSL forbids using one SSL* from two threads,
 * and a reader thread may be inside SSL_read_ex while another thread asks.
 *
 * Callbacks into Python (SNI, key log) are CFFI `extern "Python+C"` functions defined by the
 * generated module; CFFI takes the GIL for them. They run with the connection lock held, which
 * is safe because no thread ever waits for that lock while holding the GIL (every shim call
 * releases the GIL first), and this thread does not wait for it either: a callback that uses
 * its own connection finds the lock its own (sp_conn.c CALLBACKS).
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "sp.h"

/* Defined by the CFFI module (cdef: extern "Python+C"). */
int sp_py_sni(sp_conn *c, const char *name, SSL_CTX **switch_to, int *verify_flags);
int sp_py_keylog(const SSL *ssl, const char *line); /* 1: it kept a break */

/* ---- certificates and names --------------------------------------------------------- */

static X509 *peer_cert_locked(sp_conn *c)
{
    return SSL_get0_peer_certificate(c->ssl);
}

int sp_peer_verified(sp_conn *c)
{
    int ok;
    sp_conn_lock(c);
    ok = peer_cert_locked(c) != NULL && SSL_get_verify_result(c->ssl) == X509_V_OK;
    sp_conn_unlock(c);
    return ok;
}

/* err says why, in our words (no OpenSSL error to report). */
static void fail(sp_err *err, const char *why)
{
    size_t n = strlen(why);
    if (n >= sizeof err->text)
        n = sizeof err->text - 1;
    memcpy(err->text, why, n);
    err->text[n] = '\0';
    err->nerrs = 1;
}

/* The names of a certificate, written into out as they come: each entry a 4-byte big-endian
 * length, then the bytes (which may hold a NUL: a DNS SAN "good.example\0.evil.test" must stay
 * one name, never split into two). An entry that does not fit is left out and a later one
 * that does still goes in (an error message shows what fits); `need` counts them all, so a
 * caller can size a retry, and `count` too. */
typedef struct name_list {
    char *out;
    size_t cap, written, need, count;
} name_list;

static void put_name(name_list *l, const unsigned char *s, size_t len)
{
    if ((unsigned long long)len > 0xffffffffull)
        return;
    l->need += 4 + len;
    l->count++;
    if (len <= l->cap && l->written + 4 <= l->cap - len) {
        unsigned char *p = (unsigned char *)l->out + l->written;
        p[0] = (unsigned char)(len >> 24);
        p[1] = (unsigned char)(len >> 16);
        p[2] = (unsigned char)(len >> 8);
        p[3] = (unsigned char)len;
        if (len > 0)
            memcpy(p + 4, s, len);
        l->written += 4 + len;
    }
}

/* An IP SAN as text: dotted quad, or RFC 5952 IPv6 (lower-case hex, no leading zeros, the
 * first longest run of two or more zero groups as "::"), as Python's ipaddress prints it. An
 * address of neither 4 nor 16 bytes is left out. */
static void put_ip(name_list *l, const ASN1_OCTET_STRING *ip)
{
    char text[64];
    size_t n = 0;
    const unsigned char *p = ASN1_STRING_get0_data(ip);
    int len = ASN1_STRING_length(ip);
    if (len == 4) {
        snprintf(text, sizeof text, "%u.%u.%u.%u", p[0], p[1], p[2], p[3]);
        n = strlen(text);
    } else if (len == 16) {
        unsigned groups[8];
        int i, best = -1, best_len = 1, run = 0;
        for (i = 0; i < 8; i++) {
            groups[i] = (unsigned)(p[2 * i] << 8 | p[2 * i + 1]);
            run = groups[i] == 0 ? run + 1 : 0;
            if (run > best_len) {
                best_len = run;
                best = i - run + 1;
            }
        }
        for (i = 0; i < 8; i++) {
            if (i == best) {
                n += (size_t)snprintf(text + n, sizeof text - n, "::");
                i += best_len - 1;
                continue;
            }
            n += (size_t)snprintf(text + n, sizeof text - n,
                                  i > 0 && i != best + best_len ? ":%x" : "%x", groups[i]);
        }
    } else {
        return;
    }
    put_name(l, (const unsigned char *)text, n);
}

int sp_sans_replace_cn(const GENERAL_NAMES *sans)
{
    int i;
    for (i = 0; sans != NULL && i < sk_GENERAL_NAME_num(sans); i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(sans, i);
        if (gn->type == GEN_DNS || gn->type == GEN_URI
            || (gn->type == GEN_OTHERNAME && OBJ_obj2nid(gn->d.otherName->type_id) == NID_SRVName))
            return 1;
    }
    return 0;
}

/* The names of cert into l (sp_peer_hostnames' format). When the subjectAltName cannot be
 * decoded, no names at all, rather than the CN that RFC 6125 says they replace: err says
 * why, and so does *unreadable. */
static void cert_hostnames(X509 *cert, name_list *l, int *unreadable, sp_err *err)
{
    int i, found = -1;
    GENERAL_NAMES *sans = X509_get_ext_d2i(cert, NID_subject_alt_name, &found, NULL);
    *unreadable = sans == NULL && found != -1; /* (found: -1 none, -2 two of them) */
    if (*unreadable) {
        sp_err_drain(err);
        if (found == -2)
            fail(err, "the certificate has two subjectAltName extensions");
        else if (err->nerrs == 0)
            err->sys_errno = ENOMEM;
        return;
    }
    for (i = 0; sans != NULL && i < sk_GENERAL_NAME_num(sans); i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(sans, i);
        if (gn->type == GEN_DNS)
            put_name(l, ASN1_STRING_get0_data(gn->d.dNSName),
                     (size_t)ASN1_STRING_length(gn->d.dNSName));
    }
    if (!sp_sans_replace_cn(sans)) {
        /* No DNS, SRV or URI names: the last CN of the subject, as UTF-8. */
        X509_NAME *subject = X509_get_subject_name(cert);
        int idx = -1, last = -1;
        while ((idx = X509_NAME_get_index_by_NID(subject, NID_commonName, idx)) >= 0)
            last = idx;
        if (last >= 0) {
            unsigned char *utf8 = NULL;
            int len = ASN1_STRING_to_UTF8(
                &utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, last)));
            if (len >= 0) {
                put_name(l, utf8, (size_t)len);
            } else { /* (the CN cannot be read: no list, as above) */
                sp_err_drain(err);
                if (err->nerrs == 0)
                    err->sys_errno = ENOMEM;
            }
            OPENSSL_free(utf8);
        }
    }
    for (i = 0; sans != NULL && i < sk_GENERAL_NAME_num(sans); i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(sans, i);
        if (gn->type == GEN_IPADD)
            put_ip(l, gn->d.iPAddress);
    }
    GENERAL_NAMES_free(sans);
}

size_t sp_peer_hostnames(sp_conn *c, char *out, size_t cap, sp_err *err)
{
    name_list names = {out, cap, 0, 0, 0};
    int unreadable = 0;
    X509 *cert;
    sp_err_reset(err);
    sp_conn_lock(c);
    ERR_clear_error();
    cert = peer_cert_locked(c);
    if (cert != NULL)
        cert_hostnames(cert, &names, &unreadable, err);
    ERR_clear_error();
    sp_conn_unlock(c);
    return names.need;
}

/* "YYYY-MM-DD HH:MM:SS UTC", or "" when t cannot be read. */
static void time_text(const ASN1_TIME *t, char *out, size_t cap)
{
    struct tm tm;
    out[0] = '\0';
    if (t != NULL && ASN1_TIME_to_tm(t, &tm))
        snprintf(out, cap, "%04d-%02d-%02d %02d:%02d:%02d UTC", tm.tm_year + 1900, tm.tm_mon + 1,
                 tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

int sp_conn_verify_failure(sp_conn *c, sp_verify_failure *out)
{
    int ok = 0;
    X509 *cert;
    name_list names = {NULL, 0, 0, 0, 0};
    sp_err err;
    memset(out, 0, sizeof *out);
    sp_err_reset(&err);
    sp_conn_lock(c);
    ERR_clear_error();
    cert = c->vfail_cert;
    if (cert != NULL) {
        out->code = c->vfail_code;
        out->depth = c->vfail_depth;
        if (X509_NAME_oneline(X509_get_subject_name(cert), out->subject, sizeof out->subject)
            == NULL)
            out->subject[0] = '\0';
        if (X509_NAME_oneline(X509_get_issuer_name(cert), out->issuer, sizeof out->issuer)
            == NULL)
            out->issuer[0] = '\0';
        time_text(X509_get0_notBefore(cert), out->not_before, sizeof out->not_before);
        time_text(X509_get0_notAfter(cert), out->not_after, sizeof out->not_after);
        names.out = out->names;
        names.cap = sizeof out->names;
        cert_hostnames(cert, &names, &out->names_unreadable, &err);
        out->names_len = names.written;
        out->names_count = names.count;
        ok = 1;
    }
    ERR_clear_error(); /* (what could not be read is left out of the message) */
    sp_conn_unlock(c);
    return ok;
}

int sp_peer_check_hostname(sp_conn *c, const char *name, size_t len, int is_ip)
{
    int ok = 0;
    X509 *cert;
    sp_conn_lock(c);
    cert = peer_cert_locked(c);
    if (is_ip && cert != NULL) {
        ok = X509_check_ip_asc(cert, name, 0) == 1;
    } else if (cert != NULL) {
        /* With DNS, SRV or URI SANs the CN is never checked (sp_sans_replace_cn). OpenSSL
         * checks it when it cannot decode them (out of memory), which would accept a name
         * only the CN holds: decode them here first, and fail when that fails. */
        int found = -1, dns, readable;
        GENERAL_NAMES *sans = X509_get_ext_d2i(cert, NID_subject_alt_name, &found, NULL);
        readable = sans != NULL || found == -1; /* (decoded, or there are none) */
        dns = sp_sans_replace_cn(sans);
        GENERAL_NAMES_free(sans);
        if (readable)
            ok = X509_check_host(cert, name, len,
                                 X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS
                                     | (dns ? X509_CHECK_FLAG_NEVER_CHECK_SUBJECT : 0),
                                 NULL)
                 == 1;
    }
    ERR_clear_error();
    sp_conn_unlock(c);
    return ok;
}

size_t sp_peer_name(sp_conn *c, int issuer, char *out, size_t cap)
{
    size_t need = 0;
    X509 *cert;
    sp_conn_lock(c);
    ERR_clear_error();
    cert = peer_cert_locked(c);
    if (cert != NULL) {
        X509_NAME *name = issuer ? X509_get_issuer_name(cert) : X509_get_subject_name(cert);
        /* (NULL: OpenSSL allocates the whole line; a caller's buffer would cut it short) */
        char *line = X509_NAME_oneline(name, NULL, 0);
        if (line != NULL) {
            need = strlen(line) + 1;
            if (need <= cap)
                memcpy(out, line, need);
            OPENSSL_free(line);
        }
    }
    ERR_clear_error();
    sp_conn_unlock(c);
    return need;
}

/* ---- channel binding ---------------------------------------------------------------- */

static int tls_unique_locked(sp_conn *c, unsigned char *out, size_t cap, size_t *outlen,
                             sp_err *err)
{
    /* RFC 5929: the first Finished of the latest handshake: the client's in a full
     * handshake, the server's in a resumed one. */
    int client = !SSL_is_server(c->ssl);
    int first_is_ours = SSL_session_reused(c->ssl) ? !client : client;
    if (SSL_version(c->ssl) >= TLS1_3_VERSION) {
        fail(err, "tls-unique is not defined for TLS 1.3");
        return 0;
    }
    if (SSL_session_reused(c->ssl) && SSL_get_extms_support(c->ssl) != 1) {
        /* (RFC 7627: a man in the middle can make two such sessions' Finished alike) */
        fail(err, "tls-unique is not unique on a session resumed without the extended master "
                  "secret (RFC 7627, the triple handshake)");
        return 0;
    }
    *outlen = first_is_ours ? SSL_get_finished(c->ssl, out, cap)
                            : SSL_get_peer_finished(c->ssl, out, cap);
    if (*outlen == 0 || *outlen > cap) {
        fail(err, "no Finished message yet");
        return 0;
    }
    return 1;
}

/* RFC 5929 4.1: the certificate hashed by its signature's hash, MD5 and SHA-1 as SHA-256. */
static int end_point_of(X509 *cert, unsigned char *out, size_t cap, size_t *outlen, sp_err *err)
{
    int md_nid = NID_undef, pk_nid = NID_undef;
    const EVP_MD *md;
    unsigned int n = 0;
    if (!X509_get_signature_info(cert, &md_nid, &pk_nid, NULL, NULL) || md_nid == NID_undef) {
        fail(err, "the certificate's signature algorithm has no single hash (RFC 5929 leaves "
                  "tls-server-end-point undefined for it)");
        return 0;
    }
    if (md_nid == NID_md5 || md_nid == NID_sha1)
        md_nid = NID_sha256;
    md = EVP_get_digestbynid(md_nid);
    if (md == NULL || cap < (size_t)EVP_MD_size(md) || !X509_digest(cert, md, out, &n)) {
        sp_err_drain(err);
        if (err->nerrs == 0)
            fail(err, "cannot hash the server certificate");
        return 0;
    }
    *outlen = n;
    return 1;
}

/* A resumed handshake sends no certificate, and a server with several (RSA and ECDSA, say)
 * only knows which one it presented during the full handshake: OpenSSL's current one is then
 * the last loaded, not necessarily the session's (the client's peer certificate). So a server
 * writes its tls-server-end-point into each new session, as ticket app data (which OpenSSL
 * carries inside the encrypted ticket, and keeps in its session-id cache and in the copies a
 * TLS 1.3 resumption makes): a magic, then 1 and the value, or 0 (undefined for the
 * certificate). */
static const unsigned char end_point_magic[4] = {'S', 'P', 'E', 'P'};

/* What remember_end_point stored in `session` (the flag byte, then the value), or NULL. */
static const unsigned char *stored_end_point(const SSL_SESSION *session, size_t *len)
{
    void *data = NULL;
    size_t n = 0;
    if (session == NULL)
        return NULL;
    SSL_SESSION_get0_ticket_appdata((SSL_SESSION *)session, &data, &n);
    if (data == NULL || n <= sizeof end_point_magic
        || memcmp(data, end_point_magic, sizeof end_point_magic) != 0)
        return NULL;
    *len = n - sizeof end_point_magic;
    return (const unsigned char *)data + sizeof end_point_magic;
}

static void remember_end_point(SSL *ssl, SSL_SESSION *session)
{
    unsigned char data[sizeof end_point_magic + 1 + EVP_MAX_MD_SIZE];
    size_t n = 0, stored = 0;
    sp_err err;
    X509 *cert = SSL_get_certificate(ssl);
    /* A resumed session, and the copies a TLS 1.3 server makes for its second ticket, already
     * carry the value of their full handshake: one hash per full handshake. */
    if (session == NULL || cert == NULL || SSL_session_reused(ssl)
        || stored_end_point(session, &stored) != NULL)
        return;
    sp_err_reset(&err);
    memcpy(data, end_point_magic, sizeof end_point_magic);
    data[sizeof end_point_magic] = (unsigned char)end_point_of(
        cert, data + sizeof end_point_magic + 1, EVP_MAX_MD_SIZE, &n, &err);
    if (!SSL_SESSION_set1_ticket_appdata(session, data, sizeof end_point_magic + 1 + n))
        ERR_clear_error(); /* (out of memory: a resumption then uses the current certificate) */
    ERR_clear_error();
}

static int remember_in_ticket(SSL *ssl, void *arg)
{
    (void)arg;
    remember_end_point(ssl, SSL_get_session(ssl));
    return 1;
}

static int remember_in_cache(SSL *ssl, SSL_SESSION *session)
{
    remember_end_point(ssl, session);
    return 0; /* (no reference kept) */
}

void sp_ctx_remember_end_point(SSL_CTX *ctx)
{
    /* Tickets (TLS 1.3; TLS 1.2 with the extension) are made before a TLS 1.2 handshake
     * completes; the session-id cache gets the session at its end. */
    SSL_CTX_set_session_ticket_cb(ctx, remember_in_ticket, NULL, NULL);
    SSL_CTX_sess_set_new_cb(ctx, remember_in_cache);
}

static int server_end_point_locked(sp_conn *c, unsigned char *out, size_t cap, size_t *outlen,
                                   sp_err *err)
{
    X509 *cert = SSL_is_server(c->ssl) ? SSL_get_certificate(c->ssl) : peer_cert_locked(c);
    if (SSL_is_server(c->ssl) && SSL_session_reused(c->ssl)) {
        size_t len = 0;
        const unsigned char *p = stored_end_point(SSL_get0_session(c->ssl), &len);
        if (p != NULL) {
            size_t n = len - 1;
            if (p[0] != 1) {
                fail(err, "the certificate's signature algorithm has no single hash (RFC 5929 "
                          "leaves tls-server-end-point undefined for it)");
                return 0;
            }
            if (n == 0 || n > cap) {
                fail(err, "cannot hash the server certificate");
                return 0;
            }
            memcpy(out, p + 1, n);
            *outlen = n;
            return 1;
        }
    }
    if (cert == NULL) {
        fail(err, "no server certificate");
        return 0;
    }
    return end_point_of(cert, out, cap, outlen, err);
}

/* The keys that channel bindings and exported keying material derive from are settled: the
 * first handshake completed, and no TLS <= 1.2 renegotiation is under way. On TLS 1.3 a
 * post-handshake message (NewSessionTicket, KeyUpdate, CertificateRequest) of which only a
 * part has arrived puts OpenSSL back "in init" until the rest does (a message may span
 * records: a ticket holding a client certificate, sent 512 bytes a record), yet it changes
 * neither the exporter secret nor the certificates (ssl_lock held). */
static int keys_settled_locked(sp_conn *c)
{
    return SSL_is_init_finished(c->ssl)
           || (c->established && SSL_version(c->ssl) >= TLS1_3_VERSION);
}

int sp_channel_binding(sp_conn *c, int type, unsigned char *out, size_t cap, size_t *outlen,
                       sp_err *err)
{
    int ok = 0;
    sp_err_reset(err);
    sp_conn_lock(c);
    ERR_clear_error();
    if (!keys_settled_locked(c)) {
        fail(err, "the handshake has not completed");
    } else if (type == SP_CB_TLS_UNIQUE) {
        ok = tls_unique_locked(c, out, cap, outlen, err);
    } else if (type == SP_CB_TLS_SERVER_END_POINT) {
        ok = server_end_point_locked(c, out, cap, outlen, err);
    } else if (type == SP_CB_TLS_EXPORTER) {
        static const char label[] = "EXPORTER-Channel-Binding";
        if (SSL_version(c->ssl) < TLS1_3_VERSION && SSL_get_extms_support(c->ssl) != 1) {
            fail(err, "tls-exporter needs TLS 1.3 or the extended master secret");
        } else if (cap < 32) {
            fail(err, "buffer too small");
        } else {
            /* RFC 9266: an empty (present, zero-length) context. */
            ok = SSL_export_keying_material(c->ssl, out, 32, label, sizeof label - 1,
                                            (const unsigned char *)"", 0, 1);
            if (ok)
                *outlen = 32;
            else
                sp_err_drain(err);
        }
    } else {
        fail(err, "unknown channel binding type");
    }
    sp_conn_unlock(c);
    return ok;
}

/* The most bytes SSL_export_keying_material can give on this connection, 0 when it sets no
 * limit below ours: TLS 1.3 exports through HKDF-Expand, at most 255 x the hash's length of the
 * suite (RFC 5869); beyond that OpenSSL fails with a bare "internal error". */
size_t sp_export_max_len(sp_conn *c)
{
    size_t max = 0;
    sp_conn_lock(c);
    if (keys_settled_locked(c) && SSL_version(c->ssl) >= TLS1_3_VERSION) {
        const SSL_CIPHER *cipher = SSL_get_current_cipher(c->ssl);
        const EVP_MD *md = cipher != NULL ? SSL_CIPHER_get_handshake_digest(cipher) : NULL;
        int size = md != NULL ? EVP_MD_size(md) : 0;
        if (size > 0)
            max = 255 * (size_t)size;
    }
    sp_conn_unlock(c);
    return max;
}

int sp_export_keying_material(sp_conn *c, unsigned char *out, size_t len, const char *label,
                              size_t label_len, const unsigned char *context, size_t context_len,
                              int use_context, sp_err *err)
{
    int ok;
    sp_err_reset(err);
    sp_conn_lock(c);
    ERR_clear_error();
    ok = keys_settled_locked(c)
         && SSL_export_keying_material(c->ssl, out, len, label, label_len, context, context_len,
                                       use_context);
    if (!ok) {
        sp_err_drain(err);
        if (err->nerrs == 0)
            fail(err, "the handshake has not completed");
    }
    sp_conn_unlock(c);
    return ok;
}

/* ---- negotiated facts ----------------------------------------------------------------- */

int sp_conn_version(sp_conn *c)
{
    int v;
    sp_conn_lock(c);
    v = SSL_is_init_finished(c->ssl) || c->established ? SSL_version(c->ssl) : 0;
    sp_conn_unlock(c);
    return v;
}

const char *sp_conn_cipher(sp_conn *c)
{
    const char *name;
    sp_conn_lock(c);
    name = SSL_get_cipher_name(c->ssl);
    sp_conn_unlock(c);
    return name;
}

const char *sp_conn_cipher_info(sp_conn *c, const char **version, int *bits)
{
    const SSL_CIPHER *cipher;
    const char *name = NULL;
    *version = NULL;
    *bits = 0;
    sp_conn_lock(c);
    cipher = SSL_get_current_cipher(c->ssl);
    if (cipher != NULL) {
        name = SSL_CIPHER_get_name(cipher);
        *version = SSL_CIPHER_get_version(cipher);
        *bits = SSL_CIPHER_get_bits(cipher, NULL);
    }
    sp_conn_unlock(c);
    return name;
}

int sp_conn_alpn(sp_conn *c, unsigned char *out, size_t cap)
{
    const unsigned char *data = NULL;
    unsigned int len = 0;
    sp_conn_lock(c);
    SSL_get0_alpn_selected(c->ssl, &data, &len);
    if (data != NULL && len <= cap)
        memcpy(out, data, len);
    sp_conn_unlock(c);
    return data == NULL ? -1 : (int)len;
}

int sp_conn_session_reused(sp_conn *c)
{
    int r;
    sp_conn_lock(c);
    r = SSL_session_reused(c->ssl);
    sp_conn_unlock(c);
    return r;
}

/* ---- callbacks into Python ------------------------------------------------------------ */

/* The host_name of a ClientHello's server_name extension (RFC 6066 3), NUL-terminated in
 * out; 0 when there is none or it is malformed (then OpenSSL's own parser rejects it). */
static int hello_host_name(SSL *ssl, char *out, size_t cap)
{
    const unsigned char *p;
    size_t len, list, n;
    if (!SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_server_name, &p, &len) || len < 5)
        return 0;
    list = ((size_t)p[0] << 8) | p[1];
    if (list != len - 2 || p[2] != TLSEXT_NAMETYPE_host_name)
        return 0;
    n = ((size_t)p[3] << 8) | p[4];
    if (n == 0 || n + 3 != list || n >= cap || memchr(p + 5, 0, n) != NULL)
        return 0;
    memcpy(out, p + 5, n);
    out[n] = '\0';
    return 1;
}

/* The end of the first ClientHello's callback: the groups of the context the connection ends
 * up with (sp_ctx_set_groups), before OpenSSL chooses a key exchange. */
static int hello_groups(SSL *ssl, int *alert)
{
    if (sp_ctx_apply_groups(ssl))
        return SSL_CLIENT_HELLO_SUCCESS;
    *alert = SSL_AD_INTERNAL_ERROR;
    return SSL_CLIENT_HELLO_ERROR;
}

/* The SNI callback runs from the ClientHello callback, before OpenSSL looks for a session to
 * resume: a switch to another context (and its session id context, sp_conn_apply_verify_locked)
 * then decides which sessions may be resumed, so that a session made where no client
 * certificate was asked for is never resumed into a context that verifies clients. (From the
 * servername callback it would come too late: the session is chosen by then, and for TLS 1.2
 * resumption OpenSSL even reports the old session's name instead of the one sent.) */
static int client_hello_callback(SSL *ssl, int *alert, void *arg)
{
    sp_conn *c = sp_conn_from_ssl(ssl);
    char name[TLSEXT_MAXLEN_host_name + 1];
    SSL_CTX *switch_to = NULL;
    sp_callback_frame frame;
    int flags = 0, r;
    (void)arg;
    if (c == NULL || c->sni_done) /* (a HelloRetryRequest's second hello, a renegotiation) */
        return SSL_CLIENT_HELLO_SUCCESS;
    c->sni_done = 1;
    /* no SNI callback, or no SNI: the callback is not called */
    if (!sp_ctx_sni_wanted(SSL_get_SSL_CTX(ssl)) || !hello_host_name(ssl, name, sizeof name))
        return hello_groups(ssl, alert);
    sp_conn_callback_begin(c, &frame);
    r = sp_py_sni(c, name, &switch_to, &flags);
    sp_conn_callback_end(&frame);
    if (r < 0) {
        *alert = SSL_AD_INTERNAL_ERROR;
        return SSL_CLIENT_HELLO_ERROR;
    }
    if (r > 0 && switch_to != NULL) {
        unsigned identity = sp_ctx_identity(switch_to); /* (first: sp_ctx.h) */
        if (!sp_ctx_switch_ssl(ssl, switch_to)) {
            *alert = SSL_AD_INTERNAL_ERROR;
            return SSL_CLIENT_HELLO_ERROR;
        }
        c->identity = identity;
        /* SSL_set_SSL_CTX swaps certificate, key and store, but not the verify mode,
         * options or protocol range: take them from the new context too (the version is
         * chosen after this callback). */
        SSL_set_options(ssl, SSL_CTX_get_options(switch_to));
        if (!SSL_set_min_proto_version(ssl, SSL_CTX_get_min_proto_version(switch_to))
            || !SSL_set_max_proto_version(ssl, SSL_CTX_get_max_proto_version(switch_to))) {
            *alert = SSL_AD_INTERNAL_ERROR;
            return SSL_CLIENT_HELLO_ERROR;
        }
        c->verify_flags = flags;
        /* The name check follows the new context too: on when it checks names (the callback
         * refused a switch without a name to check: sni.py), off when it does not. */
        if (!sp_conn_server_name_check_locked(c)) {
            *alert = SSL_AD_INTERNAL_ERROR;
            return SSL_CLIENT_HELLO_ERROR;
        }
        sp_conn_apply_verify_locked(c);
    }
    return hello_groups(ssl, alert);
}

/* Acknowledges the SNI extension (the switch itself happened in client_hello_callback). */
static int sni_callback(SSL *ssl, int *alert, void *arg)
{
    (void)alert, (void)arg;
    return SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name) != NULL ? SSL_TLSEXT_ERR_OK
                                                                       : SSL_TLSEXT_ERR_NOACK;
}

void sp_ctx_watch_hello(SSL_CTX *ctx)
{
    SSL_CTX_set_client_hello_cb(ctx, client_hello_callback, NULL);
}

void sp_ctx_enable_sni(SSL_CTX *ctx)
{
    sp_ctx_watch_hello(ctx);
    sp_ctx_note_sni(ctx);
    SSL_CTX_set_tlsext_servername_callback(ctx, sni_callback);
}

static void keylog_callback(const SSL *ssl, const char *line)
{
    sp_conn *c;
    sp_callback_frame frame;
    int broke;
    if (!sp_ctx_keylog_wanted(SSL_get_SSL_CTX(ssl)))
        return;
    /* A TLS 1.2 renegotiation's line comes while the connection's ports exist: what the
     * callback does with them must not wait for this thread's ssl_lock (sp_conn.c CALLBACKS).
     * (c NULL: an SSL* this library did not make.) */
    c = sp_conn_from_ssl(ssl);
    if (c != NULL)
        sp_conn_callback_begin(c, &frame);
    broke = sp_py_keylog(ssl, line);
    if (c != NULL)
        sp_conn_callback_end(&frame);
    if (broke)
        sp_conn_note_break();
}

void sp_ctx_enable_keylog(SSL_CTX *ctx, int on)
{
    /* Never back to NULL: OpenSSL checks the pointer, then reads it again to call it, so a
     * handshake in another thread could call NULL. The flag turns the lines off instead. */
    sp_ctx_set_keylog_flag(ctx, on);
    if (on)
        SSL_CTX_set_keylog_callback(ctx, keylog_callback);
}
