/* failmalloc.c - an LD_PRELOAD shim that makes malloc / calloc / realloc fail on request (built
 * with cc by tests/test_alloc_failures.py; never part of the package).
 *
 * Only these allocations are candidates, and only while the thread that armed the shim makes
 * them: those made directly from sslports' native module (_native*.so), and, unless FM_OURS is
 * given, those made from libssl / libcrypto (OpenSSL allocates in CRYPTO_malloc, inside
 * libcrypto). CPython's and cffi's allocations never fail, so a test exercises the failure
 * paths of our C and of OpenSSL as called from it, not the interpreter's.
 *
 *   fm_arm(nth, flags): the nth candidate from now on fails (1: the first); flags:
 *       FM_STICKY (1)  every candidate after it fails too (memory stays exhausted);
 *       FM_OURS (2)    only allocations our module makes itself are candidates.
 *   fm_arm_in(nth, flags, name): the same, counting only allocations made inside the exported
 *                      function `name` (of OpenSSL: CRYPTO_get_ex_new_index, BIO_meth_new),
 *                      a few frames down at most.
 *   fm_disarm():       no more failures; returns how many candidates were seen.
 *   fm_failed():       how many allocations failed since fm_arm.
 *
 * With FM_TRACE set in the environment, each failure prints its stack to stderr.
 */
#define _GNU_SOURCE 1
#include <dlfcn.h>
#include <execinfo.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FM_STICKY 1
#define FM_OURS 2

static void *(*real_malloc)(size_t);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static void (*real_free)(void *);
static int resolving, trace;

static __thread int armed, flags, busy;
static __thread long target, seen, failed;
static __thread char inside[64]; /* fm_arm_in's function, or "" */

/* dlsym may calloc while the real functions are looked up: served from here, never freed. */
static char boot[4096];
static size_t boot_used;

static void resolve(void)
{
    if (real_free == NULL && !resolving) {
        resolving = 1;
        real_malloc = (void *(*)(size_t))dlsym(RTLD_NEXT, "malloc");
        real_calloc = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "calloc");
        real_realloc = (void *(*)(void *, size_t))dlsym(RTLD_NEXT, "realloc");
        real_free = (void (*)(void *))dlsym(RTLD_NEXT, "free");
        resolving = 0;
    }
}

/* Is the allocation being made inside the function `inside` (within a few frames: enough
 * for CRYPTO_get_ex_new_index's and BIO_meth_new's, and cheap)? */
static int called_inside(void)
{
    void *frames[10];
    int n, i, yes = 0;
    busy = 1;
    n = backtrace(frames, 10);
    for (i = 0; i < n && !yes; i++) {
        Dl_info info;
        yes = dladdr(frames[i], &info) != 0 && info.dli_sname != NULL
              && strcmp(info.dli_sname, inside) == 0;
    }
    busy = 0;
    return yes;
}

/* Is an allocation made from `caller` a candidate (see above)? */
static int candidate(const void *caller)
{
    Dl_info info;
    const char *name;
    int found;
    if (!armed || busy)
        return 0;
    busy = 1; /* (dladdr may allocate) */
    found = dladdr(caller, &info) != 0 && info.dli_fname != NULL;
    busy = 0;
    if (!found)
        return 0;
    name = strrchr(info.dli_fname, '/');
    name = name != NULL ? name + 1 : info.dli_fname;
    if (strncmp(name, "_native", 7) != 0
        && ((flags & FM_OURS)
            || (strncmp(name, "libssl", 6) != 0 && strncmp(name, "libcrypto", 9) != 0)))
        return 0;
    return inside[0] == '\0' || called_inside();
}

static int should_fail(const void *caller)
{
    if (!candidate(caller))
        return 0;
    seen++;
    if (seen != target && !((flags & FM_STICKY) && seen > target))
        return 0;
    failed++;
    if (trace) {
        void *frames[32];
        int n;
        busy = 1;
        n = backtrace(frames, 32);
        (void)!write(2, "FM-FAIL\n", 8);
        backtrace_symbols_fd(frames, n, 2);
        busy = 0;
    }
    return 1;
}

void *malloc(size_t n)
{
    resolve();
    if (should_fail(__builtin_return_address(0)))
        return NULL;
    return real_malloc(n);
}

void *calloc(size_t k, size_t n)
{
    if (real_calloc == NULL && resolving) {
        size_t size = (k * n + 15) & ~(size_t)15;
        void *p;
        if (boot_used + size > sizeof boot)
            return NULL;
        p = boot + boot_used;
        boot_used += size;
        return p; /* (static storage: zeroed) */
    }
    resolve();
    if (should_fail(__builtin_return_address(0)))
        return NULL;
    return real_calloc(k, n);
}

void *realloc(void *p, size_t n)
{
    resolve();
    if (n > 0 && should_fail(__builtin_return_address(0)))
        return NULL;
    return real_realloc(p, n);
}

void free(void *p)
{
    if (p >= (void *)boot && p < (void *)(boot + sizeof boot))
        return;
    resolve();
    real_free(p);
}

void fm_arm(long nth, int how)
{
    void *frame[1];
    trace = getenv("FM_TRACE") != NULL;
    (void)backtrace(frame, 1); /* (its first call loads libgcc: not while armed) */
    seen = failed = 0;
    target = nth;
    flags = how;
    inside[0] = '\0';
    armed = 1;
}

void fm_arm_in(long nth, int how, const char *name)
{
    fm_arm(nth, how);
    strncpy(inside, name, sizeof inside - 1);
    inside[sizeof inside - 1] = '\0';
}

long fm_disarm(void)
{
    armed = 0;
    return seen;
}

long fm_failed(void)
{
    return failed;
}
