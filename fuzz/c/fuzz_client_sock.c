/* fuzz_client_sock.c - fuzz_client.c's target in socket mode: its descriptor is one end of a
 * socketpair, so the pump's own socket BIO reads the server's bytes (recv() into OpenSSL's
 * read-ahead buffer, the early bytes of a read that waits), and its sends, outq and close-time
 * drains run.
 * The input, and the seeds, are fuzz_client's (corpus/client/). */
#include "fz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fz_run_pump(0, 1, data, size);
}
