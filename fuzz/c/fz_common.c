/* fz_common.c - see fz_common.h. */
#define OPENSSL_SUPPRESS_DEPRECATED /* RAND_set_rand_method: the one way to fix every draw */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <errno.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/rand.h>
#include <openssl/ui.h>

#include "fz_common.h"
#include "fz_creds.h"

int fz_verbose(void)
{
    static int v = -1;
    if (v < 0)
        v = getenv("FZ_VERBOSE") != NULL;
    return v;
}

void fz_fail(const char *what, const char *file, int line)
{
    fprintf(stderr, "fuzz invariant broken: %s (%s:%d)\n", what, file, line);
    ERR_print_errors_fp(stderr);
    abort();
}

/* ---- randomness ------------------------------------------------------------------------ */

static uint64_t rng_state[2];
static int rng_cur;

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static int fz_rand_bytes(unsigned char *buf, int num)
{
    int i;
    for (i = 0; i < num; i++)
        buf[i] = (unsigned char)splitmix(&rng_state[rng_cur]);
    return 1;
}

static int fz_rand_seed(const void *buf, int num)
{
    (void)buf, (void)num;
    return 1;
}

static int fz_rand_add(const void *buf, int num, double entropy)
{
    (void)buf, (void)num, (void)entropy;
    return 1;
}

static int fz_rand_status(void)
{
    return 1;
}

static RAND_METHOD fz_rand_method = {fz_rand_seed, fz_rand_bytes, NULL,
                                     fz_rand_add,  fz_rand_bytes, fz_rand_status};

void fz_rand_install(void)
{
    FZ_CHECK(RAND_set_rand_method(&fz_rand_method) == 1);
}

void fz_rand_reset(int stream, uint64_t seed)
{
    rng_state[stream] = seed;
}

void fz_rand_select(int stream)
{
    rng_cur = stream;
}

/* A fixed clock too: OpenSSL writes time(NULL) into every session, and so into a TLS 1.2
 * server's tickets, which its Finished covers, and the secure-renegotiation data of a later
 * renegotiation then depends on that second (libssl's calls to time() reach this definition).
 * 2027-12-28: after the fixed certificates' notBefore, long before their notAfter. */
#define FZ_TIME ((time_t)1830000000)

time_t time(time_t *t)
{
    if (t != NULL)
        *t = FZ_TIME;
    return FZ_TIME;
}

/* ---- input ---------------------------------------------------------------------------- */

int fz_chunker_init(fz_chunker *ch, const uint8_t *data, size_t size, unsigned *flags)
{
    if (size < FZ_HEADER)
        return 0;
    *flags = data[0];
    ch->state = ((uint32_t)data[1] << 8 | data[2]) * 2654435761u + 1u;
    ch->max = data[3] == 0 ? (size_t)-1 : (size_t)data[3] * 8u;
    ch->p = data + FZ_HEADER;
    ch->n = size - FZ_HEADER;
    return 1;
}

static uint32_t xorshift(uint32_t *s)
{
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *s = x ? x : 1u;
}

const uint8_t *fz_chunker_next(fz_chunker *ch, size_t *len)
{
    const uint8_t *p = ch->p;
    size_t n;
    if (ch->n == 0)
        return NULL;
    n = ch->max == (size_t)-1 ? ch->n : 1u + xorshift(&ch->state) % ch->max;
    if (n > ch->n)
        n = ch->n;
    ch->p += n;
    ch->n -= n;
    *len = n;
    return p;
}

/* ---- the Python callbacks (the CFFI module defines them in the library) ---------------- */

static fz_world world;
static unsigned long long client_epoch; /* the client cache's, this input (fz_begin_input) */

/* SNI as sni.py does it: "sni.example.test" switches to the second context, a name starting
 * with "fail" is a callback that raised (-1), anything else stays. */
int sp_py_sni(sp_conn *c, const char *name, SSL_CTX **switch_to, int *verify_flags)
{
    size_t n;
    FZ_CHECK(c != NULL && name != NULL);
    n = strlen(name);
    FZ_CHECK(n > 0 && n <= TLSEXT_MAXLEN_host_name);
    if (strncmp(name, "fail", 4) == 0)
        return -1;
    if (strcmp(name, "sni.example.test") == 0) {
        *switch_to = world.server_sni;
        *verify_flags = SP_VERIFY_PEER;
        return 1;
    }
    return 0;
}

void sp_py_keylog(const SSL *ssl, const char *line)
{
    FZ_CHECK(ssl != NULL && line != NULL && strlen(line) < 1024);
}

/* The shim must never prompt for a PEM password (sp_ctx.c: no_prompt): OpenSSL's default
 * callback would read the terminal through the default UI method, which is this one now. */
static int prompt_read(UI *ui, UI_STRING *uis)
{
    (void)ui, (void)uis;
    fz_fail("OpenSSL asked for a password (a PEM read without no_prompt)", __FILE__, __LINE__);
    return 0;
}

void fz_no_prompt_install(void)
{
    static UI_METHOD *m;
    if (m != NULL)
        return;
    m = UI_create_method("fuzz: no prompt");
    FZ_CHECK(m != NULL && UI_method_set_reader(m, prompt_read) == 0);
    UI_set_default_method(m);
}

/* ---- the world -------------------------------------------------------------------------- */

static void use_pem_identity(SSL_CTX *ctx, const char *cert, const char *key, const char *pw)
{
    sp_err err;
    EVP_PKEY *k;
    FZ_CHECK(sp_ctx_use_chain_pem(ctx, (const unsigned char *)cert, strlen(cert), &err) == 1);
    k = sp_load_private_key((const unsigned char *)key, strlen(key), 0, 0, pw, &err);
    FZ_CHECK(k != NULL);
    FZ_CHECK(sp_ctx_use_private_key(ctx, k, 1, &err) == 1);
    EVP_PKEY_free(k);
}

static void trust(SSL_CTX *ctx, const char *pem)
{
    sp_err err;
    FZ_CHECK(sp_ctx_load_verify_pem(ctx, (const unsigned char *)pem, strlen(pem), &err) == 1);
}

static SSL_CTX *new_ctx(int is_server)
{
    sp_err err;
    SSL_CTX *ctx = sp_ctx_new(is_server, &err);
    FZ_CHECK(ctx != NULL);
    return ctx;
}

static void free_world(void)
{
    SSL_CTX_free(world.server);
    SSL_CTX_free(world.server_sni);
    SSL_CTX_free(world.client);
    memset(&world, 0, sizeof world);
}

#define FZ_INIT_SEED 0x5eed0001u
#define FZ_INPUT_SEED 0x5eed0002u

fz_world *fz_init(void)
{
    static const unsigned char alpn[] = "\x02h2\x08http/1.1";
    sp_err err;
    if (world.server != NULL)
        return &world;
    fz_rand_install();
    fz_no_prompt_install();
    fz_rand_reset(0, FZ_INIT_SEED);
    fz_rand_select(0);
    world.server = new_ctx(1);
    use_pem_identity(world.server, FZ_RSA_CERT, FZ_RSA_KEY, NULL);
    use_pem_identity(world.server, FZ_EC_CERT, FZ_EC_KEY_ENC, FZ_KEY_PASSWORD);
    trust(world.server, FZ_CLIENT_CERT);
    FZ_CHECK(sp_ctx_load_client_ca_pem(world.server, (const unsigned char *)FZ_CLIENT_CERT,
                                       strlen(FZ_CLIENT_CERT), &err) == 1);
    FZ_CHECK(sp_ctx_set_dh_pem(world.server, (const unsigned char *)FZ_DH_PEM, strlen(FZ_DH_PEM),
                               &err) == 1);
    FZ_CHECK(sp_ctx_set_server_alpn(world.server, alpn, sizeof alpn - 1, 1) == 1);
    sp_ctx_enable_sni(world.server);
    sp_ctx_enable_keylog(world.server, 1);

    world.server_sni = new_ctx(1);
    use_pem_identity(world.server_sni, FZ_EC_CERT, FZ_EC_KEY, NULL);
    trust(world.server_sni, FZ_CLIENT_CERT);
    FZ_CHECK(sp_ctx_set_server_alpn(world.server_sni, alpn + 3, sizeof alpn - 4, 0) == 1);
    sp_ctx_seal(world.server_sni);

    world.client = new_ctx(0);
    use_pem_identity(world.client, FZ_CLIENT_CERT, FZ_CLIENT_KEY, NULL);
    trust(world.client, FZ_EC_CERT);
    trust(world.client, FZ_RSA_CERT);
    FZ_CHECK(sp_ctx_track_sessions(world.client) == 1);
    sp_ctx_enable_keylog(world.client, 1);
    FZ_CHECK(ERR_peek_error() == 0);
    atexit(free_world); /* (LeakSanitizer: nothing of ours left at exit) */
    return &world;
}

void fz_begin_input(void)
{
    fz_rand_reset(0, FZ_INPUT_SEED);
    fz_rand_select(0);
    SSL_CTX_flush_sessions(world.server, 0);
    SSL_CTX_flush_sessions(world.server_sni, 0);
    client_epoch = sp_ctx_forget_sessions(world.client);
}

/* ---- checks ----------------------------------------------------------------------------- */

int fz_status_known(int s)
{
    return s == SP_OK || s == SP_WANT_READ || s == SP_WANT_WRITE || s == SP_EOF
           || s == SP_RAGGED_EOF || s == SP_ERROR;
}

void fz_check_err(const sp_err *err)
{
    FZ_CHECK(memchr(err->text, '\0', sizeof err->text) != NULL);
    FZ_CHECK(err->nerrs > 0 || err->sys_errno != 0 || err->ssl_error != 0);
}

void fz_check_facts(sp_conn *c)
{
    unsigned char out[EVP_MAX_MD_SIZE + 64];
    char names[4096];
    char *big;
    size_t need, len, off;
    sp_err err;
    int i;
    (void)sp_peer_verified(c);
    need = sp_peer_hostnames(c, NULL, 0, &err);
    big = malloc(need + 1);
    FZ_CHECK(big != NULL);
    FZ_CHECK(sp_peer_hostnames(c, big, need, &err) == need);
    /* each name: 4-byte big-endian length, then its bytes; they fill the answer exactly */
    for (off = 0; off < need; off += 4 + len) {
        FZ_CHECK(need - off >= 4);
        len = (size_t)(unsigned char)big[off] << 24 | (size_t)(unsigned char)big[off + 1] << 16
              | (size_t)(unsigned char)big[off + 2] << 8 | (unsigned char)big[off + 3];
        FZ_CHECK(len <= need - off - 4);
    }
    free(big);
    (void)sp_peer_check_hostname(c, "localhost", 9, 0);
    (void)sp_peer_check_hostname(c, "a.example.test", 14, 0);
    (void)sp_peer_check_hostname(c, "127.0.0.1", 9, 1);
    (void)sp_peer_check_hostname(c, "::1", 3, 1);
    for (i = 0; i < 2; i++) {
        memset(names, 'x', sizeof names);
        if (sp_peer_name(c, i, names, 256))
            FZ_CHECK(memchr(names, '\0', 256) != NULL);
    }
    for (i = SP_CB_TLS_UNIQUE; i <= SP_CB_TLS_EXPORTER + 1; i++) {
        len = 0;
        if (sp_channel_binding(c, i, out, sizeof out, &len, &err))
            FZ_CHECK(len > 0 && len <= sizeof out);
        else
            FZ_CHECK(memchr(err.text, '\0', sizeof err.text) != NULL);
    }
    (void)sp_export_keying_material(c, out, 32, "EXPORTER-fuzz", 13, (const unsigned char *)"c", 1,
                                    1, &err);
    FZ_CHECK(sp_conn_version(c) != 0);
    (void)sp_conn_cipher(c);
    i = sp_conn_alpn(c, out, 255);
    FZ_CHECK(i >= -1 && i <= 255);
    (void)sp_conn_session_reused(c);
    (void)sp_reauth_pending(c);
    FZ_CHECK(ERR_peek_error() == 0);
}

/* ---- the target ------------------------------------------------------------------------- */

int fz_target_open(fz_target *t, int is_server, unsigned flags, int socket_mode)
{
    static const unsigned char alpn[] = "\x02h2\x08http/1.1";
    sp_err err;
    size_t step = 0;
    const char *host = NULL;
    int verify = 0;
    memset(t, 0, sizeof *t);
    t->sock[0] = t->sock[1] = -1;
    if (socket_mode) /* (the target's end, and the harness's: the peer's) */
        FZ_CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, t->sock) == 0);
    t->is_server = is_server;
    t->flags = flags;
    t->prng = 0x9e3779b9u ^ flags;
    t->wprng = 0x85ebca6bu ^ flags;
    fz_rand_select(0);
    if (is_server) {
        verify = flags & FZ_VERIFY ? SP_VERIFY_PEER | SP_VERIFY_REQUIRE : 0;
    } else {
        host = flags & FZ_REAUTH ? "sni.example.test" : "localhost";
        verify = SP_VERIFY_PEER | SP_VERIFY_HOSTNAME;
        if (flags & FZ_VERIFY)
            verify |= SP_VERIFY_REQUIRE | SP_VERIFY_POST_HANDSHAKE;
    }
    t->c = sp_ctx_open_conn(is_server ? world.server : world.client, is_server, t->sock[0], verify,
                            host,
                            0, host != NULL, !is_server && (flags & FZ_ALPN) ? alpn : NULL,
                            !is_server && (flags & FZ_ALPN) ? sizeof alpn - 1 : 0,
                            is_server ? NULL : host, 443, client_epoch, &err, &step);
    FZ_CHECK(t->c != NULL);
    if (socket_mode) {
        /* A read that waits a whole slice waits in recv(), bounded by the socket's receive
         * timeout (one slice): 1 ms here, so that a chunk that ends inside a record costs a
         * millisecond, not 50 (the pump only sees the timeout expire: EAGAIN). */
        struct timeval tv = {0, 1000};
        FZ_CHECK(setsockopt(t->sock[0], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0);
    }
    if (flags & FZ_TLS12)
        FZ_CHECK(SSL_set_max_proto_version(sp_conn_ssl(t->c), TLS1_2_VERSION) == 1);
    return 1;
}

static void pump(fz_target *t);

/* Socket mode: what the target sent (after sp_flush: what it holds, for this port's writes). */
static void take_socket(fz_target *t)
{
    unsigned char buf[16384];
    sp_err err;
    long n;
    int st = sp_flush(t->c, 0, &err);
    FZ_CHECK(st == SP_OK || st == SP_WANT_WRITE || st == SP_ERROR);
    if (st == SP_ERROR)
        fz_check_err(&err);
    while ((n = (long)recv(t->sock[1], buf, sizeof buf, MSG_DONTWAIT)) > 0)
        if (t->sink != NULL)
            t->sink(t->sink_arg, buf, (size_t)n);
    FZ_CHECK(n == 0 || errno == EAGAIN || errno == EWOULDBLOCK);
}

void fz_target_take(fz_target *t)
{
    unsigned char buf[4096];
    size_t pending;
    fz_rand_select(0);
    if (t->sock[0] >= 0) {
        take_socket(t);
        return;
    }
    while ((pending = sp_pending_out(t->c)) > 0) {
        size_t cap = 1 + xorshift(&t->prng) % sizeof buf;
        size_t n = sp_take(t->c, buf, cap);
        FZ_CHECK(n > 0 && n <= cap && n <= pending);
        FZ_CHECK(sp_pending_out(t->c) == pending - n);
        if (t->sink != NULL)
            t->sink(t->sink_arg, buf, n);
    }
    FZ_CHECK(sp_take(t->c, buf, sizeof buf) == 0);
}

/* A terminal status came back: every later call must say it again. */
static void note_end(fz_target *t, int status, const sp_err *err)
{
    unsigned char buf[16];
    size_t got = 99;
    sp_err again;
    FZ_CHECK(status == SP_EOF || status == SP_RAGGED_EOF || status == SP_ERROR);
    if (status == SP_ERROR) {
        fz_check_err(err);
        if (fz_verbose())
            fprintf(stderr, "fuzz: SP_ERROR: %s (errno %d)\n", err->text, err->sys_errno);
    }
    t->end = status;
    FZ_CHECK(sp_read(t->c, buf, sizeof buf, 0, &got, 0, &again) == status && got == 0);
    if (status == SP_ERROR) {
        FZ_CHECK(sp_conn_broken(t->c));
        FZ_CHECK(again.ssl_error == err->ssl_error && again.sys_errno == err->sys_errno
                 && strcmp(again.text, err->text) == 0);
    }
}

/* The k-th plaintext byte a target writes (fz_run_pair checks what the peer reads). */
static unsigned char pattern(unsigned long long k)
{
    return (unsigned char)((k * 2654435761u) >> 11);
}

/* Write len bytes as ports.py does: on SP_WANT_WRITE take what is queued and go on. */
void fz_target_write(fz_target *t, size_t len)
{
    static unsigned char data[100000];
    size_t done = 0, i;
    int rounds = 0;
    if (len > sizeof data)
        len = sizeof data;
    for (i = 0; i < len; i++)
        data[i] = pattern(t->wrote + i);
    while (done < len && rounds++ < 64) {
        size_t n = 12345, left = len - done;
        sp_err err;
        unsigned long long before = sp_written(t->c);
        uint32_t how = xorshift(&t->wprng);
        int st;
        /* As ports.py writes: an output port's pending bytes and the write that overflows
         * them (sp_write2), a full record held (sp_write_hold), or a plain write. */
        if (how % 3 == 1 && left > 1) {
            size_t head = 1 + (how >> 8) % (left - 1);
            st = sp_write2(t->c, data + done, head, data + done + head, left - head, &n, 0,
                           &err);
        } else if (how % 3 == 2 && left <= 16384) {
            st = sp_write_hold(t->c, data + done, left, &n, 0, &err);
        } else {
            st = sp_write(t->c, data + done, left, &n, 0, &err);
        }
        FZ_CHECK(fz_status_known(st) && st != SP_EOF && st != SP_RAGGED_EOF);
        FZ_CHECK(sp_held_out(t->c) == 0 || t->sock[0] >= 0); /* (stream mode holds none) */
        FZ_CHECK(sp_held_out_try(t->c) >= (t->sock[0] >= 0 ? -1 : 0)
                 && sp_held_out_try(t->c) <= (t->sock[0] >= 0));
        FZ_CHECK(n <= len - done);
        FZ_CHECK(sp_written(t->c) - before == n);
        done += n;
        t->wrote += n;
        if (st == SP_OK) {
            FZ_CHECK(done == len);
            break;
        }
        if (st == SP_ERROR) {
            fz_check_err(&err);
            FZ_CHECK(sp_conn_broken(t->c));
            break;
        }
        if (st == SP_WANT_READ) /* (a renegotiation waits for the peer's flight) */
            break;
        /* SP_WANT_WRITE: something to take */
        FZ_CHECK(t->sock[0] >= 0 || sp_pending_out(t->c) > 0);
        fz_target_take(t);
    }
}

static void on_established(fz_target *t)
{
    sp_err err;
    fz_check_facts(t->c);
    fz_target_write(t, t->flags & FZ_BIGWRITE ? 100000 : 17);
    if (t->is_server && (t->flags & FZ_REAUTH)) {
        int r = sp_request_reauth(t->c, SP_VERIFY_PEER | SP_VERIFY_REQUIRE, &err);
        FZ_CHECK(r == 0 || r == 1 || r == SP_REAUTH_LATER);
        if (r == 0)
            FZ_CHECK(memchr(err.text, '\0', sizeof err.text) != NULL);
        ERR_clear_error(); /* (what Python does after it: see ports.py) */
    }
}

/* Socket mode: the first call after new bytes arrived may wait (one in four: its wait ends at
 * once when they are there, else after the receive timeout, 1 ms here), which takes the path
 * of a read that waits in recv(); every other call is told not to wait (wait_ms 0: a poll()
 * that returns at once), and wants nothing more than what is there. */
static void pump(fz_target *t)
{
    static unsigned char buf[16384];
    int rounds;
    int sock = t->sock[0] >= 0;
    for (rounds = 0; rounds < 10000 && t->end == 0; rounds++) {
        int wait_ms = sock && rounds == 0 && (t->prng & 3) == 0 ? SP_WAIT_SLICE_MS : 0;
        sp_err err;
        int st;
        if (!t->established) {
            st = sp_handshake(t->c, wait_ms, &err);
            FZ_CHECK(st == SP_OK || st == SP_WANT_READ || st == SP_ERROR || st == SP_RAGGED_EOF
                     || (sock && st == SP_WANT_WRITE));
            FZ_CHECK(ERR_peek_error() == 0);
            if (st == SP_WANT_WRITE) {
                take_socket(t);
                continue;
            }
            if (st == SP_WANT_READ)
                return;
            if (st != SP_OK) {
                note_end(t, st, &err);
                return;
            }
            t->established = 1;
            on_established(t);
        } else {
            size_t len = t->flags & FZ_SMALLREAD ? 1 + xorshift(&t->prng) % 16 : sizeof buf;
            /* (ports.py reads both ways: until `want` bytes came, or what is there) */
            size_t want = xorshift(&t->prng) & 1 && wait_ms == 0 ? len : 0;
            size_t got = len + 1;
            st = sp_read(t->c, buf, len, want, &got, wait_ms, &err);
            FZ_CHECK(fz_status_known(st) && (sock || st != SP_WANT_WRITE));
            FZ_CHECK(got <= len);
            FZ_CHECK(ERR_peek_error() == 0);
            if (t->peer != NULL) { /* what it reads is what the peer wrote, in order */
                size_t i;
                FZ_CHECK(t->plain_in + got <= t->peer->wrote);
                for (i = 0; i < got; i++)
                    FZ_CHECK(buf[i] == pattern(t->plain_in + i));
            }
            t->plain_in += got;
            FZ_CHECK(t->plain_in < t->fed); /* (every record costs more than its plaintext) */
            if (st == SP_OK) {
                FZ_CHECK(got > 0);
                continue;
            }
            if (st == SP_WANT_READ || st == SP_WANT_WRITE) {
                FZ_CHECK(got < want || got == 0); /* (short of what was wanted, or nothing) */
                if (st == SP_WANT_WRITE) {
                    take_socket(t);
                    continue;
                }
                return;
            }
            FZ_CHECK(got == 0); /* (data comes with SP_OK; the end is reported next call) */
            note_end(t, st, &err);
            return;
        }
    }
}

/* Socket mode: the bytes into the peer's end. A target that stopped reading (it ended, or
 * its socket BIO waits for its output to be taken) leaves the socket's buffer full: the rest
 * is then dropped, as a peer's kernel would hold it (pump(), with the target's output taken,
 * has its chance first). */
static void feed_socket(fz_target *t, const uint8_t *data, size_t len)
{
    int tries = 0;
    while (len > 0) {
        long n = (long)send(t->sock[1], data, len, MSG_DONTWAIT);
        if (n > 0) {
            data += n;
            len -= (size_t)n;
            continue;
        }
        FZ_CHECK(errno == EAGAIN || errno == EWOULDBLOCK);
        if (t->end != 0 || tries++ == 4)
            return;
        pump(t);
        take_socket(t);
    }
}

void fz_target_feed(fz_target *t, const uint8_t *data, size_t len)
{
    fz_rand_select(0);
    if (t->sock[0] >= 0)
        feed_socket(t, data, len);
    else
        FZ_CHECK(sp_feed(t->c, data, len) == 1);
    t->fed += len;
    pump(t);
    /* (at most 64 times: two ends of a pair that both write after each feed play ping-pong) */
    if (t->established && t->end == 0 && (t->flags & FZ_WRITES) && t->feed_writes < 64
        && !sp_stash_full(t->c)) {
        t->feed_writes++;
        fz_target_write(t, 5);
    }
    if (!(t->flags & FZ_LAZYTAKE))
        fz_target_take(t);
}

void fz_target_finish(fz_target *t)
{
    sp_err err;
    int st;
    fz_rand_select(0);
    if (t->sock[0] >= 0)
        FZ_CHECK(shutdown(t->sock[1], SHUT_WR) == 0);
    else
        sp_feed_eof(t->c);
    pump(t);
    FZ_CHECK(t->end != 0); /* (the EOF was fed: the pump must have reported an end) */
    st = sp_shutdown(t->c, &err);
    FZ_CHECK(st == SP_OK || st == SP_ERROR);
    FZ_CHECK(ERR_peek_error() == 0);
    fz_target_take(t);
    if (t->sock[0] >= 0) { /* what a socket's close does (ports.py) */
        sp_conn_drain_tickets(t->c);
        sp_conn_drop_unread(t->c);
        FZ_CHECK(ERR_peek_error() == 0);
        FZ_CHECK(sp_conn_forked(t->c) == 0);
    }
}

void fz_target_close(fz_target *t)
{
    sp_conn_free(t->c);
    t->c = NULL;
    if (t->sock[0] >= 0) {
        close(t->sock[0]);
        close(t->sock[1]);
    }
    FZ_CHECK(ERR_peek_error() == 0);
}

int fz_run_pump(int is_server, int socket_mode, const uint8_t *data, size_t size)
{
    fz_chunker ch;
    fz_target t;
    unsigned flags;
    const uint8_t *p;
    size_t len;
    fz_init();
    if (!fz_chunker_init(&ch, data, size, &flags))
        return 0;
    fz_begin_input();
    fz_target_open(&t, is_server, flags, socket_mode);
    while ((p = fz_chunker_next(&ch, &len)) != NULL)
        fz_target_feed(&t, p, len);
    fz_target_finish(&t);
    if (fz_verbose())
        fprintf(stderr, "fuzz: %s target, %zu bytes: %s, ended %d\n",
                is_server ? "server" : "client", size,
                t.established ? "established" : "not established", t.end);
    fz_target_close(&t);
    return 0;
}
