/* gen_seeds.c - record the seed corpora of fuzz_server and fuzz_client: real handshakes (and
 * what follows them) between the harness's own target, set up and driven exactly as the
 * harness does it (fz_common.c, randomness stream 0), and a peer that is a second pump of
 * ours (stream 1). What the peer sent, after a header that sets the target up the same way,
 * is the seed: since the target draws the same random bytes in the harness, it replays to
 * the end (DETERMINISM in fz_common.h).
 *
 *   gen_seeds OUTDIR      writes OUTDIR/server/<name>-<n> and OUTDIR/client/<name>-<n> */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fz_common.h"
#include "fz_creds.h"

typedef struct scenario {
    const char *name;
    int target_server;
    unsigned flags;          /* the target's FZ_* */
    const char *ciphers;     /* the peer's TLS <= 1.2 cipher list (it then speaks 1.2), or NULL */
    const char *sni;         /* a client peer's SNI, or NULL */
    int alpn;                /* a client peer offers ALPN */
    int peer_cert;           /* a client peer has a certificate and offers post-handshake auth */
    int peer_reauth;         /* a server peer asks for the client's certificate once established */
    int peer_keyupdate;      /* the peer sends a KeyUpdate (TLS 1.3) */
    size_t peer_write;       /* plaintext the peer sends once established */
} scenario;

static const scenario scenarios[] = {
    /* server targets: the peer is a client */
    {"tls13", 1, 0, NULL, "localhost", 1, 0, 0, 0, 40},
    {"tls13-sni-switch-cert", 1, FZ_VERIFY, NULL, "sni.example.test", 1, 1, 0, 0, 40},
    {"tls13-pha", 1, FZ_REAUTH, NULL, "localhost", 0, 1, 0, 1, 3000},
    {"tls13-small", 1, FZ_SMALLREAD | FZ_BIGWRITE, NULL, NULL, 0, 0, 0, 1, 20000},
    {"tls12-ecdhe", 1, FZ_TLS12, NULL, "localhost", 1, 0, 0, 0, 40},
    {"tls12-rsa-cbc", 1, 0, "AES128-SHA", "localhost", 0, 0, 0, 0, 40},
    {"tls12-reneg", 1, FZ_TLS12 | FZ_REAUTH, NULL, "localhost", 0, 1, 0, 0, 40},
    {"tls12-chacha", 1, FZ_TLS12 | FZ_VERIFY, "ECDHE-RSA-CHACHA20-POLY1305", NULL, 0, 1, 0, 0, 40},
    {"sni-fails", 1, 0, NULL, "fail.example", 0, 0, 0, 0, 0},
    /* client targets: the peer is a server */
    {"tls13", 0, FZ_ALPN, NULL, NULL, 0, 0, 0, 0, 40},
    {"tls13-pha", 0, FZ_VERIFY, NULL, NULL, 0, 0, 1, 1, 3000},
    {"tls13-sni", 0, FZ_REAUTH | FZ_SMALLREAD, NULL, NULL, 0, 0, 0, 1, 20000},
    {"tls12-ecdhe", 0, FZ_TLS12 | FZ_ALPN, NULL, NULL, 0, 0, 0, 0, 40},
    {"tls12-rsa-cbc", 0, 0, "AES128-SHA", NULL, 0, 0, 0, 0, 40},
    {"tls12-reneg", 0, FZ_TLS12 | FZ_WRITES, NULL, NULL, 0, 0, 1, 0, 40},
    {"tls12-reneg-verify", 0, FZ_TLS12 | FZ_VERIFY, NULL, NULL, 0, 0, 1, 0, 40},
};

typedef struct buf {
    unsigned char *p;
    size_t len, cap;
} buf;

static void append(void *arg, const uint8_t *data, size_t len)
{
    buf *b = arg;
    if (b->len + len > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + len)
            cap *= 2;
        b->p = realloc(b->p, cap);
        FZ_CHECK(b->p != NULL);
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, len);
    b->len += len;
}

typedef struct peer {
    SSL_CTX *ctx;
    sp_conn *c;
    const scenario *sc;
    int established, ended;
} peer;

static void peer_identity(SSL_CTX *ctx, const char *cert, const char *key)
{
    sp_err err;
    EVP_PKEY *k;
    FZ_CHECK(sp_ctx_use_chain_pem(ctx, (const unsigned char *)cert, strlen(cert), &err));
    k = sp_load_private_key((const unsigned char *)key, strlen(key), 0, 0, NULL, &err);
    FZ_CHECK(k != NULL && sp_ctx_use_private_key(ctx, k, 1, &err));
    EVP_PKEY_free(k);
}

static void peer_open(peer *p, const scenario *sc)
{
    static const unsigned char alpn[] = "\x02h2\x08http/1.1";
    sp_err err;
    size_t step;
    int is_server = !sc->target_server;
    fz_rand_select(1);
    memset(p, 0, sizeof *p);
    p->sc = sc;
    p->ctx = sp_ctx_new(is_server, &err);
    FZ_CHECK(p->ctx != NULL);
    if (is_server) {
        peer_identity(p->ctx, FZ_EC_CERT, FZ_EC_KEY);
        peer_identity(p->ctx, FZ_RSA_CERT, FZ_RSA_KEY);
        FZ_CHECK(sp_ctx_load_verify_pem(p->ctx, (const unsigned char *)FZ_CLIENT_CERT,
                                        strlen(FZ_CLIENT_CERT), &err));
    } else if (sc->peer_cert) {
        peer_identity(p->ctx, FZ_CLIENT_CERT, FZ_CLIENT_KEY);
    }
    if (sc->ciphers != NULL) {
        FZ_CHECK(SSL_CTX_set_cipher_list(p->ctx, sc->ciphers) == 1);
        FZ_CHECK(SSL_CTX_set_max_proto_version(p->ctx, TLS1_2_VERSION) == 1);
    }
    p->c = sp_ctx_open_conn(p->ctx, is_server, -1,
                            !is_server && sc->peer_cert ? SP_VERIFY_POST_HANDSHAKE : 0,
                            is_server ? NULL : sc->sni, 0, 0, sc->alpn ? alpn : NULL,
                            sc->alpn ? sizeof alpn - 1 : 0, NULL, 0, 0, &err, &step);
    FZ_CHECK(p->c != NULL);
    fz_rand_select(0);
}

/* The peer's output, recorded and fed to the target. */
static void peer_flush(peer *p, fz_target *t, buf *rec)
{
    unsigned char b[16384];
    size_t n;
    fz_rand_select(1);
    while ((n = sp_take(p->c, b, sizeof b)) > 0) {
        append(rec, b, n);
        fz_target_feed(t, b, n);
        fz_rand_select(1);
    }
    fz_rand_select(0);
}

static void peer_write(peer *p, fz_target *t, buf *rec, size_t len)
{
    static unsigned char data[100000];
    size_t done = 0;
    memset(data, 'p', len);
    while (done < len) {
        size_t n = 0;
        sp_err err;
        int st;
        fz_rand_select(1);
        st = sp_write(p->c, data + done, len - done, &n, 0, &err);
        done += n;
        peer_flush(p, t, rec);
        if (st != SP_OK && st != SP_WANT_WRITE)
            break;
    }
}

static void peer_pump(peer *p, fz_target *t, buf *rec)
{
    unsigned char b[16384];
    sp_err err;
    fz_rand_select(1);
    if (!p->established) {
        int st = sp_handshake(p->c, 0, &err);
        if (st == SP_WANT_READ) {
            peer_flush(p, t, rec);
            return;
        }
        if (st != SP_OK) {
            fprintf(stderr, "gen_seeds: %s: the peer's handshake failed: %s\n", p->sc->name,
                    err.text);
            p->ended = 1;
            peer_flush(p, t, rec);
            return;
        }
        p->established = 1;
        peer_flush(p, t, rec);
        if (p->sc->peer_write > 0)
            peer_write(p, t, rec, p->sc->peer_write);
        if (p->sc->peer_keyupdate) {
            fz_rand_select(1);
            sp_conn_lock(p->c);
            FZ_CHECK(SSL_key_update(sp_conn_ssl(p->c), SSL_KEY_UPDATE_REQUESTED) == 1);
            sp_conn_unlock(p->c);
            peer_write(p, t, rec, 10);
        }
        if (p->sc->peer_reauth) {
            fz_rand_select(1);
            FZ_CHECK(sp_request_reauth(p->c, SP_VERIFY_PEER | SP_VERIFY_REQUIRE, &err) == 1);
            peer_flush(p, t, rec);
        }
    }
    for (;;) {
        size_t got = 0;
        int st;
        fz_rand_select(1);
        st = sp_read(p->c, b, sizeof b, 0, &got, 0, &err);
        peer_flush(p, t, rec);
        if (st != SP_OK) {
            p->ended = st != SP_WANT_READ;
            break;
        }
    }
}

static void write_file(const char *dir, const char *name, int n, const unsigned char *head,
                       const buf *rec)
{
    char path[4096];
    FILE *f;
    snprintf(path, sizeof path, "%s/%s-%d", dir, name, n);
    f = fopen(path, "wb");
    FZ_CHECK(f != NULL);
    FZ_CHECK(fwrite(head, 1, FZ_HEADER, f) == FZ_HEADER);
    FZ_CHECK(rec->len == 0 || fwrite(rec->p, 1, rec->len, f) == rec->len);
    FZ_CHECK(fclose(f) == 0);
}

static void record(const scenario *sc, const char *outdir)
{
    char dir[4096];
    fz_target t;
    peer p;
    buf rec = {NULL, 0, 0}, to_peer = {NULL, 0, 0};
    unsigned char head[FZ_HEADER];
    int round;
    snprintf(dir, sizeof dir, "%s/%s", outdir, sc->target_server ? "server" : "client");
    FZ_CHECK(mkdir(dir, 0755) == 0 || errno == EEXIST);
    fz_begin_input();
    fz_rand_reset(1, 0x9eeb0000u + (uint64_t)(sc - scenarios));
    fz_target_open(&t, sc->target_server, sc->flags, 0);
    t.sink = append;
    t.sink_arg = &to_peer;
    peer_open(&p, sc);
    fz_target_feed(&t, (const uint8_t *)"", 0); /* (a client target's hello) */
    for (round = 0; round < 200 && !p.ended; round++) {
        size_t before = rec.len;
        int moved = to_peer.len > 0;
        fz_target_take(&t);
        if (to_peer.len > 0) {
            fz_rand_select(1);
            FZ_CHECK(sp_feed(p.c, to_peer.p, to_peer.len) == 1);
            to_peer.len = 0;
            moved = 1;
        }
        peer_pump(&p, &t, &rec);
        if (!moved && rec.len == before)
            break;
    }
    if (!p.ended) { /* the peer closes: close_notify */
        sp_err err;
        fz_rand_select(1);
        (void)sp_shutdown(p.c, &err);
        peer_flush(&p, &t, &rec);
    }
    fz_target_finish(&t);
    fprintf(stderr, "gen_seeds: %s/%s: %zu bytes, target %s, end %d\n", dir, sc->name, rec.len,
            t.established ? "established" : "NOT established", t.end);
    head[0] = (unsigned char)sc->flags;
    head[1] = 0x12;
    head[2] = 0x34;
    head[3] = 0; /* all at once */
    write_file(dir, sc->name, 0, head, &rec);
    head[3] = 40; /* chunks of 1..320 bytes */
    write_file(dir, sc->name, 1, head, &rec);
    fz_target_close(&t);
    sp_conn_free(p.c);
    SSL_CTX_free(p.ctx);
    free(rec.p);
    free(to_peer.p);
}

int main(int argc, char **argv)
{
    size_t i;
    if (argc != 2) {
        fprintf(stderr, "usage: gen_seeds OUTDIR\n");
        return 2;
    }
    FZ_CHECK(mkdir(argv[1], 0755) == 0 || errno == EEXIST);
    fz_init();
    for (i = 0; i < sizeof scenarios / sizeof scenarios[0]; i++)
        record(&scenarios[i], argv[1]);
    return 0;
}
