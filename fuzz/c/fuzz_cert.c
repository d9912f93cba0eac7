/* fuzz_cert.c - what sp_verify.c reads from a peer's certificate: its names (sp_peer_hostnames:
 * DNS and IP SANs, the CN; sp_peer_check_hostname; sp_peer_name), tls-server-end-point (the
 * certificate's signature algorithm, and what a server keeps in its tickets for a resumption)
 * and the facts Python asks for, on a certificate made from the input.
 *
 * The input is a DER certificate (the seeds: real ones): it is parsed, given the harness's own
 * key and signed again with it (so a server can use it whatever it says), and served, loaded
 * through sp_ctx_use_chain_pem, by a server pump to a client pump (and by the client to the
 * server, which asks for it), both in stream mode, in memory. Then the client connects again,
 * resuming the session. Every fact query runs on both ends of both connections (fz_check_facts).
 * The input's first byte picks the signing key and digest, and the protocol version. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/pem.h>

#include "fz_common.h"
#include "fz_creds.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static EVP_PKEY *ec_key, *ed_key;

static void free_keys(void)
{
    EVP_PKEY_free(ec_key);
    EVP_PKEY_free(ed_key);
}

static void init(void)
{
    sp_err err;
    fz_rand_install();
    fz_no_prompt_install();
    fz_rand_reset(0, 1);
    fz_rand_select(0);
    ec_key = sp_load_private_key((const unsigned char *)FZ_EC_KEY, strlen(FZ_EC_KEY), 0, 0, NULL,
                                 &err);
    ed_key = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    FZ_CHECK(ec_key != NULL && ed_key != NULL);
    atexit(free_keys);
}

/* Move what `from` has queued to `to`. */
static void move(sp_conn *from, sp_conn *to)
{
    unsigned char b[16384];
    size_t n;
    while ((n = sp_take(from, b, sizeof b)) > 0)
        FZ_CHECK(sp_feed(to, b, n) == 1);
}

/* Both handshakes, then each end reads what is there (a TLS 1.3 client's tickets). 1 when both
 * completed. */
static int connect_pair(sp_conn *cl, sp_conn *sv)
{
    unsigned char b[256];
    int done_cl = 0, done_sv = 0, i;
    sp_err err;
    size_t got;
    for (i = 0; i < 20 && !(done_cl && done_sv); i++) {
        int st;
        if (!done_cl) {
            st = sp_handshake(cl, 0, &err);
            FZ_CHECK(st == SP_OK || st == SP_WANT_READ || st == SP_ERROR);
            if (st == SP_ERROR)
                fz_check_err(&err);
            done_cl = st == SP_OK;
        }
        move(cl, sv);
        if (!done_sv) {
            st = sp_handshake(sv, 0, &err);
            FZ_CHECK(st == SP_OK || st == SP_WANT_READ || st == SP_ERROR);
            if (st == SP_ERROR)
                fz_check_err(&err);
            done_sv = st == SP_OK;
        }
        move(sv, cl);
        if (sp_conn_broken(cl) || sp_conn_broken(sv))
            break;
    }
    FZ_CHECK(ERR_peek_error() == 0);
    if (!(done_cl && done_sv))
        return 0;
    (void)sp_read(cl, b, sizeof b, 0, &got, 0, &err);
    move(cl, sv);
    (void)sp_read(sv, b, sizeof b, 0, &got, 0, &err);
    FZ_CHECK(ERR_peek_error() == 0);
    return 1;
}

static SSL_CTX *ctx_with(int is_server, const char *pem, size_t len, EVP_PKEY *key, int tls12)
{
    sp_err err;
    SSL_CTX *ctx = sp_ctx_new(is_server, &err);
    FZ_CHECK(ctx != NULL);
    if (!sp_ctx_use_chain_pem(ctx, (const unsigned char *)pem, len, &err)
        || !sp_ctx_use_private_key(ctx, key, 1, &err)) {
        FZ_CHECK(ERR_peek_error() == 0);
        SSL_CTX_free(ctx);
        return NULL;
    }
    if (tls12)
        FZ_CHECK(SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION) == 1);
    return ctx;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const digests[4] = {"SHA256", "SHA1", "SHA384", "SHA512"};
    const unsigned char *p = data + 1;
    X509 *cert;
    EVP_PKEY *key;
    BIO *bio;
    char *pem;
    long pem_len;
    SSL_CTX *sctx = NULL, *cctx = NULL;
    unsigned opts;
    int round;
    unsigned long long epoch;
    if (ec_key == NULL)
        init();
    if (size < 2)
        return 0;
    fz_rand_reset(0, 2);
    opts = data[0];
    cert = d2i_X509(NULL, &p, (long)(size - 1));
    if (cert == NULL) {
        ERR_clear_error();
        return 0;
    }
    key = opts & 4 ? ed_key : ec_key;
    if (!X509_set_pubkey(cert, key)
        || !X509_sign(cert, key, opts & 4 ? NULL : EVP_get_digestbyname(digests[opts & 3]))) {
        ERR_clear_error();
        X509_free(cert);
        return 0;
    }
    bio = BIO_new(BIO_s_mem());
    FZ_CHECK(bio != NULL && PEM_write_bio_X509(bio, cert) == 1);
    X509_free(cert);
    pem_len = BIO_get_mem_data(bio, &pem);
    sctx = ctx_with(1, pem, (size_t)pem_len, key, opts & 8);
    cctx = ctx_with(0, pem, (size_t)pem_len, key, 0);
    BIO_free(bio);
    if (sctx == NULL || cctx == NULL)
        goto done;
    FZ_CHECK(sp_ctx_track_sessions(cctx) == 1);
    epoch = sp_ctx_forget_sessions(cctx);
    for (round = 0; round < 2; round++) {
        sp_err err;
        size_t step;
        int is_ip = (opts >> 4) & 1;
        const char *host = is_ip ? "127.0.0.1" : "localhost";
        sp_conn *cl = sp_ctx_open_conn(cctx, 0, -1, SP_VERIFY_PEER, host, is_ip, 1, NULL, 0,
                                       "localhost", 443, epoch, &err, &step);
        sp_conn *sv = sp_ctx_open_conn(sctx, 1, -1, (opts & 32) ? SP_VERIFY_PEER : 0,
                                       (opts & 64) ? "localhost" : NULL, 0, 1, NULL, 0, NULL, 0, 0,
                                       &err, &step);
        FZ_CHECK(cl != NULL && sv != NULL);
        if (connect_pair(cl, sv)) {
            fz_check_facts(cl);
            fz_check_facts(sv);
            if (fz_verbose())
                fprintf(stderr, "fuzz: connected (round %d, resumed %d)\n", round,
                        sp_conn_session_reused(cl));
        }
        (void)sp_shutdown(cl, &err);
        (void)sp_shutdown(sv, &err);
        sp_conn_free(cl);
        sp_conn_free(sv);
        FZ_CHECK(ERR_peek_error() == 0);
    }
done:
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
    ERR_clear_error();
    return 0;
}
