/* sp_conn.h - one TLS connection: an SSL* over two memory BIOs, and the pump that feeds them.
 * The state machine is explained at the top of sp_conn.c. */
#ifndef SP_CONN_H
#define SP_CONN_H

typedef struct sp_conn sp_conn;

/* Milliseconds of a monotonic clock (sp_ctx.c bounds a wait with it too). */
long long sp_mono_ms(void);

#define SP_HOST_TAG_LEN 8 /* bytes of a checked name's digest in a session id context */

/* Private to the C files: Python sees sp_conn as opaque.
 *
 * Every idle connection holds one, so it is laid out small (376 bytes on 64-bit Linux, one
 * 384-byte malloc chunk; bench/README.md section 4): pointers and counts first, then ints,
 * then the flags, one byte each. A byte is a memory location of its own (C11 3.14), so flags
 * guarded by different locks may share a word. The BIOs are the SSL's (SSL_get_rbio /
 * SSL_get_wbio): socket mode's one socket BIO, or stream mode's two memory BIOs. */
struct sp_conn {
    SSL *ssl;
    char *server_host; /* a server's name to check, given whatever its policy: an SNI switch to a
                          context that checks names checks it (sp_conn_server_name_check) */

    sp_mutex ssl_lock;
    sp_mutex send_lock;

    /* socket mode: records OpenSSL wrote, not yet taken by the sender (ssl_lock) */
    unsigned char *outq;
    size_t outq_len, outq_cap;
    unsigned long long written; /* plaintext OpenSSL has taken from writers so far (ssl_lock) */
    unsigned long ssl_calls;    /* OpenSSL calls made so far (ssl_lock) */
    unsigned long read_starved; /* 1 + ssl_calls when an sp_read returned because its waits
                                   ran out with only part of a record here (ssl_lock); 0 */
    /* ciphertext reading made (KeyUpdate replies, refusals of renegotiation, alerts) still in
     * outq: 0 again whenever outq is taken for sending (ssl_lock). At SP_OUT_HIGH the socket
     * BIO takes no more input until the sender took it, which it can only do once the
     * previous batch is on the wire: a peer that never reads cannot make outq grow. */
    size_t read_out;
    /* Ciphertext a waiting recv() got, not yet taken by OpenSSL (ssl_lock): sp_read's stack
     * buffer while it runs, a heap copy of the rest if OpenSSL left some (early_heap). */
    unsigned char *early;
    size_t early_len, early_off;
    size_t recv_in_call; /* what the socket BIO's recv()s got in this OpenSSL call (ssl_lock) */

    /* Application data that a writer's SSL_read_ex took while it drove a client's TLS <= 1.2
     * renegotiation (writer_reads), for the reader: served before anything else (ssl_lock). */
    unsigned char *stash;
    size_t stash_len, stash_off, stash_cap;

    /* socket mode: ciphertext being sent, taken from outq whole (send_lock) */
    unsigned char *out;
    size_t out_len, out_off, out_cap;

    /* the certificate the last failed verification step was about (a reference), its depth in
     * the chain and the verify code, for the error message (verify_callback; ssl_lock):
     * sp_conn_verify_failure */
    X509 *vfail_cert;
    /* the newest resumable session the server gave this client (ssl_lock) */
    SSL_SESSION *session;
    /* client: the peer key its context's session cache files that session under, or NULL */
    char *cache_key;
    unsigned long long cache_epoch; /* the verify policy's cache epoch it was set up under */

    /* sticky end states (ssl_lock; and eof_status, below) */
    sp_err *broken;   /* copy of the error that broke the connection */
    /* established, the socket could no longer be written (a send met a reset, a broken
     * pipe): writes fail with this from now on, but reads go on, since what the peer sent
     * before it closed (its answer, its close_notify) is still in the socket (SEND FAILURE).
     * Set holding both send_lock and ssl_lock, so either lock suffices to read it. */
    sp_err *send_broken;

    sp_socket fd;
    int verify_flags;
    unsigned identity; /* its context's identity count when the SSL took its certificate
                          (sp_ctx_identity; a server's session id context) */
    int in_callback; /* callbacks into Python on it in progress (set by the thread holding
                        ssl_lock, read by any: sp_flag_get; see CALLBACKS in sp_conn.c) */
    unsigned forks_at_birth;       /* the process's fork counts when it was made */
    unsigned child_forks_at_birth; /* (sp_conn_forked) */
    unsigned wrote_at_child_forks; /* the process's child fork count at its last write */
    unsigned wrote_at_forks;       /* ... and its count of all forks then */
    int bio_errno;   /* the socket error the BIO saw in the current OpenSSL call (ssl_lock) */
    int early_errno; /* the error a waiting recv() reported instead of data (ssl_lock) */
    int vfail_depth, vfail_code; /* (vfail_cert's) */
    unsigned char host_tag[SP_HOST_TAG_LEN]; /* a checked name's digest (a server's session id
                                                context) */

    /* flags, 0 or 1 unless said */
    unsigned char socket_mode;
    unsigned char read_waited; /* the last sp_read had to wait for the peer: a hint (unlocked) */
    unsigned char checks_host; /* sp_conn_set_host set a name (or address) to check (ssl_lock) */
    unsigned char checks_dns_name; /* ... a DNS name, for the handshake to check (ssl_lock) */
    unsigned char server_host_is_ip;
    unsigned char established; /* the first handshake completed (ssl_lock) */
    unsigned char reader_sends; /* stream mode: sp_read says SP_OK_SEND (sp_conn_reader_sends) */
    unsigned char peer_closed; /* recv() returned 0 (ssl_lock) */
    unsigned char close_notify_seen; /* the peer's close_notify alert was read (ssl_lock: set by
                                        note_alert, inside OpenSSL calls) */
    unsigned char draining; /* sp_conn_drain_tickets: a transport EOF is not an event (ssl_lock) */
    unsigned char direct_send; /* an sp_write's records the BIO may send itself (ssl_lock):
                                  SP_DIRECT_LAST, every one (the call's last record);
                                  SP_DIRECT_PAIRS, a full record with a full record queued
                                  ahead of it; 0, none */
    unsigned char reading; /* inside sp_read's SSL_read_ex (ssl_lock) */
    unsigned char handshake_waits; /* the handshake waits for the peer's next flight (a
                                      server's first call, or after a call that returned to
                                      wait for it): the next sp_handshake waits before it calls
                                      OpenSSL (the handshaking thread's) */
    unsigned char recv_waits; /* the socket blocks, with SO_RCVTIMEO = SP_WAIT_SLICE_MS: a read
                                 that must wait a whole slice waits in recv() (set at
                                 creation) */
    unsigned char early_heap; /* `early` is a heap copy */
    unsigned char recv_full; /* the last recv() filled its buffer: more may be waiting
                                (ssl_lock) */
    unsigned char recv_short; /* in this OpenSSL call, the last recv() (or the waiting one that
                                 got its early bytes) returned less than asked: the socket held
                                 no more, and the BIO waits instead of a second recv()
                                 (ssl_lock; 0 before each call) */
    unsigned char recv_busy; /* a reader waits in recv() without ssl_lock (recv_early): the
                                socket BIO must not recv() meanwhile, or bytes would reach
                                OpenSSL out of order (ssl_lock) */
    /* an output port's bytes are still queued: a record sp_write_hold held, or what a write
     * that ran out of time could not send; 0 again once the queue is empty (send_lock) */
    unsigned char writer_queued;
    /* re-verification of an established peer (ssl_lock): 1 while pending */
    unsigned char reauth_pending;
    /* server: the SNI callback ran for the first ClientHello (ssl_lock) */
    unsigned char sni_done;
    /* client: it offered a session from the cache (the cache forgets the peer's sessions if
     * the server does not resume it); `session`, a TLS 1.2 one, waits for the handshake's
     * end to be filed (ssl_lock) */
    unsigned char offered;
    unsigned char file_when_established;
    unsigned char eof_status; /* sticky (ssl_lock): 0, SP_EOF or SP_RAGGED_EOF */
};


/* What a pump call reports. Data counts are returned separately, so a call can hand back
 * bytes *and* say why it stopped. */
enum {
    SP_OK = 0,         /* done: all asked for was read, written or flushed */
    SP_WANT_READ = 1,  /* needs incoming ciphertext: stream mode, feed it; socket mode, the
                          wait slice elapsed first (call again) */
    SP_WANT_WRITE = 2, /* socket mode: outgoing ciphertext is still queued when the wait
                          slice elapsed (call again); stream mode (a write): take the
                          queued ciphertext (sp_take), then call again */
    SP_EOF = 3,        /* the peer sent close_notify */
    SP_RAGGED_EOF = 4, /* the transport ended without close_notify */
    SP_OK_SEND = 5,    /* sp_read of a connection made with sp_conn_reader_sends: done, as
                          SP_OK, and reading queued ciphertext (a handshake message's answer,
                          an alert): take it (sp_take) now */
    SP_ERROR = -1      /* failure; the sp_err record says what */
};

/* Per-connection verification policy (sp_conn_set_verify). */
enum {
    SP_VERIFY_PEER = 1,     /* ask for (server) / check (client) the peer's certificate */
    SP_VERIFY_REQUIRE = 2,  /* a bad or missing certificate aborts the handshake */
    SP_VERIFY_HOSTNAME = 4, /* a hostname / IP mismatch aborts the handshake even if the chain
                               is not required to verify */
    SP_VERIFY_POST_HANDSHAKE = 8 /* client: offer TLS 1.3 post-handshake authentication */
};

/* The longest a socket-mode call waits before it returns SP_WANT_READ / SP_WANT_WRITE: Python
 * passes it as wait_ms unless a deadline is nearer, and notices Ctrl-C between slices. */
#define SP_WAIT_SLICE_MS 50

/* fd >= 0: socket mode (the pump does the socket I/O and owns the descriptor's blocking mode
 * and receive timeout from then on: see "WAITING" in sp_conn.c);
 * fd < 0: stream mode (the caller moves ciphertext with sp_feed / sp_take). */
sp_conn *sp_conn_new(SSL_CTX *ctx, int is_server, int fd, sp_err *err);
void sp_conn_free(sp_conn *c);
SSL *sp_conn_ssl(sp_conn *c);
/* Lock the connection around a direct OpenSSL query made from Python. */
void sp_conn_lock(sp_conn *c);
void sp_conn_unlock(sp_conn *c);
/* Around a callback into Python that runs inside an OpenSSL call on c (sp_verify.c): the
 * frame lives on the caller's stack until sp_conn_callback_end. */
typedef struct sp_callback_frame {
    sp_conn *conn;
    struct sp_callback_frame *outer;
} sp_callback_frame;
void sp_conn_callback_begin(sp_conn *c, sp_callback_frame *frame);
void sp_conn_callback_end(sp_callback_frame *frame);
/* Is this thread inside a callback of c? A port's lock asks before it waits (ports.py
 * _PortLock, sp_fastport.c lock_wait): a thread holding it there waits for c's ssl_lock, which
 * this thread holds. c is compared, never read (a lock may outlive its connection). */
int sp_conn_in_callback(const sp_conn *c);
/* BREAKS: a callback into Python (a key log line) kept a request to stop (Ctrl-C, sys.exit)
 * for the pump call of this thread that it ran in (sni.py _keylog); sp_take_break says whether
 * one came since it last asked, so that a call that would otherwise end as usual (a read that
 * got its bytes) hands over to Python, which raises it (_timing.BREAKS). */
void sp_conn_note_break(void);
int sp_take_break(void);

int sp_conn_set_verify(sp_conn *c, int flags);
/* Stream mode: from now on an sp_read that returns data after its reading queued ciphertext
 * says so (SP_OK_SEND), so that the caller sends it now, as socket mode does, and not only at
 * its next wait or write (the peer may wait for it: a post-handshake authentication's or a
 * renegotiation's answer). */
void sp_conn_reader_sends(sp_conn *c);
/* For callbacks: the sp_conn of an SSL*, and re-applying the policy after a context switch. */
sp_conn *sp_conn_from_ssl(const SSL *ssl);
void sp_conn_apply_verify_locked(sp_conn *c);
int sp_conn_get_verify(sp_conn *c);
/* SNI (unless an IP literal or send_sni is 0) and the name the peer's certificate must match.
 * Returns 1 on success, 0 on failure (err filled). */
int sp_conn_set_host(sp_conn *c, const char *host, int is_ip, int send_sni, int check, sp_err *err);
/* After an SNI switch (ssl_lock held): a server checks its client's name as the new context's
 * policy says; 0 when it cannot (no memory), or when the policy checks names and none was
 * given (sni.py refuses that switch first, with the reason). */
int sp_conn_server_name_check_locked(sp_conn *c);

int sp_handshake(sp_conn *c, int wait_ms, sp_err *err);
int sp_read(sp_conn *c, unsigned char *buf, size_t len, size_t want, size_t *got, int wait_ms,
            sp_err *err);
int sp_write(sp_conn *c, const unsigned char *buf, size_t len, size_t *done, int wait_ms,
             sp_err *err);
int sp_write2(sp_conn *c, const unsigned char *head, size_t head_len, const unsigned char *buf,
              size_t len, size_t *done, int wait_ms, sp_err *err);
int sp_write_hold(sp_conn *c, const unsigned char *buf, size_t len, size_t *done, int wait_ms,
                  sp_err *err);
int sp_flush(sp_conn *c, int wait_ms, sp_err *err);
/* 1 while a TLS <= 1.2 renegotiation (either side's) is pending or under way: what the
 * connection queues then is handshake bytes the peer waits for. */
int sp_conn_renegotiating(sp_conn *c);
/* Our close_notify, queued: SP_OK, SP_ERROR (nothing sent: broken, or not established), or
 * SP_WANT_READ: a client's TLS <= 1.2 renegotiation must end first; bring the peer's flight
 * (stream mode: feed it) and call again. */
int sp_shutdown(sp_conn *c, sp_err *err);

/* Socket mode: 1 while bytes an output port wrote are still queued (writer_queued), which
 * sp_flush sends; 0 in stream mode. */
int sp_held_out(sp_conn *c);
/* The same without waiting: -1 when another thread holds the lock it needs (for a caller
 * that must not wait for it, sp_fastport.c: it holds the GIL, which an OpenSSL callback into
 * Python waits for while it holds the pump's locks). */
int sp_held_out_try(sp_conn *c);
/* Plaintext bytes the write calls have handed to OpenSSL so far: the difference across an
 * interrupted write tells exactly how much of it was taken. */
unsigned long long sp_written(sp_conn *c);
/* Closing a socket connection, after shutdown(): read and drop, without waiting, what arrived
 * and nobody will read (a TLS 1.3 ticket nobody read, a request a server closed on). close()
 * on a socket with unread bytes answers with a reset, and a reset also throws away what the
 * kernel still had to send: the end of the last write, when the peer reads slowly. Nothing
 * to do once the peer's EOF was seen; at most 4 MiB (a peer still sending gets its reset). */
void sp_conn_drop_unread(sp_conn *c);
/* The same for any non-blocking socket (sslports.aio's); returns the bytes it dropped. */
long sp_fd_drop_unread(int fd);
/* Bytes the kernel still holds to send on a TCP socket; sp_conn_unsent: on the connection's,
 * when the last close lingers for it (more than 16 KiB, or bytes not yet transmitted), else 0
 * (see LINGERING CLOSE); sp_fd_linger_needed: the same for any socket. */
long sp_fd_unsent(int fd);
long sp_conn_unsent(sp_conn *c);
long sp_fd_linger_needed(int fd);
/* Whether another process may hold this connection's socket and use it: 0 no fork since it
 * was made, or this process forked since and wrote on it after the fork (one process uses a
 * connection: this one took it over); 1 this process forked since (a child has a copy); 2 this
 * process is a child of the one that made it and has not written on it; 3 such a child that
 * wrote before a fork of its own; 4 such a child that wrote since its last fork (it took the
 * connection over). 0: the usual last close (close_notify where asked, unread bytes read
 * away, the lingering close), without which a peer's late bytes meet a bare close and its
 * reset drops what the kernel still held. 4: the same, unless a thread of the parent held a
 * lock of the connection at the fork (ports.py: it stays taken here for good). Otherwise the
 * last close closes only this process's descriptor: no shutdown(), nothing sent or read away,
 * which would end or corrupt the other process's copy; and in a child that never wrote, an
 * output port's close sends nothing the parent left buffered (2). */
int sp_conn_forked(const sp_conn *c);
/* This process writes on the connection (an output port's write, whether it sends or only
 * buffers): after a fork, the process that does has taken the connection over
 * (sp_conn_forked). */
void sp_conn_note_write(sp_conn *c);
/* 1 once a failure broke the connection (every later call reports it): nothing more can be
 * sent, so what a writer still holds is dropped. */
int sp_conn_broken(sp_conn *c);
/* Why a pump call of this connection failed, for a caller whose record was filled since by a
 * call on another connection (sp_err.conn): the error that broke the connection, or EPIPE for
 * a write after its end (the one failure not kept, so that reads still see the end). */
void sp_conn_failure(sp_conn *c, sp_err *err);

/* Stream mode: move ciphertext between the BIOs and the caller's streams. */
int sp_feed(sp_conn *c, const unsigned char *data, size_t len);
void sp_feed_eof(sp_conn *c);
size_t sp_pending_out(sp_conn *c);
size_t sp_take(sp_conn *c, unsigned char *out, size_t cap);
/* 1 when a writer that drives a renegotiation holds SP_STASH_MAX of the reader's data or
 * more: it should not be fed more until the reader took some. */
int sp_stash_full(sp_conn *c);

#endif /* SP_CONN_H */
