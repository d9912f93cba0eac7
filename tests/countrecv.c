/* countrecv.c - preloaded into a child Python by test_record_shapes.py: counts the process's
 * recv() calls and those that met EAGAIN / EWOULDBLOCK (countrecv_get), from countrecv_reset()
 * on. The pump's recv() calls go through libc's recv, which this one wraps. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>

static unsigned long calls, eagain;

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

void countrecv_reset(void)
{
    __atomic_store_n(&calls, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&eagain, 0, __ATOMIC_RELAXED);
}

void countrecv_get(unsigned long *n_calls, unsigned long *n_eagain)
{
    *n_calls = __atomic_load_n(&calls, __ATOMIC_RELAXED);
    *n_eagain = __atomic_load_n(&eagain, __ATOMIC_RELAXED);
}
