/* compat.h - every platform and OpenSSL-version difference of the shim lives here.
 *
 * OpenSSL: we build against 1.1.1 and 3.x. Features that are not in every build are
 * announced by SP_HAS_* flags, which Python reads (sp_has_feature) to raise
 * SSLUnsupportedError cleanly instead of failing at a call.
 *
 * Platforms: POSIX (pthread mutexes, poll) and Windows (SRW locks, WSAPoll).
 */
#ifndef SP_COMPAT_H
#define SP_COMPAT_H

#include <openssl/opensslv.h>

#if OPENSSL_VERSION_NUMBER < 0x10101000L
#error "sslports needs OpenSSL 1.1.1 or newer"
#endif

#if OPENSSL_VERSION_NUMBER >= 0x30000000L
#define SP_OPENSSL3 1
#else
#define SP_OPENSSL3 0
#endif

/* SSL_R_UNEXPECTED_EOF_WHILE_READING only exists since 3.0; 1.1.1 reports a ragged EOF
 * as SSL_ERROR_SYSCALL with errno 0. */
#ifdef SSL_R_UNEXPECTED_EOF_WHILE_READING
#define SP_HAS_UNEXPECTED_EOF_REASON 1
#else
#define SP_HAS_UNEXPECTED_EOF_REASON 0
#endif

#ifdef _WIN32
/* Lean: no wincrypt.h, whose X509_NAME (and other OpenSSL type names) are macros; OpenSSL's
 * headers #undef them only when included after it, and sp.h includes them before this file. */
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <winsock2.h>
#include <ws2tcpip.h>
#include <windows.h>
/* wingdi.h's printer-spooler SP_ERROR (-1) would turn the pump's status of that name
 * (sp_conn.h) into a syntax error. */
#undef SP_ERROR
typedef SRWLOCK sp_mutex;
#define sp_mutex_init(m) InitializeSRWLock(m)
#define sp_mutex_destroy(m) ((void)(m))
#define sp_mutex_lock(m) AcquireSRWLockExclusive(m)
#define sp_mutex_unlock(m) ReleaseSRWLockExclusive(m)
#define sp_mutex_trylock(m) (TryAcquireSRWLockExclusive(m) != 0) /* 1 when taken */
#define SP_MUTEX_INITIALIZER SRWLOCK_INIT
typedef SOCKET sp_socket;
#define sp_poll WSAPoll
#define sp_sleep_ms(ms) Sleep((DWORD)(ms))
#define SP_SOCK_ERRNO() WSAGetLastError()
#define SP_EWOULDBLOCK(e) ((e) == WSAEWOULDBLOCK)
#define SP_EINTR(e) ((e) == WSAEINTR)
#define SP_SEND_FLAGS 0
#define SP_RECV_FLAGS 0
#define SP_RECV_WAITS 0 /* the socket stays non-blocking; waits are WSAPoll's */
typedef int sp_iolen;
#else
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>
typedef pthread_mutex_t sp_mutex;
#define sp_mutex_init(m) pthread_mutex_init((m), NULL)
#define sp_mutex_destroy(m) pthread_mutex_destroy(m)
#define sp_mutex_lock(m) pthread_mutex_lock(m)
#define sp_mutex_unlock(m) pthread_mutex_unlock(m)
#define sp_mutex_trylock(m) (pthread_mutex_trylock(m) == 0) /* 1 when taken */
#define SP_MUTEX_INITIALIZER PTHREAD_MUTEX_INITIALIZER
typedef int sp_socket;
#define sp_poll poll
#define sp_sleep_ms(ms) ((void)poll(NULL, 0, (ms))) /* (a signal ends it early, as a wait) */
#define SP_SOCK_ERRNO() errno
#define SP_EWOULDBLOCK(e) ((e) == EAGAIN || (e) == EWOULDBLOCK)
#define SP_EINTR(e) ((e) == EINTR)
#ifdef MSG_NOSIGNAL
#define SP_NOSIGNAL MSG_NOSIGNAL
#else
#define SP_NOSIGNAL 0
#endif
/* With MSG_DONTWAIT every send and recv says itself that it must not wait, so the socket can
 * stay blocking and a read that has to wait can do it inside recv() (SO_RCVTIMEO bounds it):
 * one system call instead of poll() + recv(). */
#ifdef MSG_DONTWAIT
#define SP_RECV_WAITS 1
#define SP_NOWAIT MSG_DONTWAIT
#include <fcntl.h>
#include <sys/time.h>
#else
#define SP_RECV_WAITS 0
#define SP_NOWAIT 0
#endif
#define SP_SEND_FLAGS (SP_NOSIGNAL | SP_NOWAIT)
#define SP_RECV_FLAGS SP_NOWAIT
typedef size_t sp_iolen;
#endif

/* A variable of each thread (sp_ctx.c: the handshake steps a thread is inside). */
#ifdef _MSC_VER
#define SP_THREAD_LOCAL __declspec(thread)
#else
#define SP_THREAD_LOCAL __thread
#endif

/* An int flag read without the lock that guards its writes (it only ever goes one way, or a
 * stale value is harmless where it is read). */
#if defined(__GNUC__) || defined(__clang__)
#define sp_flag_get(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define sp_flag_set(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define sp_counter_bump(p) ((void)__atomic_add_fetch((p), 1, __ATOMIC_ACQ_REL)) /* (int *) */
#define sp_counter_drop(p) ((void)__atomic_sub_fetch((p), 1, __ATOMIC_ACQ_REL))
#else
/* (MSVC: its volatile accesses are acquire / release on x86 and x64, /volatile:ms being the
 * default there, but not on ARM64, for which no wheel is built: see pyproject.toml) */
#define sp_flag_get(p) (*(volatile int *)(p))
#define sp_flag_set(p, v) ((void)(*(volatile int *)(p) = (v)))
#define sp_counter_bump(p) ((void)InterlockedIncrement((volatile LONG *)(p))) /* (int: 32 bits) */
#define sp_counter_drop(p) ((void)InterlockedDecrement((volatile LONG *)(p)))
#endif

#endif /* SP_COMPAT_H */
