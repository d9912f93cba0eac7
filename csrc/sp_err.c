/* sp_err.c - the error record every failing shim call fills, and version facts. */
#include <string.h>

#include "sp.h"

void sp_err_reset(sp_err *err)
{
    err->ssl_error = 0;
    err->sys_errno = 0;
    err->verify_result = -1;
    err->nerrs = 0;
    err->text[0] = '\0'; /* (conn stays: a pump call sets it at its start) */
}

void sp_err_drain(sp_err *err)
{
    size_t used = strlen(err->text);
    unsigned long code;
    while ((code = ERR_get_error()) != 0) {
        char line[256];
        size_t len;
        ERR_error_string_n(code, line, sizeof line);
        len = strlen(line);
        if (used + len + 2 < sizeof err->text) {
            if (used > 0)
                err->text[used++] = '\n';
            memcpy(err->text + used, line, len + 1);
            used += len;
        }
        err->nerrs++;
    }
}

static sp_mutex once_lock = SP_MUTEX_INITIALIZER;

int sp_once(int *done, int (*make)(void))
{
    int ok;
    if (sp_flag_get(done))
        return 1;
    sp_mutex_lock(&once_lock);
    ok = *done || make();
    if (ok)
        sp_flag_set(done, 1);
    sp_mutex_unlock(&once_lock);
    return ok;
}

const char *sp_build_version(void)
{
    return SP_BUILD_VERSION;
}

const char *sp_openssl_version_text(void)
{
    return OpenSSL_version(OPENSSL_VERSION);
}

unsigned long sp_openssl_version_number(void)
{
    return OpenSSL_version_num();
}

unsigned long sp_openssl_linked_version_number(void)
{
    return OPENSSL_VERSION_NUMBER;
}
