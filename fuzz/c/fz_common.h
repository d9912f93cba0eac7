/* fz_common.h - what the C harnesses share (fz_common.c): deterministic randomness, the fixed
 * contexts, and a "target": one stream-mode pump driven as the Python layer drives it
 * (ports.py, aio.py: sp_feed, then sp_handshake / sp_read until SP_WANT_READ, sp_take of all
 * that is pending), checking after every call what the shim's API promises (fz_target_*).
 *
 * DETERMINISM. Every byte OpenSSL draws goes through our RAND_METHOD (RAND_set_rand_method:
 * OpenSSL 3.0 still honours it in RAND_bytes_ex / RAND_priv_bytes_ex, which its key
 * generation, nonces, randoms and session ids use), a counter reset before each input. A
 * target then answers the same bytes with the same bytes, so a peer's whole transcript
 * (recorded once by gen_seeds.c against the very same target) replays past the handshake:
 * the fuzzer starts from encrypted application data, tickets, KeyUpdates, renegotiations and
 * post-handshake authentication, not only from a ClientHello. Two streams: 0, the target's
 * (the only one a harness uses), and 1, the recording peer's.
 *
 * AN INPUT of the pump harnesses: FZ_HEADER bytes, then the peer's ciphertext as it came.
 *   [0] FZ_* flags (how the target is set up and what it does once established)
 *   [1] [2] seed of the chunk sizes; [3] 0: the rest in one sp_feed; else chunks of
 *   1 .. 8 * [3] bytes. */
#ifndef FZ_COMMON_H
#define FZ_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "sp.h"

#define FZ_CHECK(cond)                                     \
    do {                                                   \
        if (!(cond))                                       \
            fz_fail(#cond, __FILE__, __LINE__);            \
    } while (0)
void fz_fail(const char *what, const char *file, int line);
/* FZ_VERBOSE is set: say what happened (replays while writing seeds). */
int fz_verbose(void);

/* ---- randomness ---- */
void fz_rand_install(void);
void fz_rand_reset(int stream, uint64_t seed);
void fz_rand_select(int stream);

/* OpenSSL's default UI (a password prompt on the terminal) becomes an abort(). */
void fz_no_prompt_install(void);

/* ---- input header ---- */
#define FZ_HEADER 4
enum {
    FZ_TLS12 = 1,     /* the target speaks TLS 1.2 at most */
    FZ_VERIFY = 2,    /* server: requires a client certificate; client: requires a verified
                         server and offers post-handshake authentication */
    FZ_REAUTH = 4,    /* server, once established: sp_request_reauth (TLS 1.3 post-handshake
                         auth / TLS 1.2 renegotiation); client: sends its SNI as
                         "sni.example.test" (the server's switch) */
    FZ_BIGWRITE = 8,  /* once established: a 100 KB write (SP_WANT_WRITE, sp_take, again) */
    FZ_SMALLREAD = 16, /* reads of 1..16 bytes instead of 16 KiB */
    FZ_ALPN = 32,     /* client: offers ALPN (h2, http/1.1) */
    FZ_WRITES = 64,   /* once established, a small write after every feed (a writer during a
                         renegotiation: the stash) */
    FZ_LAZYTAKE = 128 /* output is taken only when a write asks for it, and at the end */
};

typedef struct fz_chunker {
    const uint8_t *p;
    size_t n;
    uint32_t state;
    size_t max;
} fz_chunker;
/* 0 when the input is too short for a header. */
int fz_chunker_init(fz_chunker *ch, const uint8_t *data, size_t size, unsigned *flags);
/* The next chunk (NULL at the end). */
const uint8_t *fz_chunker_next(fz_chunker *ch, size_t *len);

/* ---- the fixed world: contexts made once (fz_init) ---- */
typedef struct fz_world {
    SSL_CTX *server;     /* RSA and ECDSA certificates, ALPN, SNI and key-log callbacks */
    SSL_CTX *server_sni; /* what the SNI callback switches to for "sni.example.test" */
    SSL_CTX *client;     /* trusts the server's certificates; a client certificate; sessions */
} fz_world;
/* Make the world (once; the RAND method installed, stream 0 at a fixed seed). */
fz_world *fz_init(void);
/* Before each input: stream 0 reset, no session left from the last input. */
void fz_begin_input(void);

/* ---- a target connection ---- */
typedef struct fz_target {
    sp_conn *c;
    int is_server;
    unsigned flags;
    int established;
    int feed_writes; /* FZ_WRITES: the writes made after a feed so far */
    int end; /* 0, or the sticky status (SP_EOF, SP_RAGGED_EOF, SP_ERROR) */
    unsigned long long fed, plain_in;
    unsigned long long wrote; /* plaintext sp_write took (fz_target_write: a known pattern) */
    const struct fz_target *peer; /* fz_run_pair: reads are checked against its writes */
    int sock[2]; /* socket mode: the target's end, the harness's end; else -1 */
    uint32_t prng;  /* read and take sizes */
    uint32_t wprng; /* how each write is made: its own, so that the writes are the same
                       whatever the chunks (gen_seeds.c) */
    /* where taken output goes (gen_seeds.c), or NULL: dropped */
    void (*sink)(void *arg, const uint8_t *data, size_t len);
    void *sink_arg;
} fz_target;

/* socket_mode: the target's fd is one end of a socketpair (the pump's socket BIO, its sends and
 * waits), the harness writes the peer's bytes into the other end and reads the target's. */
int fz_target_open(fz_target *t, int is_server, unsigned flags, int socket_mode);
/* sp_feed the bytes, pump (handshake, reads, and what FZ_* says once established), take. */
void fz_target_feed(fz_target *t, const uint8_t *data, size_t len);
/* Write len bytes (of a pattern that goes on from t->wrote) as ports.py writes. */
void fz_target_write(fz_target *t, size_t len);
/* Everything pending out (sp_pending_out / sp_take), to the sink. */
void fz_target_take(fz_target *t);
/* The input ended: sp_feed_eof, pump, sp_shutdown, take. */
void fz_target_finish(fz_target *t);
void fz_target_close(fz_target *t);

/* The queries Python makes of an established connection, with their promises checked. */
void fz_check_facts(sp_conn *c);
/* A status one of the pump's calls may return at all. */
int fz_status_known(int status);
/* sp_err after SP_ERROR: says something, text NUL-terminated. */
void fz_check_err(const sp_err *err);

/* Harness for one pump input (server or client target, stream or socket mode). */
int fz_run_pump(int is_server, int socket_mode, const uint8_t *data, size_t size);

#endif /* FZ_COMMON_H */
