/* fuzz_load.c - the loaders of sp_ctx.c on arbitrary bytes: private keys (PEM and DER, with
 * and without a password, RSA only or not), certificate chains, verify PEM bundles, client CA
 * lists, DH parameters, and the PEM roots of a system store. Each load runs on a fresh
 * context (a failed load must leave it as it was: checked), and a key that loads is then
 * used with a context that has a certificate (mismatch) and one that has none.
 *
 * And a ("directory", path) verify source (sp_dir.c): the bytes are the hashed directory's file
 * for the issuer of the fixed EC certificate (<hash>.0, and .1 too), which a verification of
 * that certificate then reads.
 *
 * Input: [0] which loader (low 4 bits, modulo 9) and its options (bits 4, 5), [1] the
 * password, then the bytes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/pem.h>

#include "fz_common.h"
#include "fz_creds.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static SSL_CTX *fresh(int is_server)
{
    sp_err err;
    SSL_CTX *ctx = sp_ctx_new(is_server, &err);
    FZ_CHECK(ctx != NULL);
    return ctx;
}

/* After a load: its result, the record, and an empty error queue. */
static void check_load(int ok, const sp_err *err)
{
    FZ_CHECK(ok == 0 || ok == 1);
    FZ_CHECK(memchr(err->text, '\0', sizeof err->text) != NULL);
    FZ_CHECK(ERR_peek_error() == 0);
    if (!ok)
        FZ_CHECK(err->ssl_error <= 0 && err->ssl_error >= SP_LOAD_BAD_PASSWORD);
}

static int store_objects(SSL_CTX *ctx)
{
    X509_STORE *store = SSL_CTX_get_cert_store(ctx);
    int n;
    FZ_CHECK(X509_STORE_lock(store));
    n = sk_X509_OBJECT_num(X509_STORE_get0_objects(store));
    X509_STORE_unlock(store);
    return n;
}

static void use_key(EVP_PKEY *key, int need_certificate)
{
    sp_err err;
    SSL_CTX *ctx = fresh(1);
    int ok = sp_ctx_use_private_key(ctx, key, need_certificate, &err);
    check_load(ok, &err);
    if (need_certificate)
        FZ_CHECK(!ok && err.ssl_error == SP_LOAD_MISMATCH);
    SSL_CTX_free(ctx);
    /* a context that serves the fixed EC certificate: only its own key may join it */
    ctx = fresh(1);
    FZ_CHECK(sp_ctx_use_chain_pem(ctx, (const unsigned char *)FZ_EC_CERT, strlen(FZ_EC_CERT),
                                  &err));
    ok = sp_ctx_use_private_key(ctx, key, need_certificate, &err);
    check_load(ok, &err);
    SSL_CTX_free(ctx);
}

static void load_key(const uint8_t *p, size_t n, int der, int rsa_only, const char *pw,
                     int need_certificate)
{
    sp_err err;
    EVP_PKEY *key = sp_load_private_key(p, n, der, rsa_only, pw, &err);
    FZ_CHECK(memchr(err.text, '\0', sizeof err.text) != NULL);
    FZ_CHECK(ERR_peek_error() == 0);
    if (key == NULL) {
        FZ_CHECK(err.ssl_error <= 0 && err.ssl_error >= SP_LOAD_BAD_PASSWORD);
        if (err.ssl_error == SP_LOAD_ENCRYPTED)
            FZ_CHECK(pw == NULL && der);
        return;
    }
    if (rsa_only)
        FZ_CHECK(EVP_PKEY_base_id(key) == EVP_PKEY_RSA
                 || EVP_PKEY_base_id(key) == EVP_PKEY_RSA_PSS);
    use_key(key, need_certificate);
    EVP_PKEY_free(key);
}

static void load_chain(const uint8_t *p, size_t n, int key_first)
{
    sp_err err;
    SSL_CTX *ctx = fresh(1);
    int ok;
    if (key_first) { /* a key alone first: the chain's leaf must go with it */
        EVP_PKEY *key = sp_load_private_key((const unsigned char *)FZ_EC_KEY, strlen(FZ_EC_KEY),
                                            0, 0, NULL, &err);
        FZ_CHECK(key != NULL && sp_ctx_use_private_key(ctx, key, 0, &err));
        EVP_PKEY_free(key);
    }
    ok = sp_ctx_use_chain_pem(ctx, p, n, &err);
    check_load(ok, &err);
    if (!ok) /* (a failed load changes nothing) */
        FZ_CHECK(SSL_CTX_get0_certificate(ctx) == NULL);
    else
        FZ_CHECK(SSL_CTX_get0_certificate(ctx) != NULL);
    if (ok && key_first)
        FZ_CHECK(SSL_CTX_get0_privatekey(ctx) != NULL
                 && X509_check_private_key(SSL_CTX_get0_certificate(ctx),
                                           SSL_CTX_get0_privatekey(ctx)) == 1);
    ERR_clear_error();
    SSL_CTX_free(ctx);
}

static void load_verify(const uint8_t *p, size_t n)
{
    sp_err err;
    SSL_CTX *ctx = fresh(0);
    int before = store_objects(ctx);
    int ok = sp_ctx_load_verify_pem(ctx, p, n, &err);
    check_load(ok, &err);
    if (!ok) /* all or nothing */
        FZ_CHECK(store_objects(ctx) == before);
    else
        FZ_CHECK(store_objects(ctx) > before);
    SSL_CTX_free(ctx);
}

static void load_client_ca(const uint8_t *p, size_t n)
{
    sp_err err;
    SSL_CTX *ctx = fresh(1);
    int ok = sp_ctx_load_client_ca_pem(ctx, p, n, &err);
    check_load(ok, &err);
    if (!ok)
        FZ_CHECK(sk_X509_NAME_num(SSL_CTX_get_client_CA_list(ctx)) <= 0);
    else
        FZ_CHECK(sk_X509_NAME_num(SSL_CTX_get_client_CA_list(ctx)) > 0);
    SSL_CTX_free(ctx);
}

static void load_dh(const uint8_t *p, size_t n)
{
    sp_err err;
    SSL_CTX *ctx = fresh(1);
    int ok = sp_ctx_set_dh_pem(ctx, p, n, &err);
    FZ_CHECK(ok == 0 || ok == 1);
    FZ_CHECK(memchr(err.text, '\0', sizeof err.text) != NULL);
    FZ_CHECK(ERR_peek_error() == 0);
    SSL_CTX_free(ctx);
}

static void add_roots(const uint8_t *p, size_t n)
{
    SSL_CTX *ctx = fresh(0);
    int before = store_objects(ctx);
    int ok = sp_ctx_add_pem_roots(ctx, p, n);
    FZ_CHECK(ok == 0 || ok == 1);
    FZ_CHECK(ERR_peek_error() == 0);
    FZ_CHECK(ok ? store_objects(ctx) > before : store_objects(ctx) == before);
    SSL_CTX_free(ctx);
}

/* The hashed directory (made once, removed at exit) and the certificate verified through it. */
static char dir[64];
static char dir_files[2][128];
static X509 *leaf;

static void remove_dir(void)
{
    unlink(dir_files[0]);
    unlink(dir_files[1]);
    rmdir(dir);
    X509_free(leaf);
}

static void make_dir(void)
{
    BIO *bio = BIO_new_mem_buf(FZ_EC_CERT, -1);
    unsigned long hash;
    int i;
    FZ_CHECK(bio != NULL);
    leaf = PEM_read_bio_X509(bio, NULL, NULL, NULL);
    BIO_free(bio);
    FZ_CHECK(leaf != NULL);
    strcpy(dir, "/tmp/sslports-fuzz-dir-XXXXXX");
    FZ_CHECK(mkdtemp(dir) != NULL);
    hash = X509_NAME_hash_ex(X509_get_issuer_name(leaf), NULL, NULL, NULL);
    for (i = 0; i < 2; i++)
        snprintf(dir_files[i], sizeof dir_files[i], "%s/%08lx.%d", dir, hash & 0xffffffffUL, i);
    atexit(remove_dir);
}

static void write_file(const char *path, const uint8_t *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    FZ_CHECK(f != NULL);
    FZ_CHECK(n == 0 || fwrite(p, 1, n, f) == n);
    FZ_CHECK(fclose(f) == 0);
}

static void verify_dir(const uint8_t *p, size_t n, int two)
{
    SSL_CTX *ctx = fresh(0);
    X509_STORE_CTX *vctx = X509_STORE_CTX_new();
    write_file(dir_files[0], p, n);
    if (two)
        write_file(dir_files[1], p, n);
    else
        unlink(dir_files[1]);
    FZ_CHECK(sp_ctx_add_verify_dir(ctx, dir) == 1);
    FZ_CHECK(sp_ctx_add_verify_dir(ctx, dir) == 1); /* (once is enough: the same lookup) */
    FZ_CHECK(vctx != NULL && X509_STORE_CTX_init(vctx, SSL_CTX_get_cert_store(ctx), leaf, NULL));
    if (X509_verify_cert(vctx) == 1 && fz_verbose())
        fprintf(stderr, "fuzz: verified through the directory\n");
    else if (fz_verbose())
        fprintf(stderr, "fuzz: not verified: %s\n",
                X509_verify_cert_error_string(X509_STORE_CTX_get_error(vctx)));
    ERR_clear_error(); /* (X509_verify_cert's own; the lookup leaves the queue as it was) */
    X509_STORE_CTX_free(vctx);
    SSL_CTX_free(ctx);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *passwords[4] = {NULL, FZ_KEY_PASSWORD, "", "wrong"};
    static int ready;
    const uint8_t *p;
    size_t n;
    unsigned op;
    const char *pw;
    if (!ready) {
        fz_no_prompt_install();
        make_dir();
        ready = 1;
    }
    if (size < 2)
        return 0;
    op = data[0];
    pw = passwords[data[1] & 3];
    p = data + 2;
    n = size - 2;
    switch ((op & 15) % 9) {
    case 0: /* PEM key */
        load_key(p, n, 0, (op >> 4) & 1, pw, (op >> 5) & 1);
        break;
    case 1: /* DER key */
        load_key(p, n, 1, (op >> 4) & 1, pw, (op >> 5) & 1);
        break;
    case 2:
        load_chain(p, n, 0);
        break;
    case 3:
        load_chain(p, n, 1);
        break;
    case 4:
        load_verify(p, n);
        break;
    case 5:
        load_client_ca(p, n);
        break;
    case 6:
        load_dh(p, n);
        break;
    case 7:
        add_roots(p, n);
        break;
    default:
        verify_dir(p, n, (op >> 4) & 1);
        break;
    }
    FZ_CHECK(ERR_peek_error() == 0);
    return 0;
}
