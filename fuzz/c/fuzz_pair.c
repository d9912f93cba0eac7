/* fuzz_pair.c - a differential pump harness: a real client and a real server (two stream-mode
 * pumps of ours, the fixed contexts of fz_common.c) talk, and the input says what happens to
 * each TLS record on its way, and what either end does meanwhile.
 *
 * Input: [0] FZ_* flags of both ends (fz_common.h; FZ_LAZYTAKE: both ends in socket mode, with
 * a socketpair each), then one byte per record delivered, in
 * the order they come (client to server first, then server to client, round after round; a
 * record once the input is used up passes unchanged):
 *   bits 0-2  0-3: pass; 4: drop; 5: flip one bit (the next input byte says which);
 *             6: split in two feeds (where: the next byte); 7: deliver twice
 *   bits 3-5  after it: 0-1 nothing; 2: the client writes; 3: the server writes;
 *             4: the server asks for the client's certificate again (sp_request_reauth);
 *             5: the client sends a KeyUpdate; 6: the server sends close_notify; 7: the
 *             receiver is fed EOF
 * Besides fz_common's checks of each end: what either end reads is exactly what the other
 * wrote, in order (a prefix of it); and when no record was touched and no end closed, all of
 * it arrives. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct queue {
    unsigned char *p;
    size_t len, cap;
} queue;

static void append(void *arg, const uint8_t *data, size_t len)
{
    queue *q = arg;
    if (q->len + len > q->cap) {
        size_t cap = q->cap ? q->cap : 16384;
        unsigned char *grown;
        while (cap < q->len + len)
            cap *= 2;
        grown = realloc(q->p, cap);
        FZ_CHECK(grown != NULL);
        q->p = grown;
        q->cap = cap;
    }
    memcpy(q->p + q->len, data, len);
    q->len += len;
}

typedef struct script {
    const uint8_t *p;
    size_t n;
} script;

static unsigned next(script *s)
{
    if (s->n == 0)
        return 0;
    s->n--;
    return *s->p++;
}

/* One record (or what there is) from q to `to`, as the script says. 1 when it was not passed
 * unchanged. */
static int deliver_one(queue *q, fz_target *to, script *s, fz_target *cl, fz_target *sv,
                       int *closed)
{
    unsigned char rec[16384 + 2048 + 5];
    size_t len = 5;
    unsigned op = next(s);
    int tampered = 0;
    if (q->len >= 5)
        len = 5 + ((size_t)q->p[3] << 8 | q->p[4]);
    if (len > q->len || len > sizeof rec)
        len = q->len < sizeof rec ? q->len : sizeof rec;
    if (fz_verbose())
        fprintf(stderr, "fuzz: pair: to the %s: record type %d, %zu bytes, op %u\n",
                to->is_server ? "server" : "client", q->p[0], len, op);
    memcpy(rec, q->p, len);
    memmove(q->p, q->p + len, q->len - len);
    q->len -= len;
    switch (op & 7) {
    case 4:
        tampered = 1;
        break;
    case 5: {
        size_t bit = next(s) | (size_t)next(s) << 8;
        rec[(bit / 8) % len] ^= (unsigned char)(1u << (bit % 8));
        tampered = 1;
        fz_target_feed(to, rec, len);
        break;
    }
    case 6: {
        size_t at = next(s) % len;
        fz_target_feed(to, rec, at);
        fz_target_feed(to, rec + at, len - at);
        break;
    }
    case 7:
        fz_target_feed(to, rec, len);
        fz_target_feed(to, rec, len);
        tampered = 1;
        break;
    default:
        fz_target_feed(to, rec, len);
        break;
    }
    switch ((op >> 3) & 7) {
    case 2:
        if (cl->established && cl->end == 0)
            fz_target_write(cl, 1 + next(s) * 64);
        break;
    case 3:
        if (sv->established && sv->end == 0)
            fz_target_write(sv, 1 + next(s) * 64);
        break;
    case 4:
        if (sv->established && sv->end == 0) {
            sp_err err;
            int r = sp_request_reauth(sv->c, SP_VERIFY_PEER | SP_VERIFY_REQUIRE, &err);
            FZ_CHECK(r == 0 || r == 1 || r == SP_REAUTH_LATER);
            ERR_clear_error();
            fz_target_take(sv);
        }
        break;
    case 5:
        if (cl->established && cl->end == 0) {
            sp_conn_lock(cl->c);
            if (SSL_version(sp_conn_ssl(cl->c)) >= TLS1_3_VERSION
                && SSL_is_init_finished(sp_conn_ssl(cl->c)))
                (void)SSL_key_update(sp_conn_ssl(cl->c), SSL_KEY_UPDATE_REQUESTED);
            ERR_clear_error();
            sp_conn_unlock(cl->c);
            fz_target_write(cl, 3); /* (the KeyUpdate goes out with it) */
            fz_target_take(cl);
        }
        break;
    case 6:
        if (sv->established) {
            sp_err err;
            (void)sp_shutdown(sv->c, &err);
            FZ_CHECK(ERR_peek_error() == 0);
            fz_target_take(sv);
            *closed = 1;
        }
        break;
    case 7:
        sp_feed_eof(to->c);
        fz_target_feed(to, rec, 0);
        *closed = 1;
        break;
    default:
        break;
    }
    return tampered;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_target cl, sv;
    queue c2s = {NULL, 0, 0}, s2c = {NULL, 0, 0};
    script s;
    unsigned flags;
    int rounds, tampered = 0, closed = 0, sock;
    fz_init();
    if (size < 1)
        return 0;
    /* (FZ_LAZYTAKE here: both ends in socket mode; the script asks for reauth) */
    sock = (data[0] & FZ_LAZYTAKE) != 0;
    flags = data[0] & ~(unsigned)(FZ_LAZYTAKE | FZ_REAUTH);
    s.p = data + 1;
    s.n = size - 1;
    fz_begin_input();
    fz_target_open(&sv, 1, flags, sock);
    fz_target_open(&cl, 0, flags, sock);
    sv.sink = append;
    sv.sink_arg = &s2c;
    cl.sink = append;
    cl.sink_arg = &c2s;
    sv.peer = &cl;
    cl.peer = &sv;
    fz_target_feed(&cl, (const uint8_t *)"", 0); /* the ClientHello */
    for (rounds = 0; rounds < 1000 && (c2s.len > 0 || s2c.len > 0); rounds++) {
        while (c2s.len > 0)
            tampered |= deliver_one(&c2s, &sv, &s, &cl, &sv, &closed);
        while (s2c.len > 0)
            tampered |= deliver_one(&s2c, &cl, &s, &cl, &sv, &closed);
        if (c2s.len == 0 && s2c.len == 0 && cl.end == 0 && sv.end == 0) {
            /* quiet: a stash a writer filled is read now */
            fz_target_feed(&cl, (const uint8_t *)"", 0);
            fz_target_feed(&sv, (const uint8_t *)"", 0);
        }
    }
    if (!tampered && !closed && rounds < 1000 && cl.end == 0 && sv.end == 0
        && cl.established && sv.established && !SSL_renegotiate_pending(sp_conn_ssl(cl.c))) {
        /* nothing lost: each end read all the other one wrote */
        FZ_CHECK(cl.plain_in == sv.wrote);
        FZ_CHECK(sv.plain_in == cl.wrote);
        if (fz_verbose())
            fprintf(stderr, "fuzz: pair: all arrived (%llu / %llu bytes)\n", cl.plain_in,
                    sv.plain_in);
    }
    fz_target_finish(&cl);
    fz_target_finish(&sv);
    fz_target_close(&cl);
    fz_target_close(&sv);
    free(c2s.p);
    free(s2c.p);
    return 0;
}
