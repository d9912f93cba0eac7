/* sp_libs.c - find the libssl / libcrypto files this module is linked to, from inside it.
 *
 * sslports.libcrypto and sslports.libssl hand out ctypes handles that must be the very
 * libraries the extension runs on, not whatever a name search finds first. The loader knows:
 * ask it which file holds a symbol of each library (dladdr on POSIX, the module owning an
 * address of the library's own data on Windows). Python then opens that path, which yields the
 * already loaded copy.
 */
#ifndef _WIN32
/* dladdr and Dl_info are extensions: ask glibc for them before any header is included. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include <dlfcn.h>
#endif

#include <string.h>

#include "sp.h"

/* Function to object pointer, which every loader API here is built on; copied through memory
 * because ISO C has no cast between the two. */
static const void *sp_fn_address(void (*fn)(void))
{
    const void *address = NULL;
    typedef char sp_fn_fits[sizeof fn == sizeof address ? 1 : -1];
    (void)sizeof(sp_fn_fits);
    memcpy(&address, &fn, sizeof address);
    return address;
}

#ifdef _WIN32

/* OpenSSL's headers declare its functions without __declspec(dllimport), so here the address
 * of one is that of the import thunk the linker put into this module (MSVC and mingw alike):
 * the module owning it would be this one, and its address is no function of the library. So
 * the library is found by what it hands out from inside itself, a pointer to its own static
 * data (TLS_method's SSL_METHOD, OpenSSL_version's text), and the anchor is what the loader
 * reports for the library's own export. */
static HMODULE sp_lib_module(int which)
{
    const void *inside;
    HMODULE module = NULL;

    switch (which) {
    case SP_LIB_SSL:
        inside = TLS_method();
        break;
    case SP_LIB_CRYPTO:
        inside = OpenSSL_version(OPENSSL_VERSION);
        break;
    default:
        return NULL;
    }
    if (inside == NULL
        || !GetModuleHandleExW(GET_MODULE_HANDLE_EX_FLAG_FROM_ADDRESS
                                   | GET_MODULE_HANDLE_EX_FLAG_UNCHANGED_REFCOUNT,
                               (LPCWSTR)inside, &module))
        return NULL;
    return module;
}

const void *sp_lib_anchor(int which)
{
    HMODULE module = sp_lib_module(which);
    FARPROC fn;

    if (module == NULL)
        return NULL;
    fn = GetProcAddress(module, which == SP_LIB_SSL ? "SSL_CTX_new" : "EVP_MD_CTX_new");
    return fn == NULL ? NULL : sp_fn_address((void (*)(void))fn);
}

int sp_lib_path(int which, char *out, size_t outlen)
{
    HMODULE module;
    wchar_t wide[32768];
    DWORD wlen;
    int len;

    if (out == NULL || outlen == 0 || outlen > 0x7fffffff)
        return -1;
    module = sp_lib_module(which);
    if (module == NULL)
        return -1;
    wlen = GetModuleFileNameW(module, wide, (DWORD)(sizeof wide / sizeof wide[0]));
    if (wlen == 0 || wlen >= sizeof wide / sizeof wide[0])
        return -1;
    len = WideCharToMultiByte(CP_UTF8, 0, wide, (int)wlen, out, (int)outlen - 1, NULL, NULL);
    if (len <= 0)
        return -1;
    out[len] = '\0';
    return len;
}

#else

const void *sp_lib_anchor(int which)
{
    switch (which) {
    case SP_LIB_SSL:
        return sp_fn_address((void (*)(void))SSL_CTX_new);
    case SP_LIB_CRYPTO:
        return sp_fn_address((void (*)(void))EVP_MD_CTX_new);
    default:
        return NULL;
    }
}

int sp_lib_path(int which, char *out, size_t outlen)
{
    const void *anchor = sp_lib_anchor(which);
    Dl_info info;
    size_t len;

    if (anchor == NULL || out == NULL || outlen == 0)
        return -1;
    memset(&info, 0, sizeof info);
    if (dladdr(anchor, &info) == 0 || info.dli_fname == NULL)
        return -1;
    len = strlen(info.dli_fname);
    if (len == 0 || len >= outlen || len > 0x7fffffff)
        return -1;
    memcpy(out, info.dli_fname, len + 1);
    return (int)len;
}

#endif

const char *sp_openssl_linked_version_text(void)
{
    return OPENSSL_VERSION_TEXT;
}
