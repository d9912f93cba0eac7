/* countrecv.c - preloaded into a child Python by test_record_shapes.py and
 * test_write_batches.py: counts the process's recv() calls and those that met EAGAIN /
 * EWOULDBLOCK (countrecv_get), and its sendmsg() calls that sent something with the most one
 * of them sent (countsend_get), from countrecv_reset() on. The pump's recv() and sendmsg()
 * calls go through libc's, which these wrap. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>

static unsigned long calls, eagain, send_calls, send_most;

ssize_t recv(int fd, void *buf, size_t len, int flags)
{
    static ssize_t (*real)(int, void *, size_t, int);
    ssize_t r;
    int e;
    if (real == NULL)
        real = (ssize_t(*)(int, void *, size_t, int))dlsym(RTLD_NEXT, "recv");
    if (real == NULL) {
        errno = ENOSYS;
        return -1;
    }
    r = real(fd, buf, len, flags);
    e = errno;
    __atomic_add_fetch(&calls, 1, __ATOMIC_RELAXED);
    if (r < 0 && (e == EAGAIN || e == EWOULDBLOCK))
        __atomic_add_fetch(&eagain, 1, __ATOMIC_RELAXED);
    errno = e;
    return r;
}

ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
    static ssize_t (*real)(int, const struct msghdr *, int);
    ssize_t r;
    int e;
    if (real == NULL)
        real = (ssize_t(*)(int, const struct msghdr *, int))dlsym(RTLD_NEXT, "sendmsg");
    if (real == NULL) {
        errno = ENOSYS;
        return -1;
    }
    r = real(fd, msg, flags);
    e = errno;
    if (r > 0) {
        unsigned long most = __atomic_load_n(&send_most, __ATOMIC_RELAXED);
        __atomic_add_fetch(&send_calls, 1, __ATOMIC_RELAXED);
        while ((unsigned long)r > most
               && !__atomic_compare_exchange_n(&send_most, &most, (unsigned long)r, 0,
                                               __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            ;
    }
    errno = e;
    return r;
}

void countrecv_reset(void)
{
    __atomic_store_n(&calls, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&eagain, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&send_calls, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&send_most, 0, __ATOMIC_RELAXED);
}

void countsend_get(unsigned long *n_calls, unsigned long *most)
{
    *n_calls = __atomic_load_n(&send_calls, __ATOMIC_RELAXED);
    *most = __atomic_load_n(&send_most, __ATOMIC_RELAXED);
}

void countrecv_get(unsigned long *n_calls, unsigned long *n_eagain)
{
    *n_calls = __atomic_load_n(&calls, __ATOMIC_RELAXED);
    *n_eagain = __atomic_load_n(&eagain, __ATOMIC_RELAXED);
}
