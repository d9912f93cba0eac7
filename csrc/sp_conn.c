/* sp_conn.c - the pump: one TLS connection, its SSL* and the ciphertext that flows around it.
 *
 * THE PICTURE
 *
 * Socket mode (ssl_connect, ssl_accept, ssl_wrap_socket: fd >= 0). OpenSSL talks to our own
 * socket BIO, and no Python runs per record:
 *
 *   caller buf <-- SSL_read_ex  -- [ssl] <-- BIO read: recv() straight into OpenSSL's
 *                                             read-ahead buffer (one recv, one record or
 *                                             more: header and body together), after
 *                                             what a read's waiting recv() got (WAITING);
 *                                             at most one recv() that comes back short
 *                                             per OpenSSL call (recv_short), and at most
 *                                             64 KiB in all (SP_RECV_PER_CALL)
 *   caller buf --  SSL_write_ex --> [ssl] --> BIO write: append records to `outq`
 *                                             sender: swap `outq` out whole, send() it
 *                                             (a write's last record, and every second
 *                                             full record, is sent by the BIO itself,
 *                                             after what is queued, in one sendmsg():
 *                                             no copy of it)
 *                                             sp_write_hold: an output port's held record
 *                                             stays in `outq` until the next write or
 *                                             flush sends it
 *
 * Stream mode (ports_to_ssl_ports: fd < 0). OpenSSL talks to two memory BIOs; the pump only
 * reports what it needs and Python moves ciphertext with sp_feed / sp_take:
 *
 *   caller buf <-- SSL_read_ex  -- [ssl] <-- rbio (memory) <-- sp_feed <-- input stream
 *   caller buf --  SSL_write_ex --> [ssl] --> wbio (memory) --> sp_take --> output stream
 *
 * THE STATE MACHINE OF ONE CALL
 *
 * Every operation (handshake, read, write) is a loop around one OpenSSL call:
 *
 *   1. Lock, clear the error queue, call SSL_do_handshake / SSL_read_ex / SSL_write_ex,
 *      classify the result with SSL_get_error, unlock.
 *   2. Whatever OpenSSL queued goes out before we wait for anything (a handshake flight, a
 *      KeyUpdate reply, an alert). "Send before you receive": a peer waiting for our flight
 *      would otherwise never send what we wait for.
 *   3. The result decides:
 *        success        -> read: keep going while OpenSSL already holds more (SSL_has_pending)
 *                          and return once the caller has what it asked for (stream mode,
 *                          ports_to_ssl_ports: SP_OK_SEND when reading queued ciphertext,
 *                          for the caller to take now, as step 2 does); write: next
 *                          chunk; handshake: done (a TLS 1.3 server's session tickets stay
 *                          queued for the connection's first write: one send for both).
 *        WANT_READ      -> OpenSSL needs more ciphertext. Stream mode: return SP_WANT_READ.
 *                          Socket mode: wait for it (below; sending queued output first),
 *                          then retry the same call.
 *   A read whose predecessor had to wait (request/response traffic) starts with step 3's
 *   wait when OpenSSL holds nothing unprocessed: the SSL_read_ex of step 1 would only
 *   have met EAGAIN. Bulk readers, which rarely wait, keep calling OpenSSL first.
 *        WANT_WRITE     -> never happens: neither BIO ever refuses a write.
 *        ZERO_RETURN    -> the peer's close_notify: SP_EOF, sticky.
 *        unexpected EOF -> the transport ended without close_notify: SP_RAGGED_EOF, sticky.
 *        anything else  -> SP_ERROR with the drained error queue (and the socket errno the
 *                          BIO saw); the connection is broken and every later call reports
 *                          the same error.
 *   OpenSSL's retry rule (call again with the same arguments after WANT_*) holds because the
 *   loop only ever retries the same call; SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER covers callers
 *   that retry a write from another buffer holding the same bytes.
 *
 * WAITING, SIGNALS AND DEADLINES
 *
 * A call waits for at most `wait_ms` (one slice, SP_WAIT_SLICE_MS, or less when a deadline is
 * nearer) in all, however many waits it makes (wait_budget): a peer that keeps sending
 * something (a byte, a KeyUpdate, a ticket) every few milliseconds, or keeps taking a little
 * of what we send, must not keep a call that still lacks what it wants from returning. When
 * the slice elapses, or a signal interrupts the wait, the call returns
 * SP_WANT_READ / SP_WANT_WRITE with the progress it made (bytes read or written are reported,
 * never lost), and Python, which holds the deadline, checks it and runs signal handlers
 * (Ctrl-C) before calling again. The GIL is released for the whole call.
 *
 * Where send/recv take MSG_DONTWAIT (POSIX), every other send and recv passes it, and the
 * socket itself is made blocking with SO_RCVTIMEO = one slice (make_recv_waits). A read that
 * must wait a whole slice (for a record, or for the rest of one), or a handshake waiting for
 * the peer's flight, then waits inside recv(), into a buffer on sp_read's / sp_handshake's
 * stack that the socket BIO hands to OpenSSL first ("early" bytes; any OpenSSL leaves move to
 * the heap before the call returns): one system call per wait instead of poll() + recv(). A
 * socket error that recv() met is kept and reported by the BIO, since the kernel reports a
 * reset only once. Every other wait (sending, short slices, Windows) is a poll().
 *
 * A recv() that returns less than it asked for (or early bytes that did) leaves the socket's
 * queue empty at that moment: within the same OpenSSL call the BIO then says "not yet"
 * instead of a second recv() that would meet EAGAIN, and the pump waits as above. A peer that
 * sends its records a few bytes per TCP segment costs one recv() per segment, not poll() +
 * recv() + recv(). The next OpenSSL call's first recv() always runs (a read that returned
 * finds what came since), and so does every recv() of the ticket drain at close, which
 * does not wait.
 *
 * A PEER THAT DOES NOT READ
 *
 * Reading can queue output of its own (a KeyUpdate reply, the refusal of a renegotiation).
 * What one read queued is counted (read_out) until the sender takes the queue, which it does
 * only once the previous batch is on the wire; at SP_OUT_HIGH the socket BIO takes no more
 * input and the read waits for room to send only: a peer that floods such requests and never
 * reads the answers holds at most ~2 x SP_OUT_HIGH of them here, not one per record it sent.
 *
 * A SERVER'S RENEGOTIATION MET BY A WRITER (client, TLS <= 1.2)
 *
 * Once a server's HelloRequest was read, SSL_write_ex would drive the renegotiation itself,
 * and OpenSSL's handshake code reads. Until its ServerHello the server may go on sending
 * application data, which an SSL_write_ex has no place for: OpenSSL then fails the write with
 * an empty error queue, or the connection with "unexpected record". So a writer drives such a
 * renegotiation with SSL_read_ex instead (writer_reads) and keeps the data it gets in `stash`,
 * which sp_read serves before anything else. It holds at most ~SP_STASH_MAX: beyond that
 * the writer waits for the reader to take some (socket mode here; in stream mode the caller
 * stops feeding such a writer, sp_stash_full, since the writer reads whatever it was fed).
 * While a reader waits in recv() without ssl_lock (WAITING), the socket BIO does not recv()
 * for anyone else (recv_busy): the bytes that recv() got come first.
 *
 * LOCKS (full duplex without deadlock)
 *
 *   ssl_lock   guards the SSL*, its BIOs, `outq` and the early bytes. Held around OpenSSL
 *              calls, which may recv() or append to outq but never wait (MSG_DONTWAIT, or a
 *              non-blocking socket). Never held while waiting.
 *   send_lock  guards `out`, the buffer being sent: bytes leave in the order OpenSSL
 *              produced them. Held around non-blocking sends only; a partly sent buffer stays
 *              in `out` for whoever sends next.
 *   Lock order: send_lock, then ssl_lock. A reading thread and a writing thread run at once;
 *   two readers (or two writers) are serialised by Python.
 *
 * EOF
 *
 *   A close_notify from the peer is SP_EOF. A transport EOF without it is SP_RAGGED_EOF, which
 *   Python reports as EOF (Racket's behaviour on OpenSSL 3) or, with strict_eof, as an error.
 *   During the handshake OpenSSL tells the two apart for us (the socket BIO answers
 *   BIO_CTRL_EOF once recv() returned 0) and an EOF is a failure. Once the handshake is done
 *   we set SSL_OP_IGNORE_UNEXPECTED_EOF: without it OpenSSL treats the EOF as fatal, sends
 *   the peer a decode_error alert and fails every later write, and a peer that half-closed
 *   TCP (shutdown(SHUT_WR)) while it waits for our answer would get that alert instead. With
 *   it OpenSSL reports both ends as SSL_ERROR_ZERO_RETURN and we tell them apart ourselves:
 *   the info callback (note_alert) sees a real close_notify alert arrive.
 *
 * MEMORY
 *
 *   Idle connections hold no I/O buffers: SSL_MODE_RELEASE_BUFFERS frees OpenSSL's record
 *   buffers, and `out` and `outq` are freed as soon as everything queued was sent (a TLS 1.3
 *   server's tickets, which wait in `outq` for its first write, get a buffer of their own
 *   size: SP_OUTQ_SMALL).
 *   Stream mode: a memory BIO keeps the largest size it ever had until the connection ends,
 *   so a write hands its ciphertext over a part at a time: once SP_OUT_HIGH of it waits in
 *   wbio, sp_write returns SP_WANT_WRITE (with its progress) for the caller to sp_take it.
 *   wbio then never holds much more than SP_OUT_HIGH + one SP_WRITE_CHUNK of records, and
 *   rbio what the caller feeds at a time (one read of its input stream).
 */
#ifndef _WIN32
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* clock_gettime under -std=c99 */
#endif
#if defined(__APPLE__) && !defined(_DARWIN_C_SOURCE)
#define _DARWIN_C_SOURCE 1 /* (else _POSIX_C_SOURCE hides MSG_DONTWAIT: compat.h) */
#endif
#endif
#include <stdlib.h>
#include <string.h>
#ifndef _WIN32
#include <time.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#ifdef __linux__
#include <linux/sockios.h> /* SIOCOUTQ, SIOCOUTQNSD */
#endif
#endif

#include "sp.h"

#define SP_WRITE_CHUNK 65536       /* plaintext per SSL_write_ex: four full records */
#define SP_OUT_HIGH 65536          /* queued ciphertext that makes a writer send first */
/* Which of an sp_write's records the socket BIO sends itself, straight from OpenSSL's buffer
 * (send_direct): the call's last record; or each full record that completes a pair with a full
 * record queued ahead of it (two records per sendmsg(), as held 16 KiB writes go: see there). */
#define SP_DIRECT_LAST 1
#define SP_DIRECT_PAIRS 2
#define SP_OUTQ_INITIAL 81920      /* first outq size: one SP_WRITE_CHUNK of records fits */
#define SP_OUTQ_SMALL 4096         /* ... unless less is queued: a server's session tickets wait
                                      in outq for its first write (sp_handshake), an alert, a
                                      KeyUpdate; those get just the room they need */
/* Application data a writer that drives a client's renegotiation holds for the reader, at most
 * (see A SERVER'S RENEGOTIATION MET BY A WRITER). */
#define SP_STASH_MAX 65536
#define SP_STASH_FULL 100 /* (stash_read: internal status) */
/* What one waiting recv() takes (on sp_read's stack): one whole record of the largest size,
 * which is also what OpenSSL asks its socket BIO for when its read-ahead buffer is empty. */
#define SP_EARLY_MAX \
    (SSL3_RT_MAX_PLAIN_LENGTH + SSL3_RT_MAX_ENCRYPTED_OVERHEAD + SSL3_RT_HEADER_LENGTH)


static BIO *new_sock_bio(sp_conn *c);

/* ---- fork ------------------------------------------------------------------------------
 * After fork() parent and child share every socket. Each process counts the forks it took
 * part in (pthread_atfork handlers, which also see forks made by other code than os.fork),
 * and each connection keeps the counts it was made under: sp_conn_forked compares them. */
static unsigned forks_seen;  /* as parent or as child */
static unsigned child_forks; /* as child */
#ifndef _WIN32
static CRYPTO_ONCE fork_once = CRYPTO_ONCE_STATIC_INIT;

static void after_fork_parent(void)
{
    sp_flag_set(&forks_seen, sp_flag_get(&forks_seen) + 1u);
}

static void after_fork_child(void)
{
    sp_flag_set(&forks_seen, sp_flag_get(&forks_seen) + 1u);
    sp_flag_set(&child_forks, sp_flag_get(&child_forks) + 1u);
}

static void install_fork_handlers(void)
{
    /* (on failure, ENOMEM, forks go unseen: every close behaves as without a fork) */
    (void)pthread_atfork(NULL, after_fork_parent, after_fork_child);
}
#endif

int sp_conn_forked(const sp_conn *c)
{
    unsigned children = sp_flag_get(&child_forks), seen = sp_flag_get(&forks_seen);
    int wrote_since = c->wrote_at_forks == seen; /* (since the last fork it took part in) */
    if (seen == c->forks_at_birth)
        return 0;
    if (children != c->child_forks_at_birth)
        return wrote_since ? 4 : c->wrote_at_child_forks == children ? 3 : 2;
    return wrote_since ? 0 : 1;
}

void sp_conn_note_write(sp_conn *c)
{
    /* (plain stores: one process, and its writes are serialised by the write lock) */
    c->wrote_at_child_forks = sp_flag_get(&child_forks);
    c->wrote_at_forks = sp_flag_get(&forks_seen);
}

static int conn_index = -1;
static int conn_index_made;

static int make_conn_index(void)
{
    conn_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    return conn_index >= 0;
}

/* The SSL's info callback: remember that the peer's close_notify alert arrived, which tells
 * it from a transport EOF once SSL_OP_IGNORE_UNEXPECTED_EOF is set (see EOF); and end
 * read-ahead once a TLS <= 1.2 handshake is done. With read-ahead, OpenSSL 3.0 fails a
 * client's renegotiation with "unexpected record" when a second HelloRequest and application
 * data came in behind the first (RFC 5246: a HelloRequest during a handshake is ignored, as
 * OpenSSL does without read-ahead, and as Python's ssl, which reads no further ahead, gets).
 * TLS 1.3 has no renegotiation and keeps it. */
static void note_alert(const SSL *ssl, int where, int ret)
{
    if ((where & SSL_CB_READ_ALERT) && (ret & 0xff) == SSL_AD_CLOSE_NOTIFY) {
        sp_conn *c = SSL_get_ex_data(ssl, conn_index);
        if (c != NULL)
            c->close_notify_seen = 1;
    }
    if ((where & SSL_CB_HANDSHAKE_DONE) && SSL_version(ssl) < TLS1_3_VERSION)
        SSL_set_read_ahead((SSL *)ssl, 0);
}

/* ---- errors ------------------------------------------------------------------------- */

/* Start an OpenSSL call with an empty error queue. The per-record calls use this: looking is
 * cheaper than ERR_clear_error's sweep of every slot, and the queue is nearly always empty. */
static void clear_errors(void)
{
    if (ERR_peek_error() != 0)
        ERR_clear_error();
}

/* Before each OpenSSL call that may read: an empty error queue, no socket error of an earlier
 * call, and the call's first recv() runs (recv_short). */
static void before_ssl_call(sp_conn *c)
{
    c->ssl_calls++;
    clear_errors();
    c->bio_errno = 0;
    c->recv_short = 0;
    c->recv_in_call = 0;
}

/* The start of every pump call: an empty record, which says whose it is (sp_err.conn). */
static void start_call(sp_conn *c, sp_err *err)
{
    sp_err_reset(err);
    err->conn = c;
}

/* ---- CALLBACKS -----------------------------------------------------------------------
 * A callback into Python (SNI, key log: sp_verify.c) runs inside an OpenSSL call on its
 * connection, so with that connection's ssl_lock held by this thread. Python code there may
 * reach the same connection: a key logger gets a TLS 1.2 renegotiation's line while the
 * connection's ports exist, and may write to them, query them, close them. Waiting for
 * ssl_lock would wait for this very thread (a deadlock), and a pump call would re-enter
 * OpenSSL's state machine from its own callback. So, for the connections whose callbacks this
 * thread is inside (`callbacks`, innermost first: a callback may open a connection of its
 * own), queries take ssl_lock as held (lock_ssl: no other thread can hold it meanwhile) and
 * pump calls refuse (start_pump_call: EDEADLK, the connection unharmed). Other threads, and
 * this thread outside such callbacks, lock as always: `in_callback` (one load) tells them. Nor may
 * such a callback wait for a port lock of the connection that another thread holds (ports.py):
 * that thread's call waits for ssl_lock, so the ports' locks ask sp_conn_in_callback first and
 * refuse (RuntimeError). */
static SP_THREAD_LOCAL sp_callback_frame *callbacks;

void sp_conn_callback_begin(sp_conn *c, sp_callback_frame *frame)
{
    frame->conn = c;
    frame->outer = callbacks;
    callbacks = frame;
    sp_flag_set(&c->in_callback, c->in_callback + 1); /* (ssl_lock held: ours to change) */
}

void sp_conn_callback_end(sp_callback_frame *frame)
{
    sp_conn *c = frame->conn;
    sp_flag_set(&c->in_callback, c->in_callback - 1);
    callbacks = frame->outer;
}

int sp_conn_in_callback(const sp_conn *c)
{
    const sp_callback_frame *f;
    for (f = callbacks; f != NULL; f = f->outer) /* (compared only: c is not read) */
        if (f->conn == c)
            return 1;
    return 0;
}

static SP_THREAD_LOCAL int break_noted; /* (sp_conn.h BREAKS) */

void sp_conn_note_break(void)
{
    break_noted = 1;
}

int sp_take_break(void)
{
    int noted = break_noted;
    break_noted = 0;
    return noted;
}

/* Is this thread inside a callback of c (and so holds its ssl_lock)? */
static int in_own_callback(const sp_conn *c)
{
    return sp_flag_get(&c->in_callback) && sp_conn_in_callback(c);
}

static void lock_ssl(sp_conn *c)
{
    if (!in_own_callback(c))
        sp_mutex_lock(&c->ssl_lock);
}

static void unlock_ssl(sp_conn *c)
{
    if (!in_own_callback(c))
        sp_mutex_unlock(&c->ssl_lock);
}

/* The start of a pump call that drives OpenSSL (start_call), refused when it comes from a
 * callback of its own connection (see CALLBACKS): 1 refused (err says EDEADLK), 0 go on. */
static int start_pump_call(sp_conn *c, sp_err *err)
{
    start_call(c, err);
    if (!in_own_callback(c))
        return 0;
    err->sys_errno = EDEADLK;
    return 1;
}

/* Fill err for a failed SSL call (called with ssl_lock held, queue not yet drained), afresh: a
 * callback into Python inside the call may have used this thread's record for a call of its own
 * (refused, or on another connection: CALLBACKS), and what that left is no part of this
 * failure. A socket error the BIO saw is the real reason (socket mode). */
static void capture_ssl_error(sp_conn *c, int ssl_error, sp_err *err)
{
    start_call(c, err);
    err->sys_errno = c->bio_errno;
    /* The verify result explains the failure only when OpenSSL says verification failed
     * (a client that does not require verification always has one). */
    if (ERR_GET_REASON(ERR_peek_last_error()) == SSL_R_CERTIFICATE_VERIFY_FAILED) {
        long vr = SSL_get_verify_result(c->ssl);
        if (vr != X509_V_OK)
            err->verify_result = vr;
    }
    err->ssl_error = ssl_error;
    sp_err_drain(err);
}

/* The handshake ended (ssl_lock held): the cache forgets the peer's sessions if the server did
 * not resume the one offered (sp_session.c), and files a TLS 1.2 session the handshake made. */
static void sessions_when_established(sp_conn *c);

/* A real failure: the session must not be resumed (RFC 5246 7.2.2). Our copy (see
 * keep_new_session) shares that fate. A failure of TLS itself (a bad record MAC, a protocol
 * error, an alert: SSL_ERROR_SSL) also makes the context's cache forget every session it
 * holds for this peer, the tickets other connections got from it too (a forged record may be a
 * man in the middle's; the next connection starts afresh); a transport's (a reset, a broken
 * pipe: routine for an idle keep-alive connection) costs only this connection's (ssl_lock
 * held). */
static void invalidate_session(sp_conn *c, int ssl_error)
{
    if (c->session != NULL)
        SSL_CTX_remove_session(SSL_get_SSL_CTX(c->ssl), c->session);
    if (c->cache_key != NULL && ssl_error == SSL_ERROR_SSL)
        sp_session_forget(SSL_get_SSL_CTX(c->ssl), c->cache_key, c->cache_epoch);
}

/* The reason a connection is broken when there was no memory for a copy of the real one. */
static const sp_err broken_no_memory = {0, ENOMEM, -1, 0, "", NULL};

/* Remember err as the reason the connection is broken (ssl_lock held). */
static void mark_broken(sp_conn *c, const sp_err *err)
{
    /* A connection that already ended stays ended: failing to send our alert to a peer that
     * closed (EPIPE) must not turn its EOF into an error, nor cost the session. */
    if (c->eof_status != 0)
        return;
    if (c->broken == NULL) {
        sp_err *copy = malloc(sizeof *copy);
        if (copy != NULL)
            memcpy(copy, err, sizeof *err);
        /* (without memory for the copy it is broken all the same: later calls say ENOMEM) */
        c->broken = copy != NULL ? copy : (sp_err *)&broken_no_memory;
    }
    invalidate_session(c, err->ssl_error);
}

/* SEND FAILURE. A send that fails on an established connection (the peer reset it, or
 * closed it while we still wrote) fails that write and every later one, but not the reads:
 * the peer may have answered and sent close_notify before it closed (an HTTP server refusing
 * an upload), and those bytes wait in the socket. A read gets them, then the EOF, or the
 * socket's own error; what reading would queue (a KeyUpdate reply) is dropped. During the
 * handshake nothing can be read without our flight: the connection is broken (ssl_lock held). */
static void mark_send_broken(sp_conn *c, const sp_err *err) /* (send_lock held too) */
{
    sp_err *copy;
    if (!c->established) {
        mark_broken(c, err);
        return;
    }
    if (c->send_broken != NULL || c->broken != NULL || c->eof_status != 0)
        return; /* (already: see mark_broken; after the end a write fails with EPIPE anyway) */
    copy = malloc(sizeof *copy);
    if (copy == NULL) {
        mark_broken(c, err); /* (the old way: reads fail too) */
        return;
    }
    memcpy(copy, err, sizeof *err);
    c->send_broken = copy;
    invalidate_session(c, err->ssl_error);
}

/* The error of a write on a connection whose sending failed (ssl_lock held): 1 if so. */
static int send_failed(sp_conn *c, sp_err *err)
{
    const sp_err *why = c->broken != NULL ? c->broken : c->send_broken;
    if (why == NULL)
        return 0;
    memcpy(err, why, sizeof *err);
    return 1;
}

/* If the connection already ended or broke, say so (ssl_lock held). Returns 0 when live. */
static int sticky_status(sp_conn *c, sp_err *err)
{
    if (c->broken != NULL) {
        memcpy(err, c->broken, sizeof *err);
        return SP_ERROR;
    }
    return c->eof_status;
}

/* The transport ended without close_notify (ssl_lock held). After a send met the peer's
 * reset (SEND FAILURE; the send took the socket's error, so recv() just ends), that end is
 * the reset: the reader reports it too, once it has everything the peer sent before. */
static int ragged_eof(sp_conn *c, sp_err *err)
{
    if (c->send_broken != NULL) {
        memcpy(err, c->send_broken, sizeof *err);
        mark_broken(c, err);
        return SP_ERROR;
    }
    c->eof_status = SP_RAGGED_EOF;
    return SP_RAGGED_EOF;
}

/* Classify a failed read-side call: EOF kinds, or a real error (ssl_lock held). */
static int classify_failure(sp_conn *c, int e, sp_err *err)
{
    unsigned long top;
    if (e == SSL_ERROR_ZERO_RETURN) {
        /* (established: SSL_OP_IGNORE_UNEXPECTED_EOF makes a transport EOF look the same) */
        if (c->established && !c->close_notify_seen)
            return ragged_eof(c, err);
        c->eof_status = SP_EOF;
        return c->eof_status;
    }
    top = ERR_peek_last_error();
#if SP_HAS_UNEXPECTED_EOF_REASON
    if (e == SSL_ERROR_SSL && ERR_GET_REASON(top) == SSL_R_UNEXPECTED_EOF_WHILE_READING
        && c->established) {
        ERR_clear_error();
        return ragged_eof(c, err);
    }
#else
    if (e == SSL_ERROR_SYSCALL && top == 0 && c->established)
        return ragged_eof(c, err);
#endif
    capture_ssl_error(c, e, err);
    mark_broken(c, err);
    return SP_ERROR;
}

/* ---- life cycle --------------------------------------------------------------------- */

/* Let reads wait inside recv(): a blocking socket whose receive timeout is one wait slice
 * (every other send and recv passes SP_NOWAIT). Returns 0 where that cannot be had, and the
 * pump polls instead; the socket then stays as it was (it must be non-blocking). */
static int make_recv_waits(sp_socket fd)
{
#if SP_RECV_WAITS
    struct timeval tv;
    int flags = fcntl(fd, F_GETFL);
    tv.tv_sec = 0;
    tv.tv_usec = SP_WAIT_SLICE_MS * 1000;
    if (flags < 0 || setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0)
        return 0;
    return (flags & O_NONBLOCK) == 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) == 0;
#else
    (void)fd;
    return 0;
#endif
}

/* A send to a peer that reset the connection raises SIGPIPE unless told not to, and a process
 * that gave SIGPIPE back its default action (a command-line tool in a pipeline often does)
 * dies of it. MSG_NOSIGNAL (SP_NOSIGNAL) is not enough on macOS: older SDKs lack it, and older
 * kernels honour only the socket's own SO_NOSIGPIPE; so where that exists, it is set. */
static void no_sigpipe(sp_socket fd)
{
#ifdef SO_NOSIGPIPE
    int on = 1;
    (void)setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &on, sizeof on);
#else
    (void)fd;
#endif
}

sp_conn *sp_conn_new(SSL_CTX *ctx, int is_server, int fd, sp_err *err)
{
    sp_conn *c;
    BIO *rbio, *wbio;
    ERR_clear_error();
    if (!sp_once(&conn_index_made, make_conn_index)) {
        sp_err_drain(err);
        return NULL;
    }
#ifndef _WIN32
    if (!CRYPTO_THREAD_run_once(&fork_once, install_fork_handlers)) {
        sp_err_drain(err);
        return NULL;
    }
#endif
    c = calloc(1, sizeof *c);
    if (c == NULL) {
        err->sys_errno = ENOMEM;
        return NULL;
    }
    c->forks_at_birth = sp_flag_get(&forks_seen);
    c->child_forks_at_birth = sp_flag_get(&child_forks);
    c->wrote_at_child_forks = c->child_forks_at_birth;
    c->wrote_at_forks = c->forks_at_birth;
    c->fd = (sp_socket)fd;
    c->socket_mode = fd >= 0;
    c->identity = sp_ctx_identity(ctx); /* (first: sp_ctx.h) */
    c->ssl = sp_ctx_new_ssl(ctx); /* (under the context's read lock: sp_ctx.c) */
    if (c->socket_mode) {
        rbio = wbio = new_sock_bio(c);
    } else {
        rbio = BIO_new(BIO_s_mem());
        wbio = BIO_new(BIO_s_mem());
    }
    if (c->ssl == NULL || rbio == NULL || wbio == NULL) {
        sp_err_drain(err);
        BIO_free(rbio);
        if (wbio != rbio)
            BIO_free(wbio);
        SSL_free(c->ssl);
        free(c);
        return NULL;
    }
    if (c->socket_mode) {
        c->recv_waits = make_recv_waits(c->fd);
        no_sigpipe(c->fd);
        c->handshake_waits = is_server; /* a server starts with the client's hello */
        SSL_set_bio(c->ssl, rbio, rbio); /* one BIO, one reference, both directions */
        /* Read-ahead into OpenSSL's default buffer (one full record and a little): OpenSSL 3.0
         * moves whatever it still holds to the front of that buffer before each record, so a
         * bigger buffer would cost a copy of everything buffered per record (measured: 25k more
         * instructions per 16 KiB read with 64 KiB), for fewer recv() calls than it saves.
         * (TLS 1.3 only: note_alert ends it after a TLS <= 1.2 handshake.) */
        SSL_set_read_ahead(c->ssl, 1);
    } else {
        /* An empty rbio means "no data yet" (retry), not EOF, until sp_feed_eof. */
        BIO_set_mem_eof_return(rbio, -1);
        BIO_set_mem_eof_return(wbio, -1);
        SSL_set_bio(c->ssl, rbio, wbio);
    }
    SSL_set_mode(c->ssl, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
    SSL_set_info_callback(c->ssl, note_alert);
    if (!SSL_set_ex_data(c->ssl, conn_index, c)) {
        sp_err_drain(err);
        SSL_free(c->ssl);
        free(c);
        return NULL;
    }
    if (is_server)
        SSL_set_accept_state(c->ssl);
    else
        SSL_set_connect_state(c->ssl);
    sp_mutex_init(&c->ssl_lock);
    sp_mutex_init(&c->send_lock);
    return c;
}

void sp_conn_free(sp_conn *c)
{
    if (c == NULL)
        return;
    SSL_SESSION_free(c->session);
    X509_free(c->vfail_cert);
    free(c->cache_key);
    free(c->server_host);
    /* TLS 1.1+ lets a session be resumed after a close without close_notify (RFC 5246
     * 7.2.1); without this flag OpenSSL would mark the session unusable when freeing. A
     * connection that failed keeps the default, and its session dies with it. */
    if (c->established && c->broken == NULL && c->send_broken == NULL)
        SSL_set_shutdown(c->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    SSL_free(c->ssl); /* frees both BIOs */
    free(c->out);
    free(c->outq);
    if (c->early_heap)
        free(c->early);
    free(c->stash);
    if (c->broken != &broken_no_memory)
        free(c->broken);
    free(c->send_broken);
    sp_mutex_destroy(&c->ssl_lock);
    sp_mutex_destroy(&c->send_lock);
    free(c);
}

sp_conn *sp_conn_from_ssl(const SSL *ssl)
{
    return conn_index < 0 ? NULL : SSL_get_ex_data(ssl, conn_index);
}

SSL *sp_conn_ssl(sp_conn *c)
{
    return c->ssl;
}

void sp_conn_lock(sp_conn *c)
{
    lock_ssl(c);
}

void sp_conn_unlock(sp_conn *c)
{
    unlock_ssl(c);
}

/* ---- verification policy ------------------------------------------------------------ */

/* A TLS 1.3 server's session tickets hold the client's certificate, and OpenSSL cannot make a
 * ticket whose session encodes to more than 0xFF00 bytes: it fails the handshake after the
 * client's Finished, "internal error" (construct_stateless_ticket; Python's ssl and s_server
 * alike). A client whose leaf comes within SP_TICKET_ROOM of that gets no tickets on this
 * connection (it cannot resume; the others still do): the rest of a session (keys, ids, the
 * SNI name, ALPN, our end point) takes far less. TLS 1.2 decided to send its ticket at the
 * ServerHello, and cannot take it back: such a client fails there as with OpenSSL. */
#define SP_TICKET_ROOM 4096

static void no_ticket_for_a_huge_client(SSL *ssl, X509_STORE_CTX *store)
{
    X509 *leaf = X509_STORE_CTX_get_current_cert(store);
    int size;
    if (leaf == NULL)
        return;
    ERR_set_mark(); /* (an error measuring it is no error of the handshake's) */
    size = i2d_X509(leaf, NULL);
    ERR_pop_to_mark();
    if (size > 0xFF00 - SP_TICKET_ROOM)
        (void)SSL_set_num_tickets(ssl, 0); /* (it only stores the number: always 1) */
}

/* Keep the certificate a failed step is about, for the error message (the last failure is
 * the one SSL_get_verify_result reports). Without a reference the message only lacks it. */
static void note_verify_failure(sp_conn *c, X509_STORE_CTX *store, int e)
{
    X509 *cert = X509_STORE_CTX_get_current_cert(store);
    X509_free(c->vfail_cert);
    c->vfail_cert = NULL;
    if (cert != NULL && X509_up_ref(cert))
        c->vfail_cert = cert;
    c->vfail_depth = X509_STORE_CTX_get_error_depth(store);
    c->vfail_code = e;
}

/* 1 when OpenSSL's name check passed on the leaf's CN where RFC 6125 (and
 * sp_peer_check_hostname) says the subjectAltName replaces it (OpenSSL reads the CN whenever
 * there is no DNS name): the leaf has a subjectAltName that cannot be decoded (malformed, two
 * of them, or out of memory: a certificate for "victim.example" by its CN alone, with names
 * nobody can read beside it; such a leaf never verifies as a chain, so only a handshake that
 * checks the name but not the chain would take it), or one with SRV or URI names and no DNS
 * name (a service's or a SPIFFE workload's certificate, whose CN is no host name; the check
 * passed, with no DNS name to pass on: on the CN). */
static int cn_matched_in_place_of_sans(X509_STORE_CTX *store)
{
    X509 *leaf = X509_STORE_CTX_get_current_cert(store);
    int found = -1, i, dns = 0, bad;
    GENERAL_NAMES *sans;
    if (leaf == NULL || X509_get_ext_by_NID(leaf, NID_subject_alt_name, -1) < 0)
        return 0;
    ERR_set_mark(); /* (its reasons are no error of the handshake's: the mismatch is) */
    sans = X509_get_ext_d2i(leaf, NID_subject_alt_name, &found, NULL);
    ERR_pop_to_mark();
    for (i = 0; sans != NULL && i < sk_GENERAL_NAME_num(sans); i++)
        dns |= sk_GENERAL_NAME_value(sans, i)->type == GEN_DNS;
    bad = sans == NULL ? found != -1 : !dns && sp_sans_replace_cn(sans);
    GENERAL_NAMES_free(sans);
    return bad;
}

static int verify_callback(int ok, X509_STORE_CTX *store)
{
    SSL *ssl = X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx());
    sp_conn *c = ssl ? sp_conn_from_ssl(ssl) : NULL;
    int e, leaf = X509_STORE_CTX_get_error_depth(store) == 0;
    if (c != NULL && leaf && SSL_is_server(ssl))
        no_ticket_for_a_huge_client(ssl, store);
    /* (at depth 0 OpenSSL calls us with ok = 1 once the chain's checks, the name's among
     * them, are done) */
    if (ok && c != NULL && leaf && (c->verify_flags & SP_VERIFY_HOSTNAME) && c->checks_dns_name
        && cn_matched_in_place_of_sans(store)) {
        X509_STORE_CTX_set_error(store, X509_V_ERR_HOSTNAME_MISMATCH);
        ok = 0;
    }
    if (ok || c == NULL)
        return ok;
    e = X509_STORE_CTX_get_error(store);
    note_verify_failure(c, store, e);
    if (c->verify_flags & SP_VERIFY_REQUIRE)
        return 0;
    if ((c->verify_flags & SP_VERIFY_HOSTNAME)
        && (e == X509_V_ERR_HOSTNAME_MISMATCH || e == X509_V_ERR_IP_ADDRESS_MISMATCH))
        return 0;
    return 1; /* not required: carry on, SSL_get_verify_result keeps the verdict */
}

/* Anonymous suites (aNULL, which OpenSSL allows only at security level 0) authenticate
 * nobody: the server sends no certificate, so a client whose policy requires one (or checks
 * its name) would complete the handshake with nothing verified, and OpenSSL does not object
 * (a server that requires a client certificate does: it never chooses them). So such a client
 * does not offer them: OpenSSL asks the SSL's security callback about every suite it would
 * offer or accept, and ours refuses an aNULL suite while the policy needs a certificate (read
 * at each question: ssl_set_verify on a port may change it before a renegotiation), leaving
 * every other decision to the callback it replaced. */
static int security_callback(const SSL *ssl, const SSL_CTX *ctx, int op, int bits, int nid,
                             void *other, void *ex)
{
    sp_conn *c = ssl != NULL ? sp_conn_from_ssl(ssl) : NULL;
    /* The callback ours replaced: the context's, which the SSL took at SSL_new (a client
     * never changes its context, and no context of ours is given another callback). */
    int (*replaced)(const SSL *, const SSL_CTX *, int, int, int, void *, void *) =
        ssl != NULL ? SSL_CTX_get_security_callback(SSL_get_SSL_CTX(ssl)) : NULL;
    if (c == NULL || replaced == NULL || replaced == security_callback)
        return 0; /* (never: it is only installed on our SSLs, over the context's) */
    if (((unsigned)op & SSL_SECOP_OTHER_TYPE) == (unsigned)SSL_SECOP_OTHER_CIPHER && other != NULL
        && SSL_CIPHER_get_auth_nid(other) == NID_auth_null
        && (c->verify_flags & (SP_VERIFY_REQUIRE | SP_VERIFY_HOSTNAME)))
        return 0;
    return replaced(ssl, ctx, op, bits, nid, other, ex);
}

void sp_conn_apply_verify_locked(sp_conn *c)
{
    int mode = SSL_VERIFY_NONE;
    int is_server = SSL_is_server(c->ssl);
    if (is_server) {
        /* Checking the client's name (ssl_set_verify_hostname with a hostname) needs its
         * certificate: ask for one, and refuse a client that sends none (as Racket documents
         * for ssl-set-verify-hostname!), also when the chain itself need not verify. */
        int check_name = (c->verify_flags & SP_VERIFY_HOSTNAME) && c->checks_host;
        if ((c->verify_flags & (SP_VERIFY_PEER | SP_VERIFY_REQUIRE)) || check_name)
            mode = SSL_VERIFY_PEER;
        if ((c->verify_flags & SP_VERIFY_REQUIRE) || check_name)
            mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
        /* Sessions resume only under this context and policy (a resumed session is not
         * verified again): never into a stricter one. */
        if (!sp_ssl_set_sid(c->ssl, c->verify_flags & ~SP_VERIFY_POST_HANDSHAKE, c->identity,
                            check_name ? c->host_tag : NULL))
            ERR_clear_error();
    } else {
        /* A client always checks what it is given; the callback decides what is fatal. */
        mode = SSL_VERIFY_PEER;
#ifdef SSL_VERIFY_POST_HANDSHAKE
        if (c->verify_flags & SP_VERIFY_POST_HANDSHAKE)
            SSL_set_post_handshake_auth(c->ssl, 1);
#endif
        /* Anonymous suites exist only at security level 0, which the SSL took from its
         * context at SSL_new and keeps (a later @SECLEVEL on the context is not its own):
         * elsewhere no callback, which OpenSSL would ask a few hundred questions per
         * handshake (+21 k instructions per resumed connection). Once: a client never
         * changes its context. */
        if (SSL_get_security_level(c->ssl) == 0 && SSL_get_security_callback(c->ssl) != NULL
            && SSL_get_security_callback(c->ssl) != security_callback)
            SSL_set_security_callback(c->ssl, security_callback);
    }
    SSL_set_verify(c->ssl, mode, verify_callback);
}

int sp_conn_set_verify(sp_conn *c, int flags)
{
    lock_ssl(c);
    if (flags != c->verify_flags && c->cache_key != NULL) {
        /* A port's own policy (ssl_set_verify / ssl_try_verify on it) is no longer its
         * context's: a session it makes from now on (a TLS 1.2 server's renegotiation) would
         * be filed under the context and resumed, not verified again, by the context's next
         * connection. Its sessions go uncached from here. */
        free(c->cache_key);
        c->cache_key = NULL;
    }
    c->verify_flags = flags;
    sp_conn_apply_verify_locked(c);
    unlock_ssl(c);
    return 1;
}

void sp_conn_reader_sends(sp_conn *c)
{
    lock_ssl(c);
    c->reader_sends = !c->socket_mode;
    unlock_ssl(c);
}

int sp_conn_get_verify(sp_conn *c)
{
    return c->verify_flags;
}

/* Check the peer's certificate against host (ssl_lock held). */
static int check_host_locked(sp_conn *c, const char *host, int is_ip)
{
    X509_VERIFY_PARAM *param = SSL_get0_param(c->ssl);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    int ok;
    X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    if (is_ip) {
        ok = X509_VERIFY_PARAM_set1_ip_asc(param, host);
    } else {
        ok = X509_VERIFY_PARAM_set1_host(param, host, 0);
        c->checks_dns_name = ok;
    }
    if (ok && SSL_is_server(c->ssl)) /* (a client's name check needs neither) */
        ok = EVP_Digest(host, strlen(host), md, &n, EVP_sha256(), NULL) && n >= SP_HOST_TAG_LEN;
    if (ok && n > 0) {
        memcpy(c->host_tag, md, SP_HOST_TAG_LEN);
        c->checks_host = 1;
        sp_conn_apply_verify_locked(c); /* a server now asks for the client's certificate,
                                           and resumes only sessions made for this name */
    }
    return ok;
}

int sp_conn_set_host(sp_conn *c, const char *host, int is_ip, int send_sni, int check, sp_err *err)
{
    int ok = 1;
    sp_mutex_lock(&c->ssl_lock);
    ERR_clear_error();
    if (send_sni && !is_ip && !SSL_set_tlsext_host_name(c->ssl, host))
        ok = 0;
    if (ok && SSL_is_server(c->ssl)) {
        size_t size = strlen(host) + 1;
        free(c->server_host);
        c->server_host = malloc(size);
        c->server_host_is_ip = is_ip != 0;
        if (c->server_host == NULL) {
            sp_mutex_unlock(&c->ssl_lock);
            err->sys_errno = ENOMEM;
            return 0;
        }
        memcpy(c->server_host, host, size);
    }
    if (ok && check)
        ok = check_host_locked(c, host, is_ip);
    if (!ok)
        sp_err_drain(err);
    sp_mutex_unlock(&c->ssl_lock);
    return ok;
}

int sp_conn_server_name_check_locked(sp_conn *c)
{
    int wanted = (c->verify_flags & SP_VERIFY_HOSTNAME) != 0;
    if (wanted && !c->checks_host)
        return c->server_host != NULL
               && check_host_locked(c, c->server_host, c->server_host_is_ip);
    if (!wanted && c->checks_host) { /* the name the first context checked is not checked */
        X509_VERIFY_PARAM *param = SSL_get0_param(c->ssl);
        if (!X509_VERIFY_PARAM_set1_host(param, NULL, 0)
            || !X509_VERIFY_PARAM_set1_ip(param, NULL, 0))
            return 0;
        c->checks_host = c->checks_dns_name = 0;
    }
    return 1;
}

/* ---- socket I/O (socket mode only) -------------------------------------------------- */

/* What one OpenSSL call may recv() before the socket BIO says "not yet" (sock_bio_read): a
 * record of application data takes one or two recv()s of ~16.7 KiB (read-ahead's buffer);
 * 64 KiB of 27-byte KeyUpdates takes OpenSSL ~40 ms. */
#define SP_RECV_PER_CALL (64 * 1024)

/* The socket BIO. Reading: recv() straight into OpenSSL's record buffer (read-ahead makes
 * that one large recv per batch of records). Writing: records are appended to `outq`, and
 * the sender later swaps that whole buffer out and sends it with no further copy. Both run
 * inside OpenSSL calls, so with ssl_lock held; neither ever waits. */

#ifndef _WIN32
/* One sendmsg() of a, then b. */
static long send_two(sp_socket fd, const void *a, size_t alen, const void *b, size_t blen)
{
    struct iovec iov[2];
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    iov[0].iov_base = (void *)a;
    iov[0].iov_len = alen;
    iov[1].iov_base = (void *)b;
    iov[1].iov_len = blen;
    msg.msg_iov = iov;
    msg.msg_iovlen = 2;
    return (long)sendmsg(fd, &msg, SP_SEND_FLAGS);
}
#endif

/* The last record of an sp_write, and each second full record of a larger one, leave straight
 * from OpenSSL's buffer when no other send is under way: alone when nothing is queued, else
 * (POSIX) in one sendmsg() after the records queued before it, so a batch of records is sent
 * without copying its last one. A 64 KiB write goes out as two sendmsg() of two records each
 * (two of its four records copied), not one of four (three copied, and 65.6 KB: just over a
 * loopback segment, so the fourth record's last bytes came in a segment of their own). Paired
 * runs of 64 KiB writes (bench/README.md, section 3): 1.18x up and 1.07x down, the writer's
 * CPU -15 % / -7 %. ssl_lock is held; send_lock is only tried, which keeps the lock order.
 * Returns how much of the record the socket took; the rest, and anything after a failure
 * (which the sender then reports), is queued as usual. */
static size_t send_direct(sp_conn *c, const char *data, size_t len)
{
    long n = 0;
    size_t took = 0;
    if (c->direct_send == SP_DIRECT_PAIRS
        && (len <= SSL3_RT_MAX_PLAIN_LENGTH || c->outq_len <= SSL3_RT_MAX_PLAIN_LENGTH))
        return 0; /* not the second full record of a pair: queued */
    if (!c->direct_send || !sp_mutex_trylock(&c->send_lock))
        return 0;
    if (c->out_off == c->out_len && c->outq_len == 0) {
        do {
            n = (long)send(c->fd, data, (sp_iolen)len, SP_SEND_FLAGS);
        } while (n < 0 && SP_EINTR(SP_SOCK_ERRNO()));
        took = n > 0 ? (size_t)n : 0;
    }
#ifndef _WIN32
    else if (c->out_off == c->out_len) {
        do {
            n = send_two(c->fd, c->outq, c->outq_len, data, len);
        } while (n < 0 && SP_EINTR(SP_SOCK_ERRNO()));
        if (n >= (long)c->outq_len) {
            took = (size_t)n - c->outq_len;
            c->outq_len = 0;
            c->read_out = 0;
        } else if (n > 0) { /* the sender sends the rest of the queue, then this record */
            unsigned char *spare = c->out;
            size_t spare_cap = c->out_cap;
            c->out = c->outq;
            c->out_cap = c->outq_cap;
            c->out_len = c->outq_len;
            c->out_off = (size_t)n;
            c->outq = spare;
            c->outq_cap = spare_cap;
            c->outq_len = 0;
            c->read_out = 0;
        }
    }
#endif
    sp_mutex_unlock(&c->send_lock);
    return took;
}

/* The received-early buffer is empty again (ssl_lock held). */
static void drop_early(sp_conn *c)
{
    if (c->early_heap)
        free(c->early);
    c->early = NULL;
    c->early_len = c->early_off = 0;
    c->early_heap = 0;
}

/* Before sp_read returns (ssl_lock held): bytes OpenSSL left in the caller's stack buffer
 * move to the heap. 0 when out of memory (the connection is then broken: bytes would be
 * lost). OpenSSL takes them all when it holds nothing (it asks for a full buffer); in the
 * middle of a record it asks only for the room its buffer has left. */
static int keep_early(sp_conn *c, const unsigned char *stack_buf)
{
    unsigned char *copy;
    size_t n, off = c->early_off;
    if (c->early != stack_buf)
        return 1;
    n = c->early_len - c->early_off;
    c->early = NULL; /* the stack buffer: nothing to free */
    c->early_len = c->early_off = 0;
    if (n == 0)
        return 1;
    copy = malloc(n);
    if (copy == NULL)
        return 0;
    memcpy(copy, stack_buf + off, n);
    c->early = copy;
    c->early_len = n;
    c->early_heap = 1;
    return 1;
}

/* A BIO call that fails for a reason the socket did not just set in errno (no memory, an
 * error an earlier recv() met): the failed call's reason for capture_ssl_error, and in errno
 * too, which OpenSSL 3.2 and later put in their error queue as a "system library" entry (an
 * allocator need not set it: with errno 0 that entry read "system library::Success"). */
static int bio_failed(sp_conn *c, int e)
{
    c->bio_errno = e;
    errno = e;
    return -1;
}

static int sock_bio_write(BIO *bio, const char *data, int len)
{
    sp_conn *c = BIO_get_data(bio);
    size_t need, sent;
    BIO_clear_retry_flags(bio);
    if (len <= 0)
        return 0;
    sent = send_direct(c, data, (size_t)len);
    if (sent < (size_t)len) {
        data += sent;
        need = c->outq_len + ((size_t)len - sent);
        if (need > c->outq_cap) {
            size_t cap = c->outq_cap ? c->outq_cap
                                     : need < SP_OUTQ_SMALL ? need : SP_OUTQ_INITIAL;
            unsigned char *grown;
            while (cap < need)
                cap *= 2;
            grown = realloc(c->outq, cap);
            if (grown == NULL)
                return bio_failed(c, ENOMEM);
            c->outq = grown;
            c->outq_cap = cap;
        }
        memcpy(c->outq + c->outq_len, data, (size_t)len - sent);
        c->outq_len = need;
    }
    if (c->reading)
        c->read_out += (size_t)len;
    return len;
}

static int sock_bio_read(BIO *bio, char *buf, int len)
{
    sp_conn *c = BIO_get_data(bio);
    BIO_clear_retry_flags(bio);
    if (len <= 0)
        return 0;
    if (c->early_off < c->early_len) { /* what a waiting recv() got comes first */
        size_t n = c->early_len - c->early_off;
        if (n > (size_t)len)
            n = (size_t)len;
        memcpy(buf, c->early + c->early_off, n);
        c->early_off += n;
        if (c->early_off == c->early_len) {
            /* This call's own waiting recv() (its stack buffer, not bytes an earlier call
             * left) that came back short counts as a short recv() (below). */
            c->recv_short = !c->early_heap && !c->recv_full;
            drop_early(c);
        }
        return (int)n;
    }
    if (c->early_errno != 0) { /* ... or the error it met (a reset is reported only once) */
        int e = c->early_errno;
        c->early_errno = 0;
        return bio_failed(c, e);
    }
    if (c->read_out >= SP_OUT_HIGH) {
        /* What reading made (a KeyUpdate reply per KeyUpdate the peer requests, a warning
         * per renegotiation it attempts) waits for a peer that does not read it: take no
         * more input until it did (wait_readable then waits for the socket to drain), so
         * that such a peer cannot make outq grow without bound. */
        BIO_set_retry_read(bio);
        return -1;
    }
    if (c->recv_busy) {
        /* A reader waits in recv() (recv_early): what it gets comes before anything this
         * recv() would get. "Not yet": the reader hands its bytes over as early bytes. */
        BIO_set_retry_read(bio);
        return -1;
    }
    if (!c->established && c->outq_len > 0) {
        /* A handshake whose own flight is still queued: the peer has not seen it, so its
         * answer cannot be here yet. "Not yet", without a recv() that would only meet EAGAIN:
         * the pump sends the flight, then waits for the answer (one system call fewer per
         * handshake, at each end). */
        BIO_set_retry_read(bio);
        return -1;
    }
    if (c->recv_short && !c->draining) {
        /* A recv() of this call returned less than it asked for: a stream socket's queue was
         * empty then, and another recv() now would only meet EAGAIN (a peer that sends a
         * record in small TCP segments: one wasted system call per segment). "Not yet": the
         * pump waits (WAITING: back at once if more came meanwhile) and calls OpenSSL again,
         * whose first recv() runs. Nothing is read here, so nothing can be lost; the ticket
         * drain at close (which does not wait) reads until EAGAIN as before. */
        BIO_set_retry_read(bio);
        return -1;
    }
    if (c->recv_in_call >= SP_RECV_PER_CALL) {
        /* This OpenSSL call took that much and still wants more: records with no data for the
         * caller (a flood of KeyUpdates, tickets) that a peer keeps the socket full of. OpenSSL
         * would go on reading them in this one call, past the caller's deadline and Ctrl-C,
         * and a close's ticket drain for as long as the peer sends: "not yet", so that the
         * pump looks at the clock (a read of application data takes a record or two). */
        BIO_set_retry_read(bio);
        return -1;
    }
    for (;;) {
        long n = (long)recv(c->fd, buf, (sp_iolen)len, SP_RECV_FLAGS);
        int e;
        if (n > 0) {
            c->recv_full = n == (long)len;
            c->recv_short = !c->recv_full;
            c->recv_in_call += (size_t)n;
            return (int)n;
        }
        if (n == 0) {
            if (c->draining) { /* closing: nothing more will come, and that is no error */
                c->peer_closed = 1; /* (sp_conn_drop_unread: nothing left to drop) */
                BIO_set_retry_read(bio);
                return -1;
            }
            c->peer_closed = 1; /* the peer closed the transport */
            return 0;
        }
        e = SP_SOCK_ERRNO();
        if (SP_EINTR(e))
            continue;
        if (SP_EWOULDBLOCK(e))
            BIO_set_retry_read(bio);
        else
            c->bio_errno = e;
        return -1;
    }
}

static long sock_bio_ctrl(BIO *bio, int cmd, long num, void *ptr)
{
    sp_conn *c = BIO_get_data(bio);
    (void)num, (void)ptr;
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1; /* the pump sends after every OpenSSL call */
    case BIO_CTRL_EOF:
        return c == NULL ? 0 : c->peer_closed; /* lets OpenSSL report an unexpected EOF */
    case BIO_CTRL_WPENDING:
        return c == NULL ? 0 : (long)c->outq_len;
    default:
        return 0;
    }
}

static int sock_bio_create(BIO *bio)
{
    BIO_set_init(bio, 1);
    return 1;
}

static int sock_bio_destroy(BIO *bio)
{
    BIO_set_data(bio, NULL);
    return 1;
}

static BIO_METHOD *sock_method;
static int sock_method_made;

static int make_sock_method(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "sslports socket");
    if (m == NULL)
        return 0;
    if (!BIO_meth_set_write(m, sock_bio_write) || !BIO_meth_set_read(m, sock_bio_read)
        || !BIO_meth_set_ctrl(m, sock_bio_ctrl) || !BIO_meth_set_create(m, sock_bio_create)
        || !BIO_meth_set_destroy(m, sock_bio_destroy)) {
        BIO_meth_free(m);
        return 0;
    }
    sock_method = m;
    return 1;
}

static BIO *new_sock_bio(sp_conn *c)
{
    BIO *bio;
    if (!sp_once(&sock_method_made, make_sock_method))
        return NULL;
    bio = BIO_new(sock_method);
    if (bio != NULL)
        BIO_set_data(bio, c);
    return bio;
}

long long sp_mono_ms(void)
{
#ifdef _WIN32
    return (long long)GetTickCount64();
#else
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
#endif
}

/* What one pump call may still wait (WAITING): `ms` in all, counted from its first wait. */
typedef struct {
    int ms;
    long long end; /* 0 before the first wait */
} wait_budget;

static wait_budget budget_of(int wait_ms)
{
    wait_budget b;
    b.ms = wait_ms;
    b.end = 0;
    return b;
}

/* How long the call's next wait may take, in *ms; 0 when the budget is spent (the first wait
 * always takes place, for the whole budget, however short: wait_ms 0 is one look). */
static int budget_next(wait_budget *b, int *ms)
{
    long long now = sp_mono_ms();
    if (b->end == 0) {
        b->end = now + (b->ms > 0 ? b->ms : 0) + 1; /* (+1: never 0, the "not started" mark) */
        *ms = b->ms;
        return 1;
    }
    if (now + 1 >= b->end)
        return 0;
    *ms = (int)(b->end - 1 - now);
    return 1;
}

static int wait_fd(sp_conn *c, short events, int wait_ms)
{
    struct pollfd pfd;
    int r;
    pfd.fd = c->fd;
    pfd.events = events;
    pfd.revents = 0;
    r = sp_poll(&pfd, 1, wait_ms);
    if (r < 0 && SP_EINTR(SP_SOCK_ERRNO()))
        return 0; /* a signal: return to Python so its handler runs */
    return r;
}

/* wait_fd for what the call's budget has left: 0 (as a wait that elapsed) once it is spent. */
static int wait_fd_within(sp_conn *c, short events, wait_budget *b)
{
    int ms;
    return budget_next(b, &ms) ? wait_fd(c, events, ms) : 0;
}

/* A pause for what the call's budget has left of a slice, without looking at the socket: a
 * reset or closed socket's poll() reports POLLERR/POLLHUP at once, whatever it waits for, and
 * a pause that is no pause makes a loop of its caller's. */
static void pause_within(wait_budget *b)
{
    int ms;
    if (budget_next(b, &ms))
        sp_sleep_ms(ms);
}

/* Ciphertext not yet on the wire: what the sender holds plus what outq holds. */
static size_t queued_out(sp_conn *c)
{
    size_t n;
    sp_mutex_lock(&c->send_lock);
    n = c->out_len - c->out_off;
    sp_mutex_unlock(&c->send_lock);
    sp_mutex_lock(&c->ssl_lock);
    n += c->outq_len;
    sp_mutex_unlock(&c->ssl_lock);
    return n;
}

/* Send queued ciphertext without waiting. Returns SP_OK when nothing is left queued,
 * SP_WANT_WRITE when the socket is full, SP_ERROR on a transport failure. When all is sent,
 * both buffers are freed: an idle connection holds none. */
static int send_queued_nowait(sp_conn *c, sp_err *err)
{
    int status = SP_OK, e;
    sp_mutex_lock(&c->send_lock);
    if (c->send_broken != NULL) { /* (SEND FAILURE: what is queued can never leave) */
        memcpy(err, c->send_broken, sizeof *err);
        c->out_len = c->out_off = 0;
        c->writer_queued = 0;
        sp_mutex_lock(&c->ssl_lock);
        c->outq_len = 0;
        c->read_out = 0;
        sp_mutex_unlock(&c->ssl_lock);
        sp_mutex_unlock(&c->send_lock);
        return SP_ERROR;
    }
    for (;;) {
        long n;
        if (c->out_off == c->out_len) {
            /* Take everything OpenSSL queued by swapping buffers (send_lock, then ssl_lock). */
            unsigned char *spare = c->out;
            size_t spare_cap = c->out_cap;
            sp_mutex_lock(&c->ssl_lock);
            c->read_out = 0; /* (what reading queued leaves outq now) */
            if (c->outq_len > 0) {
                c->out = c->outq;
                c->out_cap = c->outq_cap;
                c->out_len = c->outq_len;
                c->outq = spare;
                c->outq_cap = spare_cap;
                c->outq_len = 0;
            } else {
                c->out_len = 0;
                if (c->outq != NULL) {
                    free(c->outq);
                    c->outq = NULL;
                    c->outq_cap = 0;
                }
            }
            sp_mutex_unlock(&c->ssl_lock);
            c->out_off = 0;
            if (c->out_len == 0) {
                c->writer_queued = 0;
                free(c->out); /* idle: hold no buffer */
                c->out = NULL;
                c->out_cap = 0;
                break;
            }
        }
        n = (long)send(c->fd, (const char *)c->out + c->out_off,
                       (sp_iolen)(c->out_len - c->out_off), SP_SEND_FLAGS);
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && SP_EINTR(SP_SOCK_ERRNO()))
            continue;
        if (n < 0 && SP_EWOULDBLOCK(SP_SOCK_ERRNO())) {
            status = SP_WANT_WRITE;
            break;
        }
        e = n < 0 ? SP_SOCK_ERRNO() : EPIPE;
        start_call(c, err); /* (afresh: see capture_ssl_error) */
        err->sys_errno = e;
        status = SP_ERROR;
        break;
    }
    if (status == SP_ERROR) { /* (send_broken is set holding both locks: see sp_conn.h) */
        sp_mutex_lock(&c->ssl_lock);
        mark_send_broken(c, err);
        sp_mutex_unlock(&c->ssl_lock);
    }
    sp_mutex_unlock(&c->send_lock);
    return status;
}

/* What reading queued goes out without waiting; a socket that can no longer be written does
 * not end the reading (SEND FAILURE): SP_OK then, and the bytes are dropped. */
static int send_for_reader(sp_conn *c, sp_err *err)
{
    int status = send_queued_nowait(c, err), only_send;
    if (status != SP_ERROR)
        return status;
    sp_mutex_lock(&c->ssl_lock);
    only_send = c->broken == NULL && c->send_broken != NULL;
    sp_mutex_unlock(&c->ssl_lock);
    if (!only_send)
        return SP_ERROR;
    start_call(c, err);
    return SP_OK;
}

/* What a failure queued (its alert) goes out without waiting; what that send meets is not
 * the failed operation's error (socket mode; a stream's caller takes the alert itself). */
static void send_alert_nowait(sp_conn *c)
{
    sp_err ignored;
    if (!c->socket_mode)
        return;
    sp_err_reset(&ignored);
    (void)send_queued_nowait(c, &ignored);
}

/* A write leaves bytes queued (held, or out of time): flush() must send them. */
static void note_writer_queued(sp_conn *c)
{
    sp_mutex_lock(&c->send_lock);
    if (c->out_off < c->out_len)
        c->writer_queued = 1;
    sp_mutex_lock(&c->ssl_lock);
    if (c->outq_len > 0)
        c->writer_queued = 1;
    sp_mutex_unlock(&c->ssl_lock);
    sp_mutex_unlock(&c->send_lock);
}

/* Whether an output port's bytes are still queued (send_lock held). A broken connection holds
 * none: they can never be sent, and the write that failed already said so (a later flush or
 * close() would only fail again, with whatever send() says the second time). */
static int held_out_locked(sp_conn *c)
{
    int held = c->writer_queued;
    if (held) {
        lock_ssl(c); /* (lock order: send_lock, then ssl_lock) */
        held = c->broken == NULL && c->send_broken == NULL;
        unlock_ssl(c);
    }
    return held;
}

int sp_held_out(sp_conn *c)
{
    int held;
    if (!c->socket_mode)
        return 0;
    if (in_own_callback(c)) {
        /* This thread holds ssl_lock (CALLBACKS): waiting for send_lock would reverse the lock
         * order, and a thread that sends without a port lock (the last close's flush) holds
         * send_lock while it waits for ssl_lock. Busy: that thread sends this port's bytes
         * too; say they are held, and the port's next send is refused (EDEADLK), not lost. */
        held = sp_held_out_try(c);
        return held < 0 ? 1 : held;
    }
    sp_mutex_lock(&c->send_lock);
    held = held_out_locked(c);
    sp_mutex_unlock(&c->send_lock);
    return held;
}

int sp_held_out_try(sp_conn *c)
{
    int held;
    if (!c->socket_mode)
        return 0;
    if (!sp_mutex_trylock(&c->send_lock))
        return -1;
    held = held_out_locked(c);
    sp_mutex_unlock(&c->send_lock);
    return held;
}

void sp_conn_drop_unread(sp_conn *c)
{
    int seen_eof;
    if (!c->socket_mode)
        return;
    lock_ssl(c);
    seen_eof = c->peer_closed; /* recv() returned 0: nothing more can arrive */
    unlock_ssl(c);
    if (!seen_eof)
        (void)sp_fd_drop_unread((int)c->fd);
}

long sp_fd_drop_unread(int fd)
{
    unsigned char scratch[16384];
    long dropped = 0;
    int i;
    for (i = 0; i < 256; i++) { /* at most 4 MiB */
        long n = (long)recv((sp_socket)fd, (char *)scratch, (sp_iolen)sizeof scratch,
                            SP_RECV_FLAGS);
        if (n < 0 && SP_EINTR(SP_SOCK_ERRNO()))
            continue;
        if (n <= 0)
            break; /* EOF (after shutdown()), nothing more (EAGAIN), or an error */
        dropped += n;
    }
    return dropped;
}

/* LINGERING CLOSE. Bytes the peer sends after our last close (a TLS 1.3 server's session
 * tickets, when it sends them late) meet a socket whose receiving side is shut: Linux answers
 * with a reset, and a reset also drops what the kernel had not yet delivered of our last write.
 * So when the send queue still holds bytes, the last close shuts down only our side (SHUT_WR)
 * and keeps the descriptor until the queue is empty (ports.py _Lingerer asks sp_fd_unsent).
 * sp_fd_unsent: the bytes a TCP socket's kernel holds to send or to have acknowledged, our FIN
 * included (Linux SIOCOUTQ, macOS SO_NWRITE); 0 where it cannot tell, on error, once the
 * connection is gone (a reset), and for other sockets (a Unix socket's bytes are with the peer
 * already). */
long sp_fd_unsent(int fd)
{
#if defined(SIOCOUTQ) || defined(SO_NWRITE)
    int n = 0;
    struct sockaddr_storage addr;
    socklen_t len = sizeof addr;
#ifdef SIOCOUTQ
    if (ioctl(fd, SIOCOUTQ, &n) != 0 || n <= 0)
        return 0;
#else
    socklen_t nlen = sizeof n;
    if (getsockopt(fd, SOL_SOCKET, SO_NWRITE, &n, &nlen) != 0 || n <= 0)
        return 0;
#endif
    /* (not connected any more, as after a reset: what the kernel counts will never leave) */
    if (getpeername(fd, (struct sockaddr *)&addr, &len) != 0
        || (addr.ss_family != AF_INET && addr.ss_family != AF_INET6))
        return 0;
    return n;
#else
    (void)fd;
    return 0;
#endif
}

/* The last close lingers for more than SP_LINGER_MIN bytes, or for any byte the kernel has not
 * even transmitted yet (Linux SIOCOUTQNSD: the peer's window is closed, it is not reading). A
 * small tail that has left (a reply, a server's tickets) is only waiting for its acknowledgement,
 * which a delayed ACK holds back up to 40 ms: on loopback those bytes are in the peer's kernel
 * already, and lingering on every such connection would cost each a hand-off to the lingerer's
 * thread. A write to a peer that reads slowly is what sits in the queue long enough for late
 * bytes to destroy it, however small its tail. */
#define SP_LINGER_MIN 16384

static int fd_untransmitted(int fd)
{
#ifdef SIOCOUTQNSD
    int n = 0;
    return ioctl(fd, SIOCOUTQNSD, &n) == 0 && n > 0;
#else
    (void)fd;
    return 0;
#endif
}

long sp_conn_unsent(sp_conn *c)
{
    return c->socket_mode ? sp_fd_linger_needed((int)c->fd) : 0;
}

long sp_fd_linger_needed(int fd)
{
    long n = sp_fd_unsent(fd);
    return n > SP_LINGER_MIN || (n > 0 && fd_untransmitted(fd)) ? n : 0;
}

void sp_conn_failure(sp_conn *c, sp_err *err)
{
    lock_ssl(c);
    if (!send_failed(c, err)) {
        sp_err_reset(err);
        if (c->eof_status != 0)
            err->sys_errno = EPIPE; /* a write after the end: it failed sending */
    }
    err->conn = c;
    unlock_ssl(c);
}

int sp_conn_broken(sp_conn *c)
{
    int broken;
    lock_ssl(c);
    broken = c->broken != NULL || c->send_broken != NULL;
    unlock_ssl(c);
    return broken;
}

unsigned long long sp_written(sp_conn *c)
{
    unsigned long long n;
    lock_ssl(c);
    n = c->written;
    unlock_ssl(c);
    return n;
}

/* Send everything queued, waiting within the call's budget for the socket to drain. */
static int send_queued(sp_conn *c, wait_budget *b, sp_err *err)
{
    for (;;) {
        int r = send_queued_nowait(c, err);
        if (r != SP_WANT_WRITE)
            return r;
        if (wait_fd_within(c, POLLOUT, b) <= 0)
            return SP_WANT_WRITE;
    }
}

/* Wait for a whole slice inside recv(), into buf (SP_EARLY_MAX bytes, sp_read's stack),
 * which the socket BIO then hands to OpenSSL first. Called after OpenSSL asked its BIO for
 * more, which serves early bytes before any: none are left (if some were, there would be
 * nothing to wait for). */
static int recv_early(sp_conn *c, unsigned char *buf)
{
    long n;
    int e;
    sp_mutex_lock(&c->ssl_lock);
    if (c->early_len > c->early_off) {
        sp_mutex_unlock(&c->ssl_lock);
        return SP_OK;
    }
    c->recv_busy = 1; /* (a writer driving a renegotiation must not recv() meanwhile) */
    sp_mutex_unlock(&c->ssl_lock);
    n = (long)recv(c->fd, (char *)buf, SP_EARLY_MAX, 0); /* (char *): Windows */
    e = n < 0 ? SP_SOCK_ERRNO() : 0;
    sp_mutex_lock(&c->ssl_lock);
    c->recv_busy = 0;
    if (n < 0 && (SP_EWOULDBLOCK(e) || SP_EINTR(e))) {
        sp_mutex_unlock(&c->ssl_lock);
        return SP_WANT_READ; /* the slice elapsed, or a signal: back to Python */
    }
    if (n > 0) {
        c->early = buf;
        c->early_len = (size_t)n;
        c->early_off = 0;
        c->recv_full = n == SP_EARLY_MAX;
    } else
        c->early_errno = e; /* 0: EOF, which the BIO's own recv() will see again */
    sp_mutex_unlock(&c->ssl_lock);
    return SP_OK;
}

/* Wait, within the call's budget, until the socket is readable, sending queued output
 * meanwhile (a peer that waits for our flight before it sends must get it). SP_OK when
 * readable (or closed), SP_WANT_READ when the budget is spent, SP_ERROR when sending failed.
 * With early_buf (sp_read, sp_handshake) a whole-slice wait with nothing left to send is a
 * recv() into it. */
static int wait_readable(sp_conn *c, wait_budget *b, sp_err *err, unsigned char *early_buf)
{
    short events = POLLIN;
    int wait_ms;
    if (queued_out(c) > 0) {
        int s = send_for_reader(c, err);
        if (s == SP_ERROR)
            return SP_ERROR;
        if (s == SP_WANT_WRITE) {
            int throttled;
            sp_mutex_lock(&c->ssl_lock);
            throttled = c->read_out >= SP_OUT_HIGH;
            sp_mutex_unlock(&c->ssl_lock);
            /* The socket BIO takes no input until the peer reads what reading made: wait
             * for room only (readable input would wake us to no avail, at 100% CPU). */
            events = throttled ? POLLOUT : POLLIN | POLLOUT;
        }
    }
    if (!budget_next(b, &wait_ms))
        return SP_WANT_READ;
    if (early_buf != NULL && c->recv_waits && events == POLLIN && wait_ms >= SP_WAIT_SLICE_MS)
        return recv_early(c, early_buf);
    return wait_fd(c, events, wait_ms) > 0 ? SP_OK : SP_WANT_READ;
}

/* An idle connection keeps no record buffers. With read-ahead on, SSL_MODE_RELEASE_BUFFERS
 * does not free the read buffer; SSL_free_buffers does, and refuses (harmlessly) while it
 * still holds unprocessed data. Not between a record's header and its body, though: there
 * nothing is pending, and OpenSSL before 3.0.14 / 3.1.6 / 3.2.2 / 3.3.1 / 1.1.1y frees the
 * buffer the header is in all the same (CVE-2024-4741, a use after free when the body
 * arrives); a peer can stop at that point on purpose. So only where the record layer waits for
 * a header ("RH"; on any version, as its state tells). */
static void release_idle_buffers(sp_conn *c)
{
    sp_mutex_lock(&c->ssl_lock);
    if (!SSL_has_pending(c->ssl) && strcmp(SSL_rstate_string(c->ssl), "RH") == 0)
        SSL_free_buffers(c->ssl);
    sp_mutex_unlock(&c->ssl_lock);
}

/* Is there anything for SSL_read_ex to process or report without new ciphertext: buffered
 * records, or a sticky end state? */
static int has_input(sp_conn *c)
{
    int r;
    sp_mutex_lock(&c->ssl_lock);
    /* (a part of a record that the last sp_read left, with no OpenSSL call since, is not) */
    r = (SSL_has_pending(c->ssl) && c->read_starved != c->ssl_calls + 1) || c->eof_status != 0
        || c->broken != NULL || c->peer_closed || c->early_len > c->early_off
        || c->early_errno != 0 || c->stash_len > c->stash_off;
    sp_mutex_unlock(&c->ssl_lock);
    return r;
}

/* keep_early failed (ssl_lock held): received bytes cannot be kept, so the connection ends. */
static int out_of_memory(sp_conn *c, sp_err *err)
{
    start_call(c, err); /* (afresh: see capture_ssl_error) */
    err->sys_errno = ENOMEM;
    mark_broken(c, err);
    drop_early(c);
    return SP_ERROR;
}

/* The stash is empty again: an idle connection holds no buffer (ssl_lock held). */
static void drop_stash(sp_conn *c)
{
    free(c->stash);
    c->stash = NULL;
    c->stash_len = c->stash_off = c->stash_cap = 0;
}

/* Either side's TLS <= 1.2 renegotiation is pending or under way (ssl_lock held). */
static int renegotiating(sp_conn *c)
{
    return c->established && SSL_version(c->ssl) < TLS1_3_VERSION
        && (SSL_renegotiate_pending(c->ssl) || SSL_in_init(c->ssl));
}

/* A client's renegotiation (the server's HelloRequest was read) is pending or under way: a
 * writer drives it with SSL_read_ex, not SSL_write_ex (A SERVER'S RENEGOTIATION MET BY A
 * WRITER; ssl_lock held). */
static int writer_reads(sp_conn *c)
{
    return !SSL_is_server(c->ssl) && renegotiating(c);
}

/* A renegotiation that SSL_shutdown would refuse to interrupt: a client's pending or under
 * way (writer_reads), a server's under way (its HelloRequest alone starts no handshake, and a
 * client may leave it unanswered; ssl_lock held). */
static int shutdown_waits(sp_conn *c)
{
    return writer_reads(c) || (SSL_is_server(c->ssl) && renegotiating(c) && SSL_in_init(c->ssl));
}

int sp_conn_renegotiating(sp_conn *c)
{
    int r;
    sp_mutex_lock(&c->ssl_lock);
    r = renegotiating(c);
    sp_mutex_unlock(&c->ssl_lock);
    return r;
}

/* Received bytes that a reader's recv() left for OpenSSL (ssl_lock taken here). */
static int has_early(sp_conn *c)
{
    int r;
    sp_mutex_lock(&c->ssl_lock);
    r = c->early_len > c->early_off;
    sp_mutex_unlock(&c->ssl_lock);
    return r;
}

static int guarded_read(sp_conn *c, void *buf, size_t len, size_t *n);

/* One SSL_read_ex for a writer that drives a renegotiation (writer_reads): application data
 * goes to the stash. SP_OK (progress: call again), SP_WANT_READ, SP_STASH_FULL (the reader
 * must take some first) or SP_ERROR (ssl_lock held). */
static int stash_read(sp_conn *c, sp_err *err)
{
    size_t n = 0;
    int e;
    if (c->stash_off > 0) {
        memmove(c->stash, c->stash + c->stash_off, c->stash_len - c->stash_off);
        c->stash_len -= c->stash_off;
        c->stash_off = 0;
    }
    if (c->socket_mode && c->stash_len >= SP_STASH_MAX)
        return SP_STASH_FULL;
    if (c->stash_cap - c->stash_len < SSL3_RT_MAX_PLAIN_LENGTH) { /* room for a record */
        size_t cap = c->stash_cap ? c->stash_cap * 2 : SSL3_RT_MAX_PLAIN_LENGTH;
        unsigned char *grown = realloc(c->stash, cap);
        if (grown == NULL) {
            start_call(c, err); /* (afresh: see capture_ssl_error) */
            err->sys_errno = ENOMEM;
            mark_broken(c, err);
            return SP_ERROR;
        }
        c->stash = grown;
        c->stash_cap = cap;
    }
    before_ssl_call(c);
    c->reading = 1; /* (what it queues counts as reading's output: A PEER THAT DOES NOT READ) */
    if (guarded_read(c, c->stash + c->stash_len, c->stash_cap - c->stash_len, &n)) {
        c->reading = 0;
        c->stash_len += n;
        return SP_OK;
    }
    c->reading = 0;
    if (c->stash_len == 0)
        drop_stash(c);
    e = SSL_get_error(c->ssl, 0);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return SP_WANT_READ;
    if (classify_failure(c, e, err) != SP_ERROR) {
        /* The peer ended the connection in the middle of the renegotiation: the reader gets
         * the EOF after the stash, and nothing more can be written. */
        start_call(c, err);
        err->sys_errno = EPIPE;
    }
    return SP_ERROR;
}

/* ---- operations --------------------------------------------------------------------- */

/* SSL_read_ex / SSL_write_ex, as a handshake step (sp_ctx.c) while one may run in them: the
 * first handshake driven by a write, a TLS 1.2 renegotiation (ssl_lock held). */
static int guarded_read(sp_conn *c, void *buf, size_t len, size_t *n)
{
    sp_step step;
    int ok;
    if (!sp_ctx_step_needed(c->ssl))
        return SSL_read_ex(c->ssl, buf, len, n);
    sp_ctx_step_begin(c->ssl, &step);
    ok = SSL_read_ex(c->ssl, buf, len, n);
    sp_ctx_step_end(&step);
    return ok;
}

static int guarded_write(sp_conn *c, const void *buf, size_t len, size_t *n)
{
    sp_step step;
    int ok;
    sp_conn_note_write(c); /* (sp_conn_forked) */
    if (!sp_ctx_step_needed(c->ssl)) {
        ok = SSL_write_ex(c->ssl, buf, len, n);
    } else {
        sp_ctx_step_begin(c->ssl, &step);
        ok = SSL_write_ex(c->ssl, buf, len, n);
        sp_ctx_step_end(&step);
    }
    sp_conn_note_write(c); /* (again: a fork in another thread during the write) */
    return ok;
}

int sp_handshake(sp_conn *c, int wait_ms, sp_err *err)
{
    unsigned char early_buf[SP_EARLY_MAX]; /* waits for the peer's flight in recv() (WAITING) */
    int waited = 0;
    wait_budget budget = budget_of(wait_ms);
    if (start_pump_call(c, err))
        return SP_ERROR;
    if (c->socket_mode && c->handshake_waits && wait_ms > 0 && !has_input(c)) {
        /* What comes next is the peer's: wait first, and skip the SSL_do_handshake whose
         * recv() would only meet EAGAIN (as sp_read does after a read that waited). */
        int status = wait_readable(c, &budget, err, early_buf);
        if (status != SP_OK)
            return status;
        waited = 1;
    }
    for (;;) {
        int r, e = SSL_ERROR_NONE, status;
        sp_step step;
        sp_mutex_lock(&c->ssl_lock);
        status = sticky_status(c, err);
        if (status != SP_OK) {
            if (!keep_early(c, early_buf))
                status = out_of_memory(c, err);
            sp_mutex_unlock(&c->ssl_lock);
            return status == SP_ERROR ? SP_ERROR : SP_RAGGED_EOF;
        }
        before_ssl_call(c);
        sp_ctx_step_begin(c->ssl, &step); /* (its context may not change meanwhile) */
        r = SSL_do_handshake(c->ssl);
        sp_ctx_step_end(&step);
        if (r == 1) {
            c->established = 1;
            c->handshake_waits = 0; /* (a later renegotiation starts with our own flight) */
            sessions_when_established(c);
#ifdef SSL_OP_IGNORE_UNEXPECTED_EOF
            /* From now on a transport EOF is not fatal to OpenSSL: we still write (see EOF) */
            SSL_set_options(c->ssl, SSL_OP_IGNORE_UNEXPECTED_EOF);
#endif
        }
        else {
            e = SSL_get_error(c->ssl, r);
            if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
                capture_ssl_error(c, e, err);
                mark_broken(c, err);
            }
        }
        /* What the peer sent after its flight (TLS 1.3: the client's first data) stays. */
        if (c->early != NULL && !keep_early(c, early_buf)) {
            r = 0;
            e = SSL_ERROR_SYSCALL;
            out_of_memory(c, err);
        }
        sp_mutex_unlock(&c->ssl_lock);

        if (!c->socket_mode) {
            if (r == 1)
                return SP_OK;
            return e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE ? SP_WANT_READ : SP_ERROR;
        }
        if (r != 1 && e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
            send_alert_nowait(c); /* a failed handshake still sends its alert */
            return SP_ERROR;
        }
        /* A TLS 1.3 server's handshake ends on the client's Finished: what it queued then is
         * its session tickets, which can wait for the connection's first write (or the first
         * read that has to wait, or close) and leave with it in one send. */
        if (r == 1 && SSL_is_server(c->ssl) && SSL_version(c->ssl) >= TLS1_3_VERSION)
            return SP_OK;
        /* Our flight goes out in full before we wait for the peer's. */
        status = send_queued(c, &budget, err);
        if (status != SP_OK)
            return status;
        if (r == 1)
            return SP_OK;
        /* One wait per call (as in sp_read): a peer that drips its flight a byte at a time
         * must not keep the call from returning, so that Python checks the deadline and runs
         * signal handlers at least once a slice. */
        c->handshake_waits = 1;
        if (waited)
            return SP_WANT_READ;
        waited = 1;
        status = wait_readable(c, &budget, err, early_buf); /* (nothing is queued now) */
        if (status != SP_OK)
            return status;
    }
}

int sp_read(sp_conn *c, unsigned char *buf, size_t len, size_t want, size_t *got, int wait_ms,
            sp_err *err)
{
    size_t total = 0;
    int status = SP_OK, waited = 0, queued_out = 0;
    unsigned char early_buf[SP_EARLY_MAX];
    wait_budget budget = budget_of(wait_ms);
    if (start_pump_call(c, err)) {
        *got = 0;
        return SP_ERROR;
    }
    if (want > len)
        want = len; /* want == 0: return once what arrived within one wait was processed */
    if (c->socket_mode && c->read_waited && wait_ms > 0 && len > 0 && !has_input(c)) {
        /* Request/response traffic: the last read had to wait, so this one most likely
         * will too. Wait first, and skip the SSL_read_ex that would only meet EAGAIN. So
         * does a read after one whose waits ran out in the middle of a record. */
        status = wait_readable(c, &budget, err, early_buf);
        if (status != SP_OK) {
            *got = 0;
            return status;
        }
        waited = 1;
    }
    while (total < len) {
        size_t n = 0, out_before, out_pending, wbio_before = 0;
        int ok, e = SSL_ERROR_NONE, more;
        sp_mutex_lock(&c->ssl_lock);
        if (c->stash_off < c->stash_len) { /* what a writer read for us comes first */
            n = c->stash_len - c->stash_off;
            if (n > len - total)
                n = len - total;
            memcpy(buf + total, c->stash + c->stash_off, n);
            c->stash_off += n;
            if (c->stash_off == c->stash_len)
                drop_stash(c);
            /* (the loop may end here: what a writer's OpenSSL call left of this call's early
             * bytes must not stay on this stack) */
            if (c->early != NULL && !keep_early(c, early_buf))
                status = out_of_memory(c, err);
            sp_mutex_unlock(&c->ssl_lock);
            total += n;
            if (status != SP_OK)
                break;
            continue;
        }
        out_before = c->outq_len;
        status = sticky_status(c, err);
        if (status != SP_OK) {
            if (!keep_early(c, early_buf))
                status = out_of_memory(c, err);
            sp_mutex_unlock(&c->ssl_lock);
            break;
        }
        before_ssl_call(c);
        if (c->reader_sends)
            wbio_before = BIO_ctrl_pending(SSL_get_wbio(c->ssl));
        c->reading = 1;
        ok = guarded_read(c, buf + total, len - total, &n);
        c->reading = 0;
        if (c->reader_sends && BIO_ctrl_pending(SSL_get_wbio(c->ssl)) > wbio_before)
            queued_out = 1;
        if (!ok) {
            e = SSL_get_error(c->ssl, 0);
            if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
                status = classify_failure(c, e, err);
        }
        if (c->early != NULL && !keep_early(c, early_buf))
            status = out_of_memory(c, err); /* bytes already read still reach the caller */
        /* More to read without waiting: records OpenSSL holds, or (socket mode) a socket
         * that filled the last recv() and so probably holds more: a read of what is
         * available takes all of it in one call, not one record per call. */
        more = SSL_has_pending(c->ssl)
            || (c->socket_mode ? c->recv_full : BIO_ctrl_pending(SSL_get_rbio(c->ssl)) > 0);
        out_pending = c->socket_mode && c->outq_len > out_before ? c->outq_len : 0;
        sp_mutex_unlock(&c->ssl_lock);
        /* Reading may have queued output (a KeyUpdate reply, a renegotiation flight, the
         * alert of a failure): it goes out now, without waiting. What was queued before
         * (a server's tickets, a record an output port holds) waits for its writer, or for
         * this read's first wait (wait_readable sends everything queued first). A send that
         * fails does not end the reading once established (SEND FAILURE; before, it breaks
         * the connection), and what this call read still reaches the caller: the peer sent
         * it before the failure. */
        if (out_pending > 0 && status == SP_OK)
            status = send_for_reader(c, err) == SP_ERROR ? SP_ERROR : SP_OK;
        else if (out_pending > 0)
            send_alert_nowait(c);
        if (ok) {
            total += n;
            if (total >= want && total > 0 && !more)
                break; /* the caller has enough and nothing more is here already */
            continue;
        }
        if (status != SP_OK)
            break;
        /* WANT_READ (a memory or socket BIO never makes OpenSSL want to write). */
        if (total >= want && (total > 0 || waited))
            break;
        if (!c->socket_mode) {
            status = SP_WANT_READ;
            break;
        }
        release_idle_buffers(c);
        status = wait_readable(c, &budget, err, early_buf);
        if (status != SP_OK)
            break;
        waited = 1;
    }
    *got = total;
    c->read_waited = waited;
    if (c->socket_mode) {
        sp_mutex_lock(&c->ssl_lock);
        c->read_starved = status == SP_WANT_READ && waited ? c->ssl_calls + 1 : 0;
        sp_mutex_unlock(&c->ssl_lock);
    }
    if (c->socket_mode && status == SP_OK)
        release_idle_buffers(c);
    if (total > 0 && (status == SP_EOF || status == SP_RAGGED_EOF || status == SP_ERROR))
        status = SP_OK; /* hand over the data now; the end is sticky and reported next call */
    if (status == SP_OK && total > 0 && queued_out)
        status = SP_OK_SEND; /* (stream mode: a call without data waits, and sends then) */
    return status;
}

int sp_write(sp_conn *c, const unsigned char *buf, size_t len, size_t *done, int wait_ms,
             sp_err *err)
{
    return sp_write2(c, NULL, 0, buf, len, done, wait_ms, err);
}

/* head, then buf, as one stream of plaintext (*done counts both). With `hold`, the records
 * stay queued (sp_write_hold); else everything queued is sent before returning. */
static int write_records(sp_conn *c, const unsigned char *head, size_t head_len,
                         const unsigned char *buf, size_t len, size_t *done, int wait_ms,
                         sp_err *err, int hold)
{
    size_t total = 0, all = head_len + len;
    int status = SP_OK;
    wait_budget budget = budget_of(wait_ms);
    if (start_pump_call(c, err)) {
        *done = 0;
        return SP_ERROR;
    }
    while (total < all) {
        const unsigned char *from = total < head_len ? head + total : buf + (total - head_len);
        size_t n = 0, chunk = (total < head_len ? head_len : all) - total;
        int ok, e = SSL_ERROR_NONE;
        if (c->socket_mode && queued_out(c) >= SP_OUT_HIGH) {
            status = send_queued(c, &budget, err);
            if (status != SP_OK)
                break;
        }
        if (chunk > SP_WRITE_CHUNK)
            chunk = SP_WRITE_CHUNK;
        /* The call's last record gets an SSL_write_ex of its own: it may then leave straight
         * from OpenSSL's buffer (send_direct), behind the records queued before it. */
        if (c->socket_mode && total + chunk == all && chunk > SSL3_RT_MAX_PLAIN_LENGTH)
            chunk -= chunk % SSL3_RT_MAX_PLAIN_LENGTH ? chunk % SSL3_RT_MAX_PLAIN_LENGTH
                                                      : SSL3_RT_MAX_PLAIN_LENGTH;
        sp_mutex_lock(&c->ssl_lock);
        if (send_failed(c, err)) {
            sp_mutex_unlock(&c->ssl_lock);
            status = SP_ERROR;
            break;
        }
        if (!c->socket_mode && BIO_ctrl_pending(SSL_get_wbio(c->ssl)) >= SP_OUT_HIGH) {
            /* Stream mode: the caller takes these records (sp_take) before more are made, so
             * that a large write never holds all of its ciphertext here (see MEMORY). */
            sp_mutex_unlock(&c->ssl_lock);
            status = SP_WANT_WRITE;
            break;
        }
        if (writer_reads(c)) {
            int sr = stash_read(c, err);
            /* The read that ended the renegotiation wants more (application data): write. */
            int ended = sr == SP_WANT_READ && !writer_reads(c);
            sp_mutex_unlock(&c->ssl_lock);
            if (sr == SP_OK || ended)
                continue; /* progress: the renegotiation may be done, or more is here */
            if (sr == SP_ERROR) {
                send_alert_nowait(c);
                status = SP_ERROR;
                break;
            }
            if (!c->socket_mode) {
                status = SP_WANT_READ; /* feed the peer's flight (the stash is never full) */
                break;
            }
            status = send_queued(c, &budget, err); /* our flight goes out first */
            if (status == SP_OK && sr == SP_STASH_FULL) {
                /* A slice's pause for the reader to take some of the stash (the socket's
                 * readiness does not tell), then back to the caller. */
                pause_within(&budget);
                status = SP_WANT_READ;
            } else if (status == SP_OK && !has_early(c) && wait_fd_within(c, POLLIN, &budget) <= 0)
                status = SP_WANT_READ; /* (a reader's recv() may have the flight: has_early) */
            if (status != SP_OK)
                break;
            continue;
        }
        before_ssl_call(c);
        if (!c->socket_mode || hold)
            c->direct_send = 0;
        else if (total + chunk == all && chunk <= SSL3_RT_MAX_PLAIN_LENGTH)
            c->direct_send = SP_DIRECT_LAST;
        else
            c->direct_send = SP_DIRECT_PAIRS;
        ok = guarded_write(c, from, chunk, &n);
        c->direct_send = 0;
        if (ok) {
            c->written += n;
        } else {
            e = SSL_get_error(c->ssl, 0);
            if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
                capture_ssl_error(c, e, err);
                mark_broken(c, err);
            }
        }
        sp_mutex_unlock(&c->ssl_lock);
        if (ok) {
            total += n;
            continue;
        }
        if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
            send_alert_nowait(c);
            status = SP_ERROR;
            break;
        }
        /* A handshake (renegotiation) is in progress and needs the peer's flight. */
        if (!c->socket_mode) {
            status = SP_WANT_READ;
            break;
        }
        status = send_queued(c, &budget, err);
        if (status == SP_OK && wait_fd_within(c, POLLIN, &budget) <= 0)
            status = SP_WANT_READ;
        if (status != SP_OK)
            break;
    }
    *done = total;
    if (status == SP_OK && c->socket_mode && !hold)
        status = send_queued(c, &budget, err);
    if (c->socket_mode && (hold || status == SP_WANT_READ || status == SP_WANT_WRITE))
        note_writer_queued(c);
    return status;
}

/* An output port's pending bytes and the write that overflows them leave in one send(), with
 * no copy of the write. */
int sp_write2(sp_conn *c, const unsigned char *head, size_t head_len, const unsigned char *buf,
              size_t len, size_t *done, int wait_ms, sp_err *err)
{
    return write_records(c, head, head_len, buf, len, done, wait_ms, err, 0);
}

/* An output port's write of one full record with nothing pending: encrypted at once and kept
 * queued, unsent, as the port's held record (the next write sends it together with its own
 * records, in one sendmsg(); sp_flush sends it alone). Holding the ciphertext instead of the
 * plaintext saves copying the record into the port first (a read on the connection that has
 * to wait sends it earlier: waits send what is queued). When ciphertext is already queued, or
 * buf is longer than a record, this is sp_write: everything goes out now. */
int sp_write_hold(sp_conn *c, const unsigned char *buf, size_t len, size_t *done, int wait_ms,
                  sp_err *err)
{
    int hold = c->socket_mode && len <= SSL3_RT_MAX_PLAIN_LENGTH && !in_own_callback(c)
               && queued_out(c) == 0; /* (write_records refuses a callback's write) */
    return write_records(c, NULL, 0, buf, len, done, wait_ms, err, hold);
}

int sp_flush(sp_conn *c, int wait_ms, sp_err *err)
{
    wait_budget budget = budget_of(wait_ms);
    if (start_pump_call(c, err))
        return SP_ERROR;
    if (!c->socket_mode)
        return SP_OK;
    return send_queued(c, &budget, err);
}

int sp_shutdown(sp_conn *c, sp_err *err)
{
    int status = SP_ERROR; /* (a shutdown that cannot be sent is not an error at close time) */
    if (start_pump_call(c, err))
        return SP_ERROR;
    sp_mutex_lock(&c->ssl_lock);
    ERR_clear_error();
    if (c->established && c->broken == NULL && c->send_broken == NULL) {
        /* SSL_shutdown sends nothing inside a handshake: a renegotiation under way is driven
         * on first, as a writer drives it (application data goes to the stash), and the
         * caller brings the peer's flight and calls again. */
        int sr = SP_OK;
        while (sr == SP_OK && shutdown_waits(c))
            sr = stash_read(c, err);
        if (!shutdown_waits(c))
            status = SSL_shutdown(c->ssl) >= 0 ? SP_OK : SP_ERROR;
        else if (sr != SP_ERROR)
            status = SP_WANT_READ;
    }
    ERR_clear_error();
    sp_mutex_unlock(&c->ssl_lock);
    return status;
}

/* ---- stream mode -------------------------------------------------------------------- */

int sp_feed(sp_conn *c, const unsigned char *data, size_t len)
{
    int ok = 1;
    lock_ssl(c);
    while (ok && len > 0) {
        int part = len > (size_t)0x40000000 ? 0x40000000 : (int)len;
        int n = BIO_write(SSL_get_rbio(c->ssl), data, part);
        ok = n == part;
        data += part;
        len -= (size_t)part;
    }
    if (!ok) {
        /* (out of memory) The caller has taken these bytes from its stream: without them the
         * peer's records can never be read, and a read would wait for the rest forever. */
        sp_err err;
        sp_err_reset(&err);
        err.sys_errno = ENOMEM;
        ERR_clear_error();
        mark_broken(c, &err);
    }
    unlock_ssl(c);
    return ok;
}

void sp_feed_eof(sp_conn *c)
{
    lock_ssl(c);
    BIO_set_mem_eof_return(SSL_get_rbio(c->ssl), 0);
    unlock_ssl(c);
}

size_t sp_pending_out(sp_conn *c)
{
    size_t n;
    lock_ssl(c);
    n = BIO_ctrl_pending(SSL_get_wbio(c->ssl));
    unlock_ssl(c);
    return n;
}

int sp_stash_full(sp_conn *c)
{
    int full;
    lock_ssl(c);
    full = c->stash_len - c->stash_off >= SP_STASH_MAX;
    unlock_ssl(c);
    return full;
}

size_t sp_take(sp_conn *c, unsigned char *out, size_t cap)
{
    int n;
    if (cap > 0x40000000)
        cap = 0x40000000;
    lock_ssl(c);
    n = BIO_read(SSL_get_wbio(c->ssl), out, (int)cap);
    unlock_ssl(c);
    return n > 0 ? (size_t)n : 0;
}

/* ---- client sessions ------------------------------------------------------------------ */

/* A ticket may take up to 2^16 - 1 bytes (RFC 8446), which a ClientHello, whose extensions
 * take at most as much in all, cannot carry beside the rest of them: OpenSSL then fails the
 * next connect ("internal error"), which drops the session, and the one after makes a full
 * handshake and gets another such ticket; every second connect would fail. Such a session is
 * not cached (SP_TICKET_ROOM leaves room for the ClientHello's other extensions; real tickets
 * take a few hundred bytes). */
static int fits_a_client_hello(const SSL_SESSION *session)
{
    const unsigned char *ticket = NULL;
    size_t len = 0;
    SSL_SESSION_get0_ticket(session, &ticket, &len);
    return len <= 0xFF00 - SP_TICKET_ROOM;
}

/* Is a session of this connection safe to resume? TLS 1.2 without the extended master secret
 * is not: a man in the middle can give two sessions (ours with it, its own with the server)
 * one master secret, and resuming both makes them alike down to their Finished messages
 * (RFC 7627's triple handshake: client authentication and tls-unique then carry over). We do
 * not offer such sessions again (RFC 7627 5.3 discourages it). */
static int safe_to_resume(SSL *ssl)
{
    return SSL_version(ssl) >= TLS1_3_VERSION || SSL_get_extms_support(ssl) == 1;
}

/* File the connection's newest session in its context's cache (ssl_lock held). */
static void file_session(sp_conn *c)
{
    if (c->cache_key != NULL && c->session != NULL && fits_a_client_hello(c->session)
        && safe_to_resume(c->ssl))
        sp_session_store(SSL_get_SSL_CTX(c->ssl), c->cache_key, c->cache_epoch, c->session);
}

/* OpenSSL hands every new session (TLS 1.3: each ticket, after the handshake) to this
 * callback, inside SSL_read/SSL_do_handshake, so ssl_lock is held. Keep the newest, and file
 * it in the context's cache for the next connection to this peer (sp_session.c). */
static int keep_new_session(SSL *ssl, SSL_SESSION *session)
{
    sp_conn *c = sp_conn_from_ssl(ssl);
    SSL_SESSION *copy;
    if (c == NULL || !SSL_SESSION_is_resumable(session))
        return 0;
    /* A private copy: OpenSSL marks its own session object unresumable whenever it sends a
     * fatal alert, and OpenSSL 3 sends one for a transport EOF without close_notify, which
     * TLS 1.1+ lets a session survive (RFC 5246 7.2.1). Real failures invalidate the copy
     * in mark_broken(). */
    copy = SSL_SESSION_dup(session);
    if (copy == NULL) {
        ERR_clear_error();
        return 0;
    }
    SSL_SESSION_free(c->session);
    c->session = copy;
    if (SSL_version(ssl) >= TLS1_3_VERSION)
        file_session(c);
    else
        /* (whether it used the EMS is known only once SSL_do_handshake returned; a TLS 1.2
         * renegotiation's session, made inside SSL_read, is not filed: the one the
         * connection started with stays) */
        c->file_when_established = !c->established;
    return 0; /* OpenSSL keeps its reference; we keep the copy */
}

static void sessions_when_established(sp_conn *c)
{
    if (c->offered && !SSL_session_reused(c->ssl) && c->cache_key != NULL)
        sp_session_forget(SSL_get_SSL_CTX(c->ssl), c->cache_key, c->cache_epoch);
    c->offered = 0;
    if (c->file_when_established) {
        c->file_when_established = 0;
        file_session(c);
    }
}

int sp_ctx_track_sessions(SSL_CTX *ctx)
{
    if (!sp_session_cache_attach(ctx))
        return 0;
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, keep_new_session);
    return 1;
}

int sp_conn_use_session_cache(sp_conn *c, const char *host, int port, unsigned long long epoch)
{
    SSL_SESSION *cached;
    c->cache_key = sp_session_key(host, port);
    if (c->cache_key == NULL)
        return 0;
    c->cache_epoch = epoch;
    cached = sp_session_lookup(SSL_get_SSL_CTX(c->ssl), c->cache_key, epoch);
    if (cached != NULL) {
        /* (one that cannot be used: a full handshake) */
        c->offered = sp_conn_set_session(c, cached);
        SSL_SESSION_free(cached);
    }
    return 1;
}

/* Before the socket closes: let OpenSSL process what the server already sent (TLS 1.3 tickets
 * arrive after the handshake), without waiting, so that their sessions reach the cache. The
 * SSL_read takes application data too: callers hold the read lock (ports.py
 * last_port_closed), as a read of another thread would lose those bytes from its stream. */
void sp_conn_drain_tickets(sp_conn *c)
{
    if (in_own_callback(c))
        return; /* (an SSL_read from its own callback: the tickets go uncached) */
    sp_mutex_lock(&c->ssl_lock);
    if (c->cache_key != NULL && c->socket_mode && c->established && c->broken == NULL
        && c->eof_status == 0) {
        unsigned char scratch[4096];
        size_t n = 0;
        int e = SSL_ERROR_NONE;
        c->draining = 1;
        c->recv_in_call = 0; /* (a peer that never stops sending cannot hold the close) */
        ERR_clear_error();
        if (!guarded_read(c, scratch, sizeof scratch, &n))
            e = SSL_get_error(c->ssl, 0);
        ERR_clear_error();
        c->draining = 0;
        if (e != SSL_ERROR_NONE && e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE
            && e != SSL_ERROR_ZERO_RETURN)
            invalidate_session(c, e); /* a real failure */
    }
    sp_mutex_unlock(&c->ssl_lock);
}

int sp_conn_set_session(sp_conn *c, SSL_SESSION *session)
{
    int ok;
    /* OpenSSL gets a copy: a resumed connection uses the session it was given as its own,
     * and would mark the cached one unresumable at a close without close_notify (see
     * keep_new_session). We hold the cached one, so that a real failure invalidates it. */
    SSL_SESSION *copy = SSL_SESSION_dup(session);
    sp_mutex_lock(&c->ssl_lock);
    ok = copy != NULL && SSL_set_session(c->ssl, copy);
    if (ok && SSL_SESSION_up_ref(session)) {
        SSL_SESSION_free(c->session);
        c->session = session;
    }
    ERR_clear_error();
    sp_mutex_unlock(&c->ssl_lock);
    SSL_SESSION_free(copy); /* SSL_set_session took its own reference */
    return ok;
}

/* ---- re-verifying an established peer ------------------------------------------------- */

/* Re-verification ends with the client's Finished (TLS 1.3 post-handshake authentication and
 * a TLS 1.2 renegotiation alike), or with an alert from the client (e.g. no_renegotiation). */
static void watch_reauth(int write_p, int version, int content_type, const void *buf,
                         size_t len, SSL *ssl, void *arg)
{
    sp_conn *c = arg;
    (void)version, (void)ssl;
    if (write_p || len == 0)
        return;
    if ((content_type == SSL3_RT_HANDSHAKE && ((const unsigned char *)buf)[0] == SSL3_MT_FINISHED)
        || content_type == SSL3_RT_ALERT)
        c->reauth_pending = 0;
}

/* A TLS 1.3 server with a post-handshake message from the client half received (ssl_lock
 * held): SSL_verify_client_post_handshake would refuse, "still in init"; see sp_verify.h. */
static int mid_client_message(sp_conn *c)
{
    return SSL_is_server(c->ssl) && SSL_version(c->ssl) >= TLS1_3_VERSION && c->established
           && !SSL_is_init_finished(c->ssl);
}

int sp_reauth_blocked(sp_conn *c)
{
    int blocked;
    lock_ssl(c);
    blocked = mid_client_message(c);
    unlock_ssl(c);
    return blocked;
}

int sp_request_reauth(sp_conn *c, int flags, sp_err *err)
{
    int ok = 1;
    if (start_pump_call(c, err))
        return 0;
    sp_mutex_lock(&c->ssl_lock);
    ERR_clear_error();
    if (mid_client_message(c)) {
        sp_mutex_unlock(&c->ssl_lock);
        return SP_REAUTH_LATER;
    }
    if (SSL_is_server(c->ssl) && c->reauth_pending) {
        /* Another call's request is still unanswered (another thread's, which asked between
         * this call's look at sp_reauth_pending and now): this one waits for the same answer,
         * under its own policy. A second request would be refused (TLS 1.3: "request sent"),
         * and its failure would end the first call's wait before the answer came. */
        c->verify_flags = flags;
        sp_conn_apply_verify_locked(c);
        sp_mutex_unlock(&c->ssl_lock);
        return 1;
    }
    before_ssl_call(c); /* (SSL_do_handshake below may read) */
    c->verify_flags = flags;
    sp_conn_apply_verify_locked(c);
    if (SSL_is_server(c->ssl)) {
        SSL_set_msg_callback(c->ssl, watch_reauth);
        SSL_set_msg_callback_arg(c->ssl, c);
        c->reauth_pending = 1;
        if (SSL_version(c->ssl) >= TLS1_3_VERSION) {
            ok = SSL_verify_client_post_handshake(c->ssl);
            if (ok)
                ok = SSL_do_handshake(c->ssl) == 1; /* queues the CertificateRequest */
        } else {
            /* A resumed renegotiation would not ask for a certificate. */
            SSL_set_options(c->ssl, SSL_OP_NO_SESSION_RESUMPTION_ON_RENEGOTIATION);
            ok = SSL_renegotiate(c->ssl);
            if (ok) {
                int r = SSL_do_handshake(c->ssl); /* queues the HelloRequest */
                ok = r == 1 || SSL_get_error(c->ssl, r) == SSL_ERROR_WANT_READ;
            }
        }
        if (!ok) {
            c->reauth_pending = 0;
            capture_ssl_error(c, SSL_ERROR_SSL, err);
        }
    }
    sp_mutex_unlock(&c->ssl_lock);
    return ok;
}

int sp_reauth_pending(sp_conn *c)
{
    int pending;
    lock_ssl(c);
    pending = c->reauth_pending;
    if (!pending)
        SSL_set_msg_callback(c->ssl, NULL);
    unlock_ssl(c);
    return pending;
}
