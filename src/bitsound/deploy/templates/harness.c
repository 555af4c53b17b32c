/* harness.c: runs the generated model on the records of input.bin and prints the results.
 *
 * input.bin (written by `bitsound deploy --run`): "BSIN", u32 version = 1, u32 kind (0: audio
 * windows, 1: features), u32 records, u32 floats per record, then the float32 records. For each
 * record it prints
 *   R <index> <front-end ticks> <network ticks> <logit bits in hex>...
 * and for the first record the ticks of every step (`P <step> <ticks>`); then the stack high-water
 * mark (`S <bytes>`) and `X`. Ticks are the platform's (Cortex-M4 under QEMU: SysTick at 25 MHz;
 * host: nanoseconds).
 */
#include <stdint.h>
#include <string.h>

#include "bitsound_model.h"

int plat_open(const char *name);
int plat_read(int handle, void *buf, uint32_t n); /* 0: all n bytes read */
void plat_puts(const char *s);
uint64_t plat_ticks(void);
uint32_t plat_stack_used(void);
void plat_init(void);

#ifdef BSM_TARGET_M4
#define HARNESS_BSS __attribute__((section(".harness_bss")))
#else
#define HARNESS_BSS
#endif

#if BITSOUND_INPUT_FLOATS > BITSOUND_FEATURE_FLOATS
#define RECORD_FLOATS BITSOUND_INPUT_FLOATS
#else
#define RECORD_FLOATS BITSOUND_FEATURE_FLOATS
#endif

static float record[RECORD_FLOATS] HARNESS_BSS;
static uint64_t marks[BITSOUND_N_STEPS + 1] HARNESS_BSS;

void bsm_profile_mark(int step) {
    if (step >= -1 && step < BITSOUND_N_STEPS) marks[step + 1] = plat_ticks();
}

static char *put_u64(char *p, uint64_t v) {
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n) *p++ = tmp[--n];
    return p;
}

static char *put_hex32(char *p, uint32_t v) {
    for (int i = 7; i >= 0; i--) *p++ = "0123456789abcdef"[(v >> (4 * i)) & 15u];
    return p;
}

static int fail(const char *msg) {
    plat_puts("E ");
    plat_puts(msg);
    plat_puts("\n");
    return 2;
}

int main(void) {
    plat_init();
    if (!bitsound_selfcheck()) return fail("a kernel needs more working memory than the generated plan gives it");
    const int h = plat_open("input.bin");
    if (h < 0) return fail("cannot open input.bin");
    uint32_t hdr[5];
    if (plat_read(h, hdr, sizeof hdr)) return fail("input.bin is shorter than its header");
    if (memcmp(hdr, "BSIN", 4) || hdr[1] != 1) return fail("input.bin is not a version-1 BSIN file");
    const uint32_t kind = hdr[2], n = hdr[3], floats = hdr[4];
    if (kind > 1 || (kind == 0 && !BITSOUND_HAS_FRONTEND)) return fail("unknown record kind for this model");
    if (floats != (kind == 0 ? (uint32_t)BITSOUND_INPUT_FLOATS : (uint32_t)BITSOUND_FEATURE_FLOATS))
        return fail("the records have the wrong length for this model");
    static char line[64 + 9 * BITSOUND_N_CLASSES];
    float logits[BITSOUND_N_CLASSES];
    for (uint32_t i = 0; i < n; i++) {
        if (plat_read(h, record, floats * 4u)) return fail("input.bin ends inside a record");
        memset(marks, 0, sizeof marks);
#if BITSOUND_HAS_FRONTEND
        if (kind == 0)
            bitsound_model_run(record, logits);
        else
#endif
            bitsound_network_run(record, logits);
        char *p = line;
        *p++ = 'R';
        *p++ = ' ';
        p = put_u64(p, i);
        *p++ = ' ';
        p = put_u64(p, marks[1] - marks[0]);
        *p++ = ' ';
        p = put_u64(p, marks[BITSOUND_N_STEPS] - marks[1]);
        for (int k = 0; k < BITSOUND_N_CLASSES; k++) {
            uint32_t bits;
            memcpy(&bits, &logits[k], 4);
            *p++ = ' ';
            p = put_hex32(p, bits);
        }
        *p++ = '\n';
        *p = 0;
        plat_puts(line);
        if (i == 0)
            for (int k = 1; k < BITSOUND_N_STEPS; k++) {
                p = line;
                *p++ = 'P';
                *p++ = ' ';
                p = put_u64(p, (uint64_t)k);
                *p++ = ' ';
                p = put_u64(p, marks[k + 1] - marks[k]);
                *p++ = '\n';
                *p = 0;
                plat_puts(line);
            }
    }
    char *p = line;
    *p++ = 'S';
    *p++ = ' ';
    p = put_u64(p, plat_stack_used());
    *p++ = '\n';
    *p = 0;
    plat_puts(line);
    plat_puts("X\n");
    return 0;
}
