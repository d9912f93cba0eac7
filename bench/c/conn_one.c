/* conn_one.c - one connection of the handshake benchmark, client or server, in C, callable from
 * Python (bench/conn_costs.py loads it with ctypes, so that C and Python connections alternate in
 * one process and are measured side by side).
 *
 * What one call does is what bench/c/sp_ref does per connection in mode hs. Client
 * (conn_one): connect to 127.0.0.1:port, TCP_NODELAY, TLS handshake verifying the chain and the
 * IP 127.0.0.1 (resuming the previous connection's session when asked), write the 32-byte
 * header, read the one-byte answer, close without close_notify (marked shut down, so the
 * session stays resumable). Server (conn_one_accept): accept on a listening socket,
 * TCP_NODELAY, TLS handshake, read the header, answer one byte, close the same way. The
 * server's SSL gets the library's session id context (through the library's own function,
 * which the caller passes) so that tickets issued by any variant resume on every other.
 *
 *   cc -O2 -Wall -Wextra -shared -fPIC -o libconn_one.so conn_one.c -lssl -lcrypto
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static SSL_CTX *ctx;
static SSL_SESSION *last;

/* The client context: TLS_AES_128_GCM_SHA256, roots from `ca`. 1 or 0. */
int conn_one_init(const char *ca)
{
    ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL)
        return 0;
    if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1
        || SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256") != 1) {
        SSL_CTX_free(ctx);
        ctx = NULL;
        return 0;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    return 1;
}

/* One connection; 0 failed, 1 done, 2 done and resumed. */
int conn_one(int port, int resume, const unsigned char *header)
{
    struct sockaddr_in a;
    unsigned char answer;
    int fd, one = 1, result = 0;
    SSL *ssl;
    if (ctx == NULL || (fd = socket(AF_INET, SOCK_STREAM, 0)) < 0)
        return 0;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)port);
    if (inet_pton(AF_INET, "127.0.0.1", &a.sin_addr) != 1
        || connect(fd, (struct sockaddr *)&a, sizeof a) != 0
        || setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0
        || (ssl = SSL_new(ctx)) == NULL) {
        close(fd);
        return 0;
    }
    if (SSL_set_fd(ssl, fd) == 1
        && X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), "127.0.0.1") == 1
        && (!resume || last == NULL || SSL_set_session(ssl, last) == 1)
        && SSL_connect(ssl) == 1 && SSL_write(ssl, header, 32) == 32
        && SSL_read(ssl, &answer, 1) == 1) {
        result = 1 + SSL_session_reused(ssl);
        if (resume) {
            SSL_SESSION_free(last);
            last = SSL_get1_session(ssl);
        }
    }
    SSL_set_shutdown(ssl, SSL_get_shutdown(ssl) | SSL_SENT_SHUTDOWN);
    SSL_free(ssl);
    close(fd);
    ERR_clear_error(); /* nothing left for the next connection, of any variant, to find */
    return result;
}

typedef int (*set_sid_fn)(SSL *ssl, int verify_flags, const unsigned char *host_tag);

/* Accept and serve one connection on `listen_fd` with the server context `server_ctx` (the
 * library's own) and the session id context that `set_sid(ssl, verify_flags, NULL)` gives
 * (sp_ssl_set_session_id_context: what the library's server connections use, so that the
 * tickets all variants issue resume on all of them); 0 failed, 1 done, 2 done and resumed. */
int conn_one_accept(int listen_fd, SSL_CTX *server_ctx, set_sid_fn set_sid, int verify_flags)
{
    unsigned char header[32], answer = 'K';
    int fd, one = 1, result = 0;
    SSL *ssl;
    if (server_ctx == NULL || (fd = accept(listen_fd, NULL, NULL)) < 0)
        return 0;
    if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0
        || (ssl = SSL_new(server_ctx)) == NULL) {
        close(fd);
        return 0;
    }
    if (SSL_set_fd(ssl, fd) == 1 && set_sid(ssl, verify_flags, NULL) == 1 && SSL_accept(ssl) == 1
        && SSL_read(ssl, header, sizeof header) == (int)sizeof header
        && SSL_write(ssl, &answer, 1) == 1)
        result = 1 + SSL_session_reused(ssl);
    SSL_set_shutdown(ssl, SSL_get_shutdown(ssl) | SSL_SENT_SHUTDOWN);
    SSL_free(ssl);
    close(fd);
    ERR_clear_error(); /* nothing left for the next connection, of any variant, to find */
    return result;
}
