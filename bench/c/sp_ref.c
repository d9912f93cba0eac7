/* sp_ref.c - the C reference end for the sslports benchmarks (bench/run_all.py).
 *
 * A plain blocking OpenSSL program: one socket, SSL_set_fd (OpenSSL's socket BIO), SSL_read /
 * SSL_write straight on the application's buffers. It speaks the same trivial protocol as
 * bench/peer.py, so any end can face any other:
 *
 *   client -> server   a 32-byte header (bench/proto.py): "SPB1", mode, flags, wbuf, rbuf,
 *                      count, size (big-endian)
 *   mode up        client sends `size` bytes in `wbuf` writes; server reads with `rbuf`,
 *                  answers one byte.
 *   mode down      server sends `size` bytes in `wbuf` writes; client reads with `rbuf`,
 *                  answers one byte.
 *   mode pingpong  `count` times: client sends `wbuf` bytes, server answers `rbuf` bytes.
 *   mode hs        server answers one byte and closes (handshake rate).
 *   mode idle      server answers one byte and keeps the connection (flags & 1: warm-up, close).
 *   mode echo      server echoes what it reads (reads of up to `rbuf`) until EOF.
 *
 * bio=mem batch=N (either end, bulk and ping-pong modes): OpenSSL talks to two memory BIOs
 * instead, and the program moves ciphertext itself: what SSL_write_ex made goes out in one
 * write() once N bytes of it wait (or before the program waits to read), and a read() takes
 * up to N bytes at a time (the memory-BIO C program of issue 5's bulk target, "fewer, larger
 * system calls"; bench/README.md section 3). bio=pair batch=N: the same through a BIO pair,
 * whose buffers the program reads into and writes from in place (BIO_nwrite0 / BIO_nread0):
 * one copy fewer per byte read than bio=mem's read() into a buffer of its own, then BIO_write.
 *
 * Usage: sp_ref server|client key=value...   (keys: see usage() below)
 * Each run prints one line "RESULT {json}" on stdout; the server first prints "PORT n".
 *
 * Build: cc -O2 -Wall -Wextra -o sp_ref sp_ref.c -lssl -lcrypto   (bench/c/Makefile)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h> /* malloc_trim */
#endif

#include <openssl/err.h>
#include <openssl/ssl.h>

enum { M_UP = 1, M_DOWN = 2, M_PINGPONG = 3, M_HS = 4, M_IDLE = 5, M_ECHO = 6 };

#define HDR_LEN 32

struct opts {
    int server;
    const char *host;
    int port;
    const char *cert, *key, *ca, *suites;
    int tickets;  /* server: TLS 1.3 tickets per handshake (0: no resumption possible) */
    long conns;   /* server: connections to serve */
    int fork_per_conn;
    int mode;     /* client */
    unsigned long long size;
    unsigned long wbuf, rbuf, count;
    long n;       /* client: connections (hs, idle) */
    int resume;
    double start_at, duration;
    int mem_bio;        /* bio=mem (1) or pair (2): ciphertext moved by the program */
    size_t batch;       /* ... in write()s and read()s of up to this many bytes */
};

static struct opts o;

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("sp_ref: ", stderr);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    ERR_print_errors_fp(stderr);
    exit(1);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_of(int who)
{
    struct rusage ru;
    getrusage(who, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6
           + (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static double cpu_now(void)
{
    return cpu_of(RUSAGE_SELF) + cpu_of(RUSAGE_CHILDREN);
}

/* Resident set size now, after handing the heap's free pages back (glibc's malloc_trim), as
 * bench/common.py's rss_bytes does: what the process holds, not what its start-up freed. */
static long rss_bytes(void)
{
    long size = 0, resident = 0;
    FILE *f;
#ifdef __GLIBC__
    malloc_trim(0);
#endif
    f = fopen("/proc/self/statm", "r");
    if (f == NULL)
        return -1;
    if (fscanf(f, "%ld %ld", &size, &resident) != 2)
        resident = -1;
    fclose(f);
    return resident < 0 ? -1 : resident * sysconf(_SC_PAGESIZE);
}

static void sleep_until(double t)
{
    double d = t - now();
    if (d > 0) {
        struct timespec ts;
        ts.tv_sec = (time_t)d;
        ts.tv_nsec = (long)((d - (double)ts.tv_sec) * 1e9);
        nanosleep(&ts, NULL);
    }
}

/* ---- header ---------------------------------------------------------------------------- */

static void put32(unsigned char *p, unsigned long v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static unsigned long get32(const unsigned char *p)
{
    return ((unsigned long)p[0] << 24) | ((unsigned long)p[1] << 16) | ((unsigned long)p[2] << 8)
           | (unsigned long)p[3];
}

struct hdr {
    int mode, flags;
    unsigned long wbuf, rbuf, count;
    unsigned long long size;
};

static void pack_hdr(unsigned char *b, const struct hdr *h)
{
    memset(b, 0, HDR_LEN);
    memcpy(b, "SPB1", 4);
    b[4] = (unsigned char)h->mode;
    b[5] = (unsigned char)h->flags;
    put32(b + 8, h->wbuf);
    put32(b + 12, h->rbuf);
    put32(b + 16, h->count);
    put32(b + 24, (unsigned long)(h->size >> 32));
    put32(b + 28, (unsigned long)(h->size & 0xffffffffu));
}

static int unpack_hdr(const unsigned char *b, struct hdr *h)
{
    if (memcmp(b, "SPB1", 4) != 0)
        return 0;
    h->mode = b[4];
    h->flags = b[5];
    h->wbuf = get32(b + 8);
    h->rbuf = get32(b + 12);
    h->count = get32(b + 16);
    h->size = ((unsigned long long)get32(b + 24) << 32) | get32(b + 28);
    return 1;
}

/* ---- TLS I/O ---------------------------------------------------------------------------- */

/* The connection's socket: OpenSSL's socket BIO, or (bio=mem) the program's own use of it
 * around two memory BIOs. */
static unsigned char *mem_in; /* bio=mem: one read()'s bytes (one connection at a time) */
static BIO *pair_net;         /* bio=pair: the program's end of the connection's pair */
enum { BIO_SOCKET, BIO_MEM, BIO_PAIR };

static void tls_attach(SSL *ssl, int fd)
{
    BIO *rbio, *wbio;
    if (!o.mem_bio) {
        SSL_set_fd(ssl, fd);
        return;
    }
    SSL_set_app_data(ssl, (void *)(intptr_t)fd);
    if (o.mem_bio == BIO_PAIR) { /* (room for one more record than a batch: see tls_write) */
        BIO_free(pair_net); /* (the previous connection's, freed with its SSL) */
        if (!BIO_new_bio_pair(&rbio, 0, &pair_net, o.batch + 20000))
            die("out of memory");
        SSL_set_bio(ssl, rbio, rbio);
        return;
    }
    rbio = BIO_new(BIO_s_mem());
    wbio = BIO_new(BIO_s_mem());
    if (rbio == NULL || wbio == NULL)
        die("out of memory");
    BIO_set_mem_eof_return(rbio, -1); /* empty: "not yet", until the socket's EOF */
    SSL_set_bio(ssl, rbio, wbio);
    if (mem_in == NULL && (mem_in = malloc(o.batch)) == NULL)
        die("out of memory");
}

static int tls_fd(SSL *ssl)
{
    return o.mem_bio ? (int)(intptr_t)SSL_get_app_data(ssl) : SSL_get_fd(ssl);
}

static void write_all(int fd, const char *p, long left)
{
    while (left > 0) {
        ssize_t n = write(fd, p, (size_t)left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            die("write: %s", strerror(errno));
        p += n;
        left -= n;
    }
}

/* bio=mem / pair: everything SSL_write_ex / the handshake made, out in one write() (more when
 * the socket takes less, or the pair's ring buffer wraps). */
static void tls_flush(SSL *ssl)
{
    BIO *wbio = SSL_get_wbio(ssl);
    char *p;
    long left;
    if (!o.mem_bio)
        return;
    if (o.mem_bio == BIO_PAIR) {
        BIO *net = pair_net;
        while ((left = BIO_nread0(net, &p)) > 0) {
            write_all(tls_fd(ssl), p, left);
            BIO_nread(net, &p, (int)left);
        }
        return;
    }
    write_all(tls_fd(ssl), p, BIO_get_mem_data(wbio, &p));
    (void)BIO_reset(wbio);
}

/* bio=mem: OpenSSL wants more ciphertext: send what waits, then one read() of up to `batch`
 * bytes into the read BIO. 0 at the socket's EOF. */
static int tls_fill(SSL *ssl)
{
    ssize_t n;
    tls_flush(ssl);
    if (o.mem_bio == BIO_PAIR) { /* read() straight into the pair's buffer */
        BIO *net = pair_net;
        char *p;
        long room = BIO_nwrite0(net, &p);
        if (room <= 0)
            die("BIO pair full");
        do
            n = read(tls_fd(ssl), p, (size_t)room);
        while (n < 0 && errno == EINTR);
        if (n < 0)
            die("read: %s", strerror(errno));
        if (n == 0) {
            (void)BIO_shutdown_wr(net);
            return 0;
        }
        BIO_nwrite(net, &p, (int)n);
        return 1;
    }
    do
        n = read(tls_fd(ssl), mem_in, o.batch);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        die("read: %s", strerror(errno));
    if (n == 0) {
        BIO_set_mem_eof_return(SSL_get_rbio(ssl), 0);
        return 0;
    }
    if (BIO_write(SSL_get_rbio(ssl), mem_in, (int)n) != (int)n)
        die("BIO_write failed");
    return 1;
}

/* SSL_accept / SSL_connect: 1 when done. */
static int tls_handshake(SSL *ssl, int server)
{
    for (;;) {
        int r = server ? SSL_accept(ssl) : SSL_connect(ssl);
        if (r == 1) {
            tls_flush(ssl);
            return 1;
        }
        if (!o.mem_bio || SSL_get_error(ssl, r) != SSL_ERROR_WANT_READ || !tls_fill(ssl))
            return 0;
    }
}

static int tls_read(SSL *ssl, unsigned char *buf, size_t len, size_t *n)
{
    for (;;) {
        if (SSL_read_ex(ssl, buf, len, n))
            return 1;
        if (!o.mem_bio || SSL_get_error(ssl, 0) != SSL_ERROR_WANT_READ || !tls_fill(ssl))
            return 0;
    }
}

static size_t tls_pending(SSL *ssl)
{
    return o.mem_bio == BIO_PAIR ? BIO_ctrl_pending(pair_net)
                                 : BIO_ctrl_pending(SSL_get_wbio(ssl));
}

/* A pair's buffer holds a batch and one record more: a write that finds it full (WANT_WRITE)
 * sends what waits and goes on. */
static int tls_write(SSL *ssl, const unsigned char *buf, size_t len, size_t *n)
{
    while (!SSL_write_ex(ssl, buf, len, n)) {
        if (o.mem_bio != BIO_PAIR || SSL_get_error(ssl, 0) != SSL_ERROR_WANT_WRITE)
            return 0;
        tls_flush(ssl);
    }
    if (o.mem_bio && tls_pending(ssl) >= o.batch)
        tls_flush(ssl);
    return 1;
}

/* Read exactly len bytes; 0 on EOF or error. */
static int read_full(SSL *ssl, unsigned char *buf, size_t len)
{
    while (len > 0) {
        size_t n = 0;
        if (!tls_read(ssl, buf, len, &n))
            return 0;
        buf += n;
        len -= n;
    }
    return 1;
}

static void write_full(SSL *ssl, const unsigned char *buf, size_t len)
{
    while (len > 0) {
        size_t n = 0;
        if (!tls_write(ssl, buf, len, &n))
            die("SSL_write failed");
        buf += n;
        len -= n;
    }
}

static void send_bytes(SSL *ssl, const unsigned char *chunk, unsigned long wbuf,
                       unsigned long long size)
{
    while (size > 0) {
        size_t n = size < wbuf ? (size_t)size : (size_t)wbuf;
        write_full(ssl, chunk, n);
        size -= n;
    }
}

static void recv_bytes(SSL *ssl, unsigned char *buf, unsigned long rbuf, unsigned long long size)
{
    while (size > 0) {
        size_t n = 0, want = size < rbuf ? (size_t)size : (size_t)rbuf;
        if (!tls_read(ssl, buf, want, &n))
            die("SSL_read failed (early EOF?)");
        size -= n;
    }
}

static unsigned char *alloc_buf(size_t n)
{
    unsigned char *b = malloc(n ? n : 1);
    size_t i;
    if (b == NULL)
        die("out of memory");
    for (i = 0; i < n; i++)
        b[i] = (unsigned char)(i * 131u + 7u);
    return b;
}

static void set_nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static SSL_CTX *make_ctx(int server)
{
    SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    if (ctx == NULL)
        die("SSL_CTX_new failed");
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    if (o.suites && *o.suites && !SSL_CTX_set_ciphersuites(ctx, o.suites))
        die("bad ciphersuites %s", o.suites);
    if (server) {
        if (o.cert == NULL || o.key == NULL)
            die("server needs cert= and key=");
        if (SSL_CTX_use_certificate_chain_file(ctx, o.cert) != 1)
            die("cannot load %s", o.cert);
        if (SSL_CTX_use_PrivateKey_file(ctx, o.key, SSL_FILETYPE_PEM) != 1)
            die("cannot load %s", o.key);
        SSL_CTX_set_num_tickets(ctx, (size_t)o.tickets);
        if (o.tickets == 0)
            SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    } else {
        if (o.ca != NULL) {
            if (SSL_CTX_load_verify_locations(ctx, o.ca, NULL) != 1)
                die("cannot load %s", o.ca);
            SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        }
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT);
    }
    return ctx;
}

/* ---- server ------------------------------------------------------------------------------ */

struct srv_stats {
    double data_cpu;  /* CPU of the data phases (after the header, until the answer) */
    unsigned long long bytes;
    long served, resumed;
    long rss0, rss1;
    char cipher[64];
};

static void keep_cipher(struct srv_stats *st, SSL *ssl)
{
    if (st->cipher[0] == '\0')
        snprintf(st->cipher, sizeof st->cipher, "%s", SSL_get_cipher_name(ssl));
}

/* Serve one accepted socket. Returns 1 when the connection is to be kept open (idle). */
static int serve_one(SSL_CTX *ctx, int fd, struct srv_stats *st, SSL **keep)
{
    unsigned char h[HDR_LEN], ack = 'K';
    struct hdr hd;
    SSL *ssl = SSL_new(ctx);
    double c0;
    int kept = 0;
    set_nodelay(fd);
    tls_attach(ssl, fd);
    if (!tls_handshake(ssl, 1)) {
        ERR_print_errors_fp(stderr);
        SSL_free(ssl);
        close(fd);
        return 0;
    }
    keep_cipher(st, ssl);
    if (SSL_session_reused(ssl))
        st->resumed++;
    if (!read_full(ssl, h, HDR_LEN) || !unpack_hdr(h, &hd))
        die("bad header");
    c0 = cpu_now();
    switch (hd.mode) {
    case M_UP: {
        unsigned char *buf = alloc_buf(hd.rbuf);
        recv_bytes(ssl, buf, hd.rbuf, hd.size);
        write_full(ssl, &ack, 1);
        st->bytes += hd.size;
        free(buf);
        break;
    }
    case M_DOWN: {
        unsigned char *buf = alloc_buf(hd.wbuf);
        send_bytes(ssl, buf, hd.wbuf, hd.size);
        if (!read_full(ssl, &ack, 1))
            die("no ack");
        st->bytes += hd.size;
        free(buf);
        break;
    }
    case M_PINGPONG: {
        unsigned char *req = alloc_buf(hd.wbuf), *resp = alloc_buf(hd.rbuf);
        unsigned long i;
        for (i = 0; i < hd.count; i++) {
            if (!read_full(ssl, req, hd.wbuf))
                die("ping-pong: early EOF");
            write_full(ssl, resp, hd.rbuf);
        }
        free(req);
        free(resp);
        break;
    }
    case M_HS:
        write_full(ssl, &ack, 1);
        break;
    case M_IDLE:
        write_full(ssl, &ack, 1);
        if (!(hd.flags & 1)) {
            *keep = ssl;
            kept = 1;
        }
        break;
    case M_ECHO: {
        unsigned char *buf = alloc_buf(hd.rbuf);
        for (;;) {
            size_t n = 0;
            if (!tls_read(ssl, buf, hd.rbuf, &n))
                break;
            write_full(ssl, buf, n);
            st->bytes += n;
        }
        free(buf);
        break;
    }
    default:
        die("unknown mode %d", hd.mode);
    }
    st->data_cpu += cpu_now() - c0;
    if (!kept) {
        tls_flush(ssl);
        SSL_free(ssl);
        close(fd);
    }
    return kept;
}

static int run_server(void)
{
    struct sockaddr_in a;
    socklen_t alen = sizeof a;
    int one = 1, lfd;
    long i, nkept = 0;
    SSL **kept;
    struct srv_stats st;
    SSL_CTX *ctx = make_ctx(1);
    double t0, c0;
    memset(&st, 0, sizeof st);
    kept = calloc((size_t)o.conns + 1, sizeof *kept);
    lfd = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)o.port);
    inet_pton(AF_INET, o.host, &a.sin_addr);
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(lfd, 1024) != 0)
        die("bind/listen: %s", strerror(errno));
    getsockname(lfd, (struct sockaddr *)&a, &alen);
    printf("PORT %d\n", ntohs(a.sin_port));
    fflush(stdout);
    st.rss0 = rss_bytes();
    t0 = 0;
    c0 = 0;
    for (i = 0; i < o.conns; i++) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0)
            die("accept: %s", strerror(errno));
        if (i == 0) {
            t0 = now();
            c0 = cpu_now();
        }
        if (o.fork_per_conn) {
            pid_t pid = fork();
            if (pid == 0) {
                SSL *k = NULL;
                close(lfd);
                serve_one(ctx, fd, &st, &k);
                _exit(0);
            }
            close(fd);
            st.served++;
            continue;
        }
        if (serve_one(ctx, fd, &st, &kept[nkept])) {
            nkept++;
            st.rss1 = rss_bytes();
        } else if (nkept == 0) {
            st.rss0 = rss_bytes(); /* after the warm-up, before the first kept connection */
        }
        st.served++;
    }
    if (o.fork_per_conn)
        while (wait(NULL) > 0)
            ;
    printf("RESULT {\"impl\": \"c\", \"role\": \"server\", \"served\": %ld, \"resumed\": %ld, "
           "\"bytes\": %llu, \"data_cpu\": %.6f, \"cpu\": %.6f, \"wall\": %.6f, "
           "\"kept\": %ld, \"rss0\": %ld, \"rss1\": %ld, \"cipher\": \"%s\"}\n",
           st.served, st.resumed, st.bytes, st.data_cpu, cpu_now() - c0, now() - t0, nkept,
           st.rss0, st.rss1, st.cipher);
    fflush(stdout);
    if (nkept > 0) { /* wait until the client goes away, then drop everything */
        unsigned char b;
        SSL_read(kept[0], &b, 1);
    }
    for (i = 0; i < nkept; i++) {
        int fd = tls_fd(kept[i]);
        SSL_free(kept[i]);
        close(fd);
    }
    free(kept);
    close(lfd);
    SSL_CTX_free(ctx);
    return 0;
}

/* ---- client ------------------------------------------------------------------------------ */

static SSL *dial(SSL_CTX *ctx, SSL_SESSION *sess, int *reused)
{
    struct sockaddr_in a;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    SSL *ssl;
    unsigned char ip[16];
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)o.port);
    if (inet_pton(AF_INET, o.host, &a.sin_addr) != 1)
        die("host must be an IPv4 literal");
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0)
        die("connect: %s", strerror(errno));
    set_nodelay(fd);
    ssl = SSL_new(ctx);
    tls_attach(ssl, fd);
    if (o.ca != NULL) {
        X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
        if (inet_pton(AF_INET, o.host, ip) == 1)
            X509_VERIFY_PARAM_set1_ip_asc(param, o.host);
        else
            SSL_set1_host(ssl, o.host);
    }
    if (sess != NULL)
        SSL_set_session(ssl, sess);
    if (!tls_handshake(ssl, 0))
        die("SSL_connect failed");
    if (reused != NULL)
        *reused = SSL_session_reused(ssl);
    return ssl;
}

/* Close without close_notify, as the Python ends do. Marking the connection as shut down
 * keeps OpenSSL from invalidating its session on SSL_free (CPython does the same). */
static void hangup(SSL *ssl)
{
    int fd = tls_fd(ssl);
    tls_flush(ssl);
    SSL_set_shutdown(ssl, SSL_get_shutdown(ssl) | SSL_SENT_SHUTDOWN);
    SSL_free(ssl);
    close(fd);
}

static void send_hdr(SSL *ssl, int mode, int flags)
{
    unsigned char b[HDR_LEN];
    struct hdr h;
    h.mode = mode;
    h.flags = flags;
    h.wbuf = o.wbuf;
    h.rbuf = o.rbuf;
    h.count = o.count;
    h.size = o.size;
    pack_hdr(b, &h);
    write_full(ssl, b, HDR_LEN);
}

static void print_client(const char *mode, double wall, double cpu, unsigned long long bytes,
                         long conns, long resumed, long rss0, long rss1, const char *cipher)
{
    printf("RESULT {\"impl\": \"c\", \"role\": \"client\", \"mode\": \"%s\", \"wall\": %.6f, "
           "\"cpu\": %.6f, \"bytes\": %llu, \"conns\": %ld, \"resumed\": %ld, \"rss0\": %ld, "
           "\"rss1\": %ld, \"cipher\": \"%s\"}\n",
           mode, wall, cpu, bytes, conns, resumed, rss0, rss1, cipher);
    fflush(stdout);
}

static int run_client(void)
{
    SSL_CTX *ctx = make_ctx(0);
    char cipher[64] = "";
    unsigned char ack = 'K';
    double t0, c0;
    if (o.mode == M_UP || o.mode == M_DOWN || o.mode == M_PINGPONG) {
        SSL *ssl = dial(ctx, NULL, NULL);
        unsigned char *wb = alloc_buf(o.wbuf), *rb = alloc_buf(o.rbuf);
        snprintf(cipher, sizeof cipher, "%s", SSL_get_cipher_name(ssl));
        t0 = now();
        c0 = cpu_now();
        send_hdr(ssl, o.mode, 0);
        if (o.mode == M_UP) {
            send_bytes(ssl, wb, o.wbuf, o.size);
            if (!read_full(ssl, &ack, 1))
                die("no ack");
        } else if (o.mode == M_DOWN) {
            recv_bytes(ssl, rb, o.rbuf, o.size);
            write_full(ssl, &ack, 1);
        } else {
            unsigned long i;
            for (i = 0; i < o.count; i++) {
                write_full(ssl, wb, o.wbuf);
                if (!read_full(ssl, rb, o.rbuf))
                    die("ping-pong: early EOF");
            }
        }
        print_client(o.mode == M_UP ? "up" : o.mode == M_DOWN ? "down" : "pingpong", now() - t0,
                     cpu_now() - c0, o.mode == M_PINGPONG ? 0 : o.size, 1, 0, 0, 0, cipher);
        hangup(ssl);
        free(wb);
        free(rb);
    } else if (o.mode == M_HS) {
        SSL_SESSION *sess = NULL;
        long i, resumed = 0;
        t0 = now();
        c0 = cpu_now();
        for (i = 0; i < o.n; i++) {
            int reused = 0;
            SSL *ssl = dial(ctx, o.resume ? sess : NULL, &reused);
            resumed += reused;
            send_hdr(ssl, M_HS, 0);
            if (!read_full(ssl, &ack, 1))
                die("no answer");
            if (cipher[0] == '\0')
                snprintf(cipher, sizeof cipher, "%s", SSL_get_cipher_name(ssl));
            if (o.resume) {
                SSL_SESSION_free(sess);
                sess = SSL_get1_session(ssl);
            }
            hangup(ssl);
        }
        print_client("hs", now() - t0, cpu_now() - c0, 0, o.n, resumed, 0, 0, cipher);
        SSL_SESSION_free(sess);
    } else if (o.mode == M_IDLE) {
        SSL **held = calloc((size_t)o.n, sizeof *held), *w;
        long i, rss0, rss1;
        w = dial(ctx, NULL, NULL); /* warm-up: first-use allocations are not per connection */
        send_hdr(w, M_IDLE, 1);
        if (!read_full(w, &ack, 1))
            die("no answer");
        snprintf(cipher, sizeof cipher, "%s", SSL_get_cipher_name(w));
        hangup(w);
        rss0 = rss_bytes();
        t0 = now();
        c0 = cpu_now();
        for (i = 0; i < o.n; i++) {
            held[i] = dial(ctx, NULL, NULL);
            send_hdr(held[i], M_IDLE, 0);
            if (!read_full(held[i], &ack, 1))
                die("no answer");
        }
        rss1 = rss_bytes();
        print_client("idle", now() - t0, cpu_now() - c0, 0, o.n, 0, rss0, rss1, cipher);
        for (i = 0; i < o.n; i++)
            hangup(held[i]);
        free(held);
    } else if (o.mode == M_ECHO) {
        SSL *ssl = dial(ctx, NULL, NULL);
        unsigned char *wb = alloc_buf(o.wbuf), *rb = alloc_buf(o.wbuf);
        unsigned long long bytes = 0;
        double end;
        snprintf(cipher, sizeof cipher, "%s", SSL_get_cipher_name(ssl));
        send_hdr(ssl, M_ECHO, 0);
        sleep_until(o.start_at);
        t0 = now();
        c0 = cpu_now();
        end = t0 + o.duration;
        while (now() < end) {
            write_full(ssl, wb, o.wbuf);
            if (!read_full(ssl, rb, o.wbuf))
                die("echo: early EOF");
            bytes += o.wbuf;
        }
        print_client("echo", now() - t0, cpu_now() - c0, bytes, 1, 0, 0, 0, cipher);
        SSL_shutdown(ssl);
        hangup(ssl);
        free(wb);
        free(rb);
    } else {
        die("client needs mode=up|down|pingpong|hs|idle|echo");
    }
    SSL_CTX_free(ctx);
    return 0;
}

/* ---- command line ------------------------------------------------------------------------ */

static void usage(void)
{
    fputs("usage: sp_ref server|client [key=value...]\n"
          "  common: host=127.0.0.1 port=N suites=TLS_AES_128_GCM_SHA256\n"
          "  server: cert=PEM key=PEM tickets=2 conns=1 fork=0\n"
          "  client: ca=PEM mode=up|down|pingpong|hs|idle|echo size=BYTES wbuf=N rbuf=N\n"
          "          count=N n=CONNS resume=0|1 start_at=MONOTONIC duration=SECONDS\n"
          "  either: bio=socket|mem|pair batch=BYTES (I/O of up to batch bytes)\n",
          stderr);
    exit(2);
}

static int parse_mode(const char *v)
{
    static const char *const names[] = {"", "up", "down", "pingpong", "hs", "idle", "echo"};
    int i;
    for (i = 1; i <= M_ECHO; i++)
        if (strcmp(v, names[i]) == 0)
            return i;
    die("unknown mode %s", v);
    return 0;
}

int main(int argc, char **argv)
{
    int i;
    o.host = "127.0.0.1";
    o.suites = "TLS_AES_128_GCM_SHA256";
    o.tickets = 2;
    o.conns = 1;
    o.n = 1;
    o.duration = 3.0;
    if (argc < 2)
        usage();
    if (strcmp(argv[1], "server") == 0)
        o.server = 1;
    else if (strcmp(argv[1], "client") != 0)
        usage();
    for (i = 2; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        const char *k = argv[i], *v;
        if (eq == NULL)
            usage();
        *eq = '\0';
        v = eq + 1;
        if (!strcmp(k, "host"))
            o.host = v;
        else if (!strcmp(k, "port"))
            o.port = atoi(v);
        else if (!strcmp(k, "cert"))
            o.cert = v;
        else if (!strcmp(k, "key"))
            o.key = v;
        else if (!strcmp(k, "ca"))
            o.ca = *v ? v : NULL;
        else if (!strcmp(k, "suites"))
            o.suites = v;
        else if (!strcmp(k, "tickets"))
            o.tickets = atoi(v);
        else if (!strcmp(k, "conns"))
            o.conns = atol(v);
        else if (!strcmp(k, "fork"))
            o.fork_per_conn = atoi(v);
        else if (!strcmp(k, "mode"))
            o.mode = parse_mode(v);
        else if (!strcmp(k, "size"))
            o.size = strtoull(v, NULL, 10);
        else if (!strcmp(k, "wbuf"))
            o.wbuf = strtoul(v, NULL, 10);
        else if (!strcmp(k, "rbuf"))
            o.rbuf = strtoul(v, NULL, 10);
        else if (!strcmp(k, "count"))
            o.count = strtoul(v, NULL, 10);
        else if (!strcmp(k, "n"))
            o.n = atol(v);
        else if (!strcmp(k, "resume"))
            o.resume = atoi(v);
        else if (!strcmp(k, "start_at"))
            o.start_at = atof(v);
        else if (!strcmp(k, "duration"))
            o.duration = atof(v);
        else if (!strcmp(k, "bio"))
            o.mem_bio = !strcmp(v, "mem") ? BIO_MEM : !strcmp(v, "pair") ? BIO_PAIR : BIO_SOCKET;
        else if (!strcmp(k, "batch"))
            o.batch = strtoul(v, NULL, 10);
        else
            die("unknown option %s", k);
    }
    if (o.wbuf == 0)
        o.wbuf = 16384;
    if (o.rbuf == 0)
        o.rbuf = o.wbuf;
    if (o.batch == 0)
        o.batch = 262144;
    signal(SIGPIPE, SIG_IGN);
    return o.server ? run_server() : run_client();
}
