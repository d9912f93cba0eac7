/* fuzz_client.c - a stream-mode client pump fed the input as the server's ciphertext
 * (fz_common.h: the input's header, the chunks, what is checked). */
#include "fz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fz_run_pump(0, 0, data, size);
}
