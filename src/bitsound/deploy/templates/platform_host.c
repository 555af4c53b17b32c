/* platform_host.c: the harness's platform on a hosted system (stdio, monotonic clock in ns). */
#include <stdint.h>
#include <stdio.h>
#include <time.h>

static FILE *files[4];

void plat_init(void) {}

int plat_open(const char *name) {
    for (int i = 0; i < 4; i++)
        if (!files[i]) {
            files[i] = fopen(name, "rb");
            return files[i] ? i : -1;
        }
    return -1;
}

int plat_read(int handle, void *buf, uint32_t n) { return fread(buf, 1, n, files[handle]) == n ? 0 : 1; }

void plat_puts(const char *s) { fputs(s, stdout); }

uint64_t plat_ticks(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

uint32_t plat_stack_used(void) { return 0; }
