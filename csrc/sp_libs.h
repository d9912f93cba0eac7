/* sp_libs.h - which libssl / libcrypto files this module is really running on (sp_libs.c). */
#ifndef SP_LIBS_H
#define SP_LIBS_H

/* The libraries sp_lib_path / sp_lib_anchor know. */
enum {
    SP_LIB_SSL = 1,
    SP_LIB_CRYPTO = 2
};

/* Write the path of the file the dynamic loader mapped for `which` (NUL-terminated; UTF-8 on
 * Windows, the file system's bytes elsewhere) into out. Returns its length, or -1 when it is
 * unknown or does not fit. */
int sp_lib_path(int which, char *out, size_t outlen);
/* The address of a function `which` defines (SSL_CTX_new, EVP_MD_CTX_new), so another loader's
 * handle can be checked to be the very same library. NULL for an unknown `which`. */
const void *sp_lib_anchor(int which);
/* OPENSSL_VERSION_TEXT of the headers this module was compiled with (the runtime one is
 * sp_openssl_version_text). */
const char *sp_openssl_linked_version_text(void);

#endif /* SP_LIBS_H */
