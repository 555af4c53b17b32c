/* fuzz_load.c: fuzzing harness of the bsnn loader (and of running what it accepts).
 *
 * libFuzzer:   clang -g -O1 -fsanitize=fuzzer,address,undefined -DBS_LIBFUZZER \
 *                  fuzz_load.c ../format.c ../model.c ../dispatch.c ../kernels_*.c ../slice.c ../pool.c \
 *                  -lm -pthread
 *              ./a.out corpus_dir/
 * plain C:     gcc -std=c99 -D_POSIX_C_SOURCE=200809L -g -O1 -fsanitize=address,undefined \
 *                  fuzz_load.c ../format.c ../model.c ../dispatch.c ../kernels_*.c ../slice.c ../pool.c \
 *                  -lm -pthread -o fuzz_load
 *              ./fuzz_load SECONDS SEED FILE.bsnn...
 *
 * The plain driver mutates the given valid files (bit flips, byte and 32-bit field overwrites
 * with edge values, truncation, insertion, deletion, record splicing) and, for half of the
 * mutants, re-stamps the file size and CRC so that the mutation reaches the parser instead of
 * stopping at the checksum. Every mutant goes through bs_model_load; accepted models are run
 * on every instruction set (if their work is small), in the forms chosen at load, in those chosen
 * for the set and with the slice form forced, so that the executor and the form changes also see
 * only validated shapes. Any out-of-bounds access is a sanitizer report and a non-zero exit.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../bsnn.h"

/* an arena for m's current forms (NULL when over the harness's 64 MB) */
static void *arena_for(const bs_model *m) {
    void *arena = NULL;
    if (m->arena_bytes > ((size_t)64 << 20)) return NULL;
    if (posix_memalign(&arena, 64, m->arena_bytes ? m->arena_bytes : 64) != 0) return NULL;
    return arena;
}

static void set_forms_or_die(bs_model *m, const bs_kernels *kt, int forced) {
    if (bs_model_set_forms(m, kt, forced) != BS_OK) { /* the loader's forms fit, so others must */
        fprintf(stderr, "an accepted model's forms for %s do not fit its arena\n", kt->name);
        abort();
    }
}

static int run_accepted(bs_model *m) {
    /* bound the work: skip models whose binary/float ops would take long */
    double work = 0;
    for (int i = 0; i < m->n_ops; i++) {
        const bs_op *op = &m->ops[i];
        double out = (double)op->so.h * op->so.w * op->so.c;
        double fan = 1;
        int bin = op->type == BS_OP_BINARY_CONV2D || op->type == BS_OP_BINARY_CONV1D;
        if (bin || op->type == BS_OP_CONV2D || op->type == BS_OP_CONV1D || op->type == BS_OP_QCONV2D ||
            op->type == BS_OP_QCONV1D)
            fan = (double)op->g.kh * op->g.kw * op->cin / (op->groups ? op->groups : 1);
        if (bin) fan /= 64;
        if (op->type == BS_OP_LINEAR || op->type == BS_OP_QLINEAR) fan = op->cin;
        if (op->type >= BS_OP_MAXPOOL2D && op->type <= BS_OP_AVGPOOL1D) fan = (double)op->g.kh * op->g.kw;
        if (op->type == BS_OP_NORMALIZE || op->type == BS_OP_PERMUTE) fan = 3;
        work += out * (fan + 1) + (double)op->s0.h * op->s0.w * op->s0.c;
    }
    if (work > 2e6 || m->arena_bytes > ((size_t)64 << 20)) return 0;
    size_t nin = (size_t)m->in_c * m->in_h * m->in_w;
    float *x = malloc(nin * sizeof(float) + 4);
    if (!x) return 0;
    for (size_t i = 0; i < nin; i++) x[i] = (float)((int)(i * 2654435761u % 17) - 8) * 0.25f;
    /* every instruction set, first in the forms chosen at load (the others fall back form by form
     * in the loader's memory), then with the forms chosen for it and with the slice form forced
     * (which builds and frees the plans and tables, and resizes the arena) */
    static const char *isas[] = {"reference", "scalar", "scalar-bitserial", "avx2", "avx512", "avx512-emulated"};
    for (int pass = 0; pass < 3; pass++)
        for (size_t k = 0; k < sizeof isas / sizeof *isas; k++) {
            int st;
            const bs_kernels *kt = bs_kernels_get(isas[k], &st);
            if (!kt) continue;
            if (pass > 0) set_forms_or_die(m, kt, pass == 1 ? -1 : BS_FORM_SLICE);
            void *arena = arena_for(m);
            if (!arena) continue;
            bs_model_run(m, kt, x, arena, m->n_ops);
            volatile float sink = bs_model_output(m, arena)[0];
            (void)sink;
            free(arena);
        }
    /* threads: the binary convs' pixel blocks over a pool of 2 give the same output bytes */
    int st;
    const bs_kernels *ka = bs_kernels_get("auto", &st);
    set_forms_or_die(m, ka, -1);
    bs_pool *pool = NULL;
    size_t nout = (size_t)m->n_out * sizeof(float);
    float *one = malloc(nout + 4);
    void *arena = arena_for(m);
    if (one && arena && bs_pool_create(2, bs_model_thread_bytes(m), &pool) == BS_OK) {
        bs_model_run(m, ka, x, arena, m->n_ops);
        memcpy(one, bs_model_output(m, arena), nout);
        bs_model_run_pool(m, ka, pool, x, arena, m->n_ops);
        if (memcmp(one, bs_model_output(m, arena), nout) != 0) {
            fprintf(stderr, "a run on 2 threads differs from the run on one\n");
            abort();
        }
        bs_pool_free(pool);
    }
    free(one);
    free(arena);
    free(x);
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    bs_model *m = NULL;
    char msg[512];
    int st = bs_model_load(data, size, &m, msg, sizeof msg);
    if (st == BS_OK) {
        run_accepted(m);
        bs_model_free(m);
    } else if (m != NULL || msg[0] == 0) {
        fprintf(stderr, "error %d without a message or with a model\n", st);
        abort();
    }
    return 0;
}

#ifndef BS_LIBFUZZER
static uint64_t rng_state;
static uint32_t rnd(void) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(rng_state >> 33);
}

static uint8_t *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(n > 0 ? (size_t)n : 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    *len = (size_t)n;
    return b;
}

static void put_u32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}

static void restamp(uint8_t *b, size_t n) {
    if (n < BSNN_HEADER_BYTES + 4) return;
    uint64_t len = n;
    for (int i = 0; i < 8; i++) b[32 + i] = (uint8_t)(len >> (8 * i));
    put_u32(b + n - 4, bs_crc32(b, n - 4));
}

static size_t mutate(uint8_t *b, size_t n, size_t cap, const uint8_t *other, size_t other_n) {
    static const uint32_t edges[] = {0, 1, 2, 3, 4, 7, 8, 63, 64, 65, 255, 256, 4096, 65535, 65536, 65537,
                                     0x7fffffff, 0x80000000u, 0xffffffffu, 0xfffffffeu, 100, 12, 13};
    int k = 1 + (int)(rnd() % 4);
    for (int j = 0; j < k && n > 0; j++) {
        switch (rnd() % 8) {
        case 0: b[rnd() % n] ^= (uint8_t)(1u << (rnd() % 8)); break;
        case 1: b[rnd() % n] = (uint8_t)rnd(); break;
        case 2: /* aligned 32-bit field := edge value (record fields are 4-byte aligned) */
            if (n >= 4) put_u32(b + (rnd() % (n / 4)) * 4, edges[rnd() % (sizeof edges / sizeof *edges)]);
            break;
        case 3: n = rnd() % (n + 1); break; /* truncate */
        case 4: { /* delete a span */
            size_t a = rnd() % n, l = 1 + rnd() % 16;
            if (a + l > n) l = n - a;
            memmove(b + a, b + a + l, n - a - l);
            n -= l;
            break;
        }
        case 5: { /* insert a span of random bytes */
            size_t a = rnd() % (n + 1), l = 1 + rnd() % 16;
            if (n + l > cap) break;
            memmove(b + a + l, b + a, n - a);
            for (size_t i = 0; i < l; i++) b[a + i] = (uint8_t)rnd();
            n += l;
            break;
        }
        case 6: /* small signed delta on a 32-bit field */
            if (n >= 4) {
                uint8_t *p = b + (rnd() % (n / 4)) * 4;
                uint32_t v = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
                put_u32(p, v + (uint32_t)((int)(rnd() % 17) - 8));
            }
            break;
        case 7: { /* splice a chunk of another seed over this one */
            if (!other_n) break;
            size_t a = rnd() % n, s = rnd() % other_n, l = 1 + rnd() % 64;
            if (a + l > n) l = n - a;
            if (s + l > other_n) l = other_n - s;
            memcpy(b + a, other + s, l);
            break;
        }
        }
    }
    return n;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s SECONDS SEED FILE.bsnn...\n", argv[0]);
        return 2;
    }
    double seconds = atof(argv[1]);
    rng_state = strtoull(argv[2], NULL, 10) * 2654435761ull + 1;
    int nseeds = argc - 3;
    uint8_t **seeds = calloc((size_t)nseeds, sizeof *seeds);
    size_t *lens = calloc((size_t)nseeds, sizeof *lens), cap = 0;
    for (int i = 0; i < nseeds; i++) {
        seeds[i] = read_file(argv[3 + i], &lens[i]);
        if (!seeds[i]) {
            fprintf(stderr, "cannot read %s\n", argv[3 + i]);
            return 2;
        }
        /* the seeds themselves must load */
        bs_model *m = NULL;
        char msg[512];
        if (bs_model_load(seeds[i], lens[i], &m, msg, sizeof msg) != BS_OK) {
            fprintf(stderr, "seed %s does not load: %s\n", argv[3 + i], msg);
            return 2;
        }
        bs_model_free(m);
        if (lens[i] > cap) cap = lens[i];
    }
    cap += 4096;
    uint8_t *buf = malloc(cap);
    long iters = 0, accepted = 0;
    double t_end = bs_now() + seconds;
    while (bs_now() < t_end) {
        for (int r = 0; r < 64; r++, iters++) {
            int s = (int)(rnd() % (uint32_t)nseeds), o = (int)(rnd() % (uint32_t)nseeds);
            memcpy(buf, seeds[s], lens[s]);
            size_t n = mutate(buf, lens[s], cap, seeds[o], lens[o]);
            if (rnd() % 2) restamp(buf, n);
            /* an exact-size copy, so that any over-read is outside the allocation */
            uint8_t *exact = malloc(n ? n : 1);
            memcpy(exact, buf, n);
            bs_model *m = NULL;
            char msg[512];
            int st = bs_model_load(exact, n, &m, msg, sizeof msg);
            if (st == BS_OK) {
                accepted++;
                run_accepted(m);
                bs_model_free(m);
            } else if (m != NULL || msg[0] == 0) {
                fprintf(stderr, "error %d without a message or with a model\n", st);
                return 1;
            }
            free(exact);
        }
    }
    printf("iterations %ld accepted %ld\n", iters, accepted);
    for (int i = 0; i < nseeds; i++) free(seeds[i]);
    free(seeds);
    free(lens);
    free(buf);
    return 0;
}
#endif
