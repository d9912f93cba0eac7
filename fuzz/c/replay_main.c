/* replay_main.c - a main() for a harness built without libFuzzer (the test suite: tests/
 * test_fuzz_c.py): runs LLVMFuzzerTestOneInput once over every file named, or every file of
 * every directory named (the seed corpora and the crash regressions, fuzz/c/corpus/), and
 * exits 0 when none of them made the harness abort. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    unsigned char *data = NULL;
    size_t len = 0, cap = 0;
    if (f == NULL) {
        perror(path);
        return 0;
    }
    for (;;) {
        size_t n;
        if (len == cap) {
            unsigned char *grown = realloc(data, cap ? cap * 2 : 65536);
            if (grown == NULL) {
                fclose(f);
                free(data);
                return 0;
            }
            data = grown;
            cap = cap ? cap * 2 : 65536;
        }
        n = fread(data + len, 1, cap - len, f);
        if (n == 0)
            break;
        len += n;
    }
    fclose(f);
    LLVMFuzzerTestOneInput(data, len);
    free(data);
    return 1;
}

int main(int argc, char **argv)
{
    int i, runs = 0;
    for (i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            perror(argv[i]);
            return 2;
        }
        if (S_ISDIR(st.st_mode)) {
            DIR *d = opendir(argv[i]);
            struct dirent *e;
            if (d == NULL) {
                perror(argv[i]);
                return 2;
            }
            while ((e = readdir(d)) != NULL) {
                char path[4096];
                if (e->d_name[0] == '.')
                    continue;
                snprintf(path, sizeof path, "%s/%s", argv[i], e->d_name);
                if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
                    if (!run_file(path))
                        return 2;
                    runs++;
                }
            }
            closedir(d);
        } else {
            if (!run_file(argv[i]))
                return 2;
            runs++;
        }
    }
    printf("replayed %d inputs\n", runs);
    return runs > 0 ? 0 : 2;
}
