/* bsnn: the bit-packed binary network engine of bitsound (portable C99 + optional intrinsics).
 *
 * A model file (.bsnn, written by bitsound.export.bsnn from the typed graph of bitsound.graph) is
 * a list of op records over numbered tensor slots; the op codes and record layouts are defined once
 * in bitsound/graph/opcodes.py, which generates bsnn_codes.h. The loader (format.c) treats the file as untrusted: every count, size, slot id
 * and parameter is checked before use, and a malformed file gives a status code and a message.
 *
 * Tensor layouts (one example at a time; the batch loop is outside):
 *   float  : [h][w][c] float32, channels last (a 1-D signal [c][t] is h = 1, w = t)
 *   bits   : [h][w][nw] uint64, nw = ceil(c / 64); channel j of a pixel is bit (j % 64) of word
 *            (j / 64), least significant bit first; bit 0 means +1, bit 1 means -1; the unused
 *            high bits of the last word are always 0.
 *   int8   : [h][w][c] int8 with a per-tensor scale and zero point held by the ops
 * 1-D ops (conv1d, pools) run as their 2-D forms with a 1 x k window on the h = 1 map.
 *
 * Binary convolution semantics (bitsound.nn.layers): zero padding is applied after binarizing,
 * so a padded position contributes 0 and, with n_valid the number of (channel, tap) pairs inside
 * the input, dot = n_valid - 2 * popcount(x xor w) over the valid pairs.
 */
#ifndef BSNN_H
#define BSNN_H

#include <stddef.h>
#include <stdint.h>

#include "bsnn_codes.h" /* op codes, dtypes, modes and the format version: generated from Python */

#define BSNN_MAGIC "BSNN\r\n\x1a\n"
#define BSNN_MAGIC_LEN 8

/* limits that keep a hostile file from asking for absurd work or memory */
#define BS_MAX_DIM 65536           /* channels, groups, dense outputs */
#define BS_MAX_LEN (1 << 24)       /* h, w, kernel, stride, padding, dilation: a 10-s binaural
                                    * waveform at 18 kHz is a map 180,000 samples wide */
#define BS_MAX_ELEMS (1u << 26)    /* elements of one activation tensor */
#define BS_MAX_ARENA ((size_t)1 << 30)
#define BS_MAX_RECORDS 100000
#define BS_MAX_SLOTS 100000
#define BS_NAME_MAX 255
#define BS_MAX_QFAN 65536        /* int8 products per output: 65536 * 255 * 128 < 2^31 */

typedef enum {
    BS_OK = 0,
    BS_ERR_ARG = 1,         /* bad argument from the caller (not from the file) */
    BS_ERR_TRUNCATED = 2,   /* the file ends before its structure does */
    BS_ERR_MAGIC = 3,       /* not a bsnn file */
    BS_ERR_VERSION = 4,     /* a format version this engine does not read */
    BS_ERR_CRC = 5,         /* checksum mismatch: the file is corrupt */
    BS_ERR_RANGE = 6,       /* a size, count, offset or parameter is out of range */
    BS_ERR_GRAPH = 7,       /* inconsistent graph: undefined slot, shape or type mismatch */
    BS_ERR_NOMEM = 8,       /* out of memory */
    BS_ERR_ISA = 9,         /* the requested instruction set is not available */
    BS_ERR_UNSUPPORTED = 10 /* unknown op type, mode or flag */
} bs_status;

const char *bs_status_name(int status);

typedef struct {
    int32_t h, w, c, dtype;
} bs_shape;

typedef struct {
    int32_t kh, kw, sh, sw, pt, pl, pb, pr, dh, dw;
} bs_geom;

/* bit-serial form of a binary conv's weights (kernels_avx2.c): each output channel lists the
 * positions of its 0 bits or of its 1 bits, so that popcount(x xor w) = n1 + X - 2 C1 or
 * n1 - X + 2 C0, with X = popcount(x) and C the sum of x over the listed bits. Channels go in
 * pairs (2q, 2q + 1) that share the positions both list: segment 3q holds those, 3q + 1 those of
 * channel 2q only, 3q + 2 those of channel 2q + 1 only (a last odd channel: segment 3q holds all
 * of its positions, the other two are empty). A kernel sums segment 3q once, then continues
 * from that partial sum with each channel's own segment: a quarter fewer rows than listing each
 * channel on its own when half of each channel's bits are listed.
 * The positions are split into chunks of up to BS_CHUNK_WORDS kernel words (64 positions
 * each): a kernel sums chunk by chunk over all pairs, so that the transposed patch rows it
 * gathers from (32 bytes each) stay in the L1 cache; the three segments of pair q in chunk c are
 * 3 (c npairs + q) + 0..2. */
typedef struct {
    uint32_t *start;   /* [3 * ceil(cout / 2) * nchunks + 1] segment offsets into idx */
    uint16_t *idx;     /* listed rows as BS_ROW_OFFSET(position), ascending within a segment,
                        * then padded with the all-zero row kwords * 64 (see bs_bitserial_build) */
    uint8_t *sel;      /* 1: the listed positions hold w = 1; 0: w = 0 */
    int32_t *n1;       /* popcount of each weight row */
    int32_t nplanes;   /* bit planes a count needs (>= 5) */
    int32_t nchunks;   /* ceil(kwords / BS_CHUNK_WORDS) chunks of equal size */
} bs_bitserial;

/* at most 768 positions a chunk: 24 KB of transposed rows, in a 32 KB L1 with room for the plan.
 * Measured on a Zen 3 for the 256 -> 256 3x3 conv on 32x32 (K = 2304): 8 words 1.04 ms, 12 words
 * 0.95 ms, 16 words 0.98 ms, one chunk 1.17 ms */
#define BS_CHUNK_WORDS 12
/* idx holds row * BS_ROW_UNIT (uint16), and a kernel loads listed row idx[i] at
 * xt + BS_ROW_BYTES(idx[i], its row bytes): kernels of up to 16128 bits (kwords <= 252) with 4,
 * 7936 with 8. With 8 the 512-bit rows of the AVX-512 slice kernel are one addressing mode away
 * (8 idx[i]; with 4, 16 idx[i] takes a shift); 256- and 64-bit rows are either way. Measured
 * (Zen 4, one thread, interleaved runs of both builds): 8 makes the AVX-512 slice kernel 2-7 %
 * faster on benchmarks/bench_engine.py's layers (256->256 32x32, 64->64 40x100, 128->128 16x16,
 * 32->64 64x44, 512->512 8x8; the AVX2 slice and the bit-serial kernels within 0.5 %), but sends
 * 1024-channel 3x3 layers (9216 bits) to the word-parallel kernels, 1.3-1.7x slower on AVX-512
 * (32x32) and 2.6-5x on AVX2 (16x16, 32x32) than their slice form: 4 is the default. */
#ifndef BS_ROW_UNIT
#define BS_ROW_UNIT 4
#endif
#define BS_ROW_OFFSET(row) ((row) * BS_ROW_UNIT)
#define BS_ROW_BYTES(idx, row_bytes) ((size_t)(idx) * ((row_bytes) / BS_ROW_UNIT))
#define BS_PAD_ROWS 15 /* segments are padded to a multiple of 16 rows (a Harley-Seal step) */
/* the transposed patches of a pixel block: kwords * 64 rows of 32 bytes and the all-zero row */
#define BS_XT_BYTES(kwords) (((size_t)(kwords) * 64 + 1) * 32)

/* fused bit-sliced form of a stride-1 binary conv with thresholded bit output (slice.c builds it,
 * bitslice_body.h runs it, model.c drives it). The input map is transposed once per run into one
 * bit plane per input channel in raster order (plane bit margin + iy * S + ix is input pixel
 * (iy, ix), S the input width, 0 outside the input); output position q = oy * S + ox then reads
 * kernel row (tap t, channel c) at plane c's bit margin + q + shift[t], masked with the tap
 * column's colmask (0 where ix falls outside the row, which would wrap to the next row), so the
 * transposed rows of a block of 64 VW positions are shifted loads of the planes and a tap outside
 * the input reads 0, as a gathered patch. The plan's rows are counted per pair as in bs_bitserial,
 * and instead of integer counts each channel's threshold rule is evaluated on the bit-sliced
 * counts (carry chains over P planes) for the interior and for each border class (the set of
 * taps outside the input, which changes the rule's constant) present in the block, giving the
 * channel's output bits of all positions at once; 64 x 64 bit transposes make the output words. */
typedef struct {
    int32_t S;              /* plane row stride: the input width (>= the output width) */
    int32_t margin;         /* plane bits before position 0: a multiple of 64, >= -min(shift) */
    int32_t nwp;            /* words per plane (a multiple of 8) */
    int32_t P;              /* planes of the signed compare: 2^(P-1) >= 2K + 1 */
    int32_t LX;             /* planes of the per-position input popcount X (>= 6, 2^LX > K) */
    int32_t *shift;         /* [kh * kw] plane offset of each tap */
    uint16_t *all;          /* every kernel row of each chunk (row offsets, padded like a segment) */
    uint32_t *all_start;    /* [nchunks + 1] */
    int32_t nmw;            /* words of a position mask: positions [0, ho * S) rounded up to 512 */
    uint64_t *colmask;      /* [kw][nmw] positions whose tap column kx lies inside the input row */
    int32_t nclass;         /* border classes (class 0, the interior, not counted) */
    uint64_t *clsmask;      /* [nclass][nmw] the output positions of each border class */
    int32_t *kc;            /* [nclass + 1][cout] each channel's constant 1 - t (see slice.c) */
    uint8_t *inv;           /* [cout] 1: -1 out where R >= t, 0: where R < t */
} bs_slice;

/* binary conv forms (bs_op.form); a form the kernel table lacks runs on the next one down */
enum { BS_FORM_WORD = 0, BS_FORM_SERIAL = 1, BS_FORM_SLICE = 2 };
#define BS_SLICE_MAX_VW 8 /* the widest slice kernel's vector: 8 words, blocks of 512 positions */

#define BS_PIXEL_BLOCK 256          /* output pixels gathered per kernel call */
#define BS_BITSERIAL_MIN_BITS 128   /* smaller kernels stay on the word-parallel path */
#define BS_BITSERIAL_MIN_PIXELS 128
#define BS_MAX_PLAN_ENTRIES ((size_t)1 << 27) /* 256 MB of uint16 positions */

typedef struct {
    int32_t type;          /* op code (bsnn_codes.h) */
    int32_t in0, in1, out;
    bs_shape s0, s1, so;   /* shapes of in0, in1 (if any) and out, fixed at load */
    char name[BS_NAME_MAX + 1];
    bs_geom g;             /* convs and pools; a 1-D op has kh = 1, sh = 1, no top/bottom padding */
    int32_t mode;          /* norm mode, act kind, bconv/qconv output mode, add mode, pool ceil_mode,
                            * normalize axis mask */
    int32_t aux;           /* avg pool: count_include_pad; qconv: relu; slice/concat: axis */
    int32_t start, stop;   /* slice */
    int32_t perm[3];       /* permute: output axis i is input axis perm[i] */
    int32_t cin, cout, groups;
    int32_t depthwise;     /* float conv with one input and one output channel per group */
    int32_t has_floor;
    float floor_off, eps;
    float qscale, oscale;  /* quantize/dequantize scale; qconv: input scale, output scale */
    int32_t qzero, ozero;  /* zero points, likewise */
    float *wf;             /* float weights: conv [groups][kh][kw][cin/g][cout/g] (depthwise:
                            * [kh][kw][c]), linear [n][nin]; decoded from f32, f16 or signs */
    float *wscale;         /* per-output-channel factor applied after the sum (sign weights: the
                            * scale; int8: in_scale * weight_scale), or NULL */
    int8_t *wq;            /* int8 weights [cout][kh][kw][cin/g] (qconv) or [nout][nin] (qlinear) */
    float *bias;           /* conv / linear bias, affine bias, bconv float bias */
    float *scale;          /* affine scale, bconv float scale, prelu slope, freq_affine [h][c] */
    uint64_t *wbits;       /* bconv weights [cout][kwords], kwords = K words padded to 4 */
    int32_t kwords;        /* padded words per output channel (multiple of 4) */
    int32_t nwi;           /* words per input pixel of one group */
    int32_t *thr;          /* bconv bits output: +1 iff (flip ? -dot : dot) >= thr */
    uint8_t *flip;
    int32_t *fsign;        /* 1 - 2 * flip */
    int32_t *wpop;         /* bconv [groups][kh*kw][cout/g]: popcount of the weights of each tap */
    bs_bitserial *bser;    /* bconv: bit-serial plan, or NULL */
    bs_slice *slc;         /* bconv: fused bit-sliced form (needs bser), or NULL */
    int32_t form;          /* bconv: BS_FORM_* chosen for the kernel table in use */
} bs_op;

typedef struct bs_kernels bs_kernels;

typedef struct {
    int n_ops;
    bs_op *ops;
    int n_slots;
    size_t *slot_off;      /* byte offset of each slot in the arena */
    size_t *slot_bytes;
    size_t scratch_off, scratch_bytes, arena_bytes;
    int32_t in_rank, in_c, in_h, in_w;
    int input_slot, output_slot;
    int32_t n_out;
    char *meta;
    size_t meta_len;
    uint16_t version_major, version_minor;
} bs_model;

/* ---- loading (format.c) ---- */
/* Parse and validate a model held in memory. On error returns a status, *out is NULL and msg
 * (msg_len bytes, may be NULL) holds a message naming the record and the problem. */
int bs_model_load(const uint8_t *data, size_t len, bs_model **out, char *msg, size_t msg_len);
void bs_model_free(bs_model *m);
uint32_t bs_crc32(const uint8_t *data, size_t len);

/* ---- running (model.c) ---- */
size_t bs_model_arena_bytes(const bs_model *m);
/* Run ops [0, stop) on one example; x is the input [c][h][w] float32; arena has
 * bs_model_arena_bytes() bytes, 64-byte aligned. stop = n_ops runs everything. */
void bs_model_run(const bs_model *m, const bs_kernels *k, const float *x, void *arena, int stop);
void bs_run_op(const bs_model *m, const bs_kernels *k, int i, void *arena);
/* the logits after a full run */
const float *bs_model_output(const bs_model *m, const void *arena);
size_t bs_shape_bytes(bs_shape s);
size_t bs_bconv_scratch_bytes(const bs_op *op);
/* scratch memory an op needs while it runs (bytes, 64-byte aligned) */
size_t bs_op_scratch_bytes(const bs_op *op);
size_t bs_bitserial_work_bytes(const bs_op *op);
int bs_bitserial_build(bs_op *op); /* op->bser; on an error the caller frees a partial plan */
void bs_bitserial_free(bs_bitserial *b);

/* ---- the fused bit-sliced form (slice.c) ---- */
int bs_slice_eligible(const bs_op *op);    /* stride 1, bit output, ungrouped, output rows no wider */
/* op->slc: BS_OK, BS_ERR_NOMEM, or BS_ERR_UNSUPPORTED: not this op, or a geometry past the form's
 * bounds (slice.c: positions, masks, int32 offsets); on an error the caller frees a partial one */
int bs_slice_build(bs_op *op);
void bs_slice_free(bs_slice *s);
size_t bs_slice_planes_bytes(const bs_op *op);
size_t bs_slice_work_bytes(const bs_op *op);
/* Set every binary conv's form for kernel table k: forced (BS_FORM_*) where the op and k allow
 * it, or -1 for the choice from the shapes. Builds the structures the chosen forms need and frees
 * the others (a bit-serial plan, slice tables), falls back to the next form where they cannot be
 * built or their scratch would not fit in BS_MAX_ARENA, and sets scratch_bytes and arena_bytes
 * for the forms chosen. BS_OK, or BS_ERR_RANGE when even the word-parallel forms do not fit.
 * The loader calls it for "auto"; a model run with another table falls back form by form
 * (bs_op_run_form) in the memory it has. */
int bs_model_set_forms(bs_model *m, const bs_kernels *k, int forced);
/* the form op runs in with kernel table k: its chosen form, or the next one down that k has */
int bs_op_run_form(const bs_op *op, const bs_kernels *k);

/* ---- threads (pool.c): a small pthreads pool; tasks are handed out one at a time ---- */
typedef struct bs_pool bs_pool;
typedef void (*bs_task_fn)(void *ctx, int task, int tid);
/* threads >= 1 (the caller counts as one); scratch_bytes of 64-byte aligned scratch per worker */
int bs_pool_create(int threads, size_t scratch_bytes, bs_pool **out);
void bs_pool_free(bs_pool *p);
int bs_pool_threads(const bs_pool *p);
/* worker tid's scratch (tid >= 1); tid 0 is the calling thread, which uses its arena's */
void *bs_pool_scratch(bs_pool *p, int tid);
/* run fn(ctx, task, tid) for task = 0 .. ntasks - 1 on the pool's threads; returns when all are
 * done. Calls on one pool are serialized; fn must not call bs_pool_run on the same pool. */
void bs_pool_run(bs_pool *p, int ntasks, bs_task_fn fn, void *ctx);
/* per-thread scratch the binary convs of m need when run with a pool (bytes) */
size_t bs_model_thread_bytes(const bs_model *m);
/* bs_model_run / bs_run_op with the layers' pixel blocks split over the pool's threads (pool may be
 * NULL); the results are the same whatever the number of threads */
void bs_model_run_pool(const bs_model *m, const bs_kernels *k, bs_pool *pool, const float *x, void *arena,
                       int stop);
void bs_run_op_pool(const bs_model *m, const bs_kernels *k, bs_pool *pool, int i, void *arena);

/* ---- kernels (one table per instruction set; dispatch.c) ---- */
struct bs_kernels {
    const char *name;
    /* pop[p * cout + o] = popcount(patch_p xor w_o) over kwords words (kwords % 4 == 0);
     * patches [n][kwords], w [cout][kwords], both zero-padded */
    void (*xor_popcount)(const uint64_t *patches, int n, const uint64_t *w, int cout, int kwords,
                         int32_t *pop);
    /* bits[p][nw] = sign bits of x[p][c] for npix pixels */
    void (*pack)(const float *x, size_t npix, int c, uint64_t *bits);
    /* threshold output stage of one pixel: bit o = -1 iff fsign[o] * (nvalid - 2 pop[o]) < thr[o] */
    void (*bits_out)(const int32_t *pop, int cout, int32_t nvalid, const int32_t *thr, const int32_t *fsign,
                     uint64_t *dst);
    /* 1 = use the plain reference of every binary op instead of the fast structure */
    int reference;
    /* optional: the same popcounts from the bit-serial plan (op->bser) for n >= 128 pixels;
     * work has bs_bitserial_work_bytes(op) bytes, 64-byte aligned */
    void (*bitserial)(const uint64_t *patches, int n, const bs_op *op, int32_t *pop, void *work);
    /* optional: the fused bit-sliced form (op->slc): slice_planes transposes the input map into
     * the planes, bitslice writes the interior output words of the block of 64 * slice_words
     * positions from q0 (a multiple of 64 * slice_words); work has bs_slice_work_bytes(op) bytes */
    void (*slice_planes)(const bs_op *op, const uint64_t *x, uint64_t *planes);
    void (*bitslice)(const bs_op *op, const uint64_t *planes, int64_t q0, uint64_t *y, void *work);
    int slice_words;
    /* the form choice (bs_model_set_forms): measured cost models, ns per output channel, of the
     * word-parallel kernel per pixel (word_cost[0] + word_cost[1] * kwords) and of the slice kernel
     * per block (slice_cost[0] + slice_cost[1] * K); prefer_serial: without the slice form, the
     * bit-serial kernel beats the word-parallel one on large layers */
    float word_cost[2], slice_cost[2];
    int prefer_serial;
};

const bs_kernels *bs_kernels_get(const char *isa, int *status);
int bs_isa_available(const char *isa);
const char *bs_isa_auto(void);

/* per-instruction-set pieces (kernels_*.c) */
void bs_xor_popcount_scalar(const uint64_t *, int, const uint64_t *, int, int, int32_t *);
void bs_pack_scalar(const float *, size_t, int, uint64_t *);
void bs_bits_out_scalar(const int32_t *, int, int32_t, const int32_t *, const int32_t *, uint64_t *);
void bs_bitserial_scalar(const uint64_t *, int, const bs_op *, int32_t *, void *);
void bs_transpose_patches(const uint64_t *patches, int n, int kwords, uint64_t *xt);
void bs_pack_ref(const float *, size_t, int, uint64_t *);
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define BS_X86 1
void bs_xor_popcount_avx2(const uint64_t *, int, const uint64_t *, int, int, int32_t *);
void bs_bitserial_avx2(const uint64_t *, int, const bs_op *, int32_t *, void *);
void bs_bitserial_avx512(const uint64_t *, int, const bs_op *, int32_t *, void *);
void bs_bitserial_avx512emu(const uint64_t *, int, const bs_op *, int32_t *, void *);
void bs_slice_planes_avx2(const bs_op *, const uint64_t *, uint64_t *);
void bs_bitslice_avx2(const bs_op *, const uint64_t *, int64_t, uint64_t *, void *);
void bs_slice_planes_avx512(const bs_op *, const uint64_t *, uint64_t *);
void bs_bitslice_avx512(const bs_op *, const uint64_t *, int64_t, uint64_t *, void *);
void bs_slice_planes_avx512emu(const bs_op *, const uint64_t *, uint64_t *);
void bs_bitslice_avx512emu(const bs_op *, const uint64_t *, int64_t, uint64_t *, void *);
void bs_pack_avx2(const float *, size_t, int, uint64_t *);
void bs_bits_out_avx2(const int32_t *, int, int32_t, const int32_t *, const int32_t *, uint64_t *);
void bs_xor_popcount_avx512(const uint64_t *, int, const uint64_t *, int, int, int32_t *);
double bs_peak_avx2_lut(double seconds);
double bs_peak_avx2_hs(double seconds);
double bs_peak_popcnt(double seconds);
void bs_xor_popcount_avx512emu(const uint64_t *, int, const uint64_t *, int, int, int32_t *);
double bs_peak_avx512(double seconds);
#endif
double bs_peak_scalar(double seconds);
void bs_slice_planes_scalar(const bs_op *, const uint64_t *, uint64_t *);
void bs_bitslice_scalar(const bs_op *, const uint64_t *, int64_t, uint64_t *, void *);

/* plain reference ops (kernels_ref.c): the slow obvious twins the fast paths are tested against */
void bs_ref_bconv2d(const bs_op *op, const uint64_t *in, void *out);
void bs_ref_maxpool_bits(const bs_op *op, const uint64_t *in, uint64_t *out);
void bs_ref_conv2d(const bs_op *op, const float *in, float *out);
void bs_ref_qconv2d(const bs_op *op, const int8_t *in, void *out);
void bs_ref_avgpool(const bs_op *op, const float *in, float *out);
/* the float and int8 output stages, shared by the fast paths and the references so that both
 * round identically */
float bs_requant_float(const bs_op *op, int32_t o, int32_t acc);
/* a float conv or dense output from its double sum: 1-bit weights are summed as +-x and scaled
 * afterwards */
static inline float bs_conv_finish(const bs_op *op, int32_t o, double acc) {
    if (op->wscale) return (float)acc * op->wscale[o] + (op->bias ? op->bias[o] : 0.0f);
    return (float)(acc + (op->bias ? (double)op->bias[o] : 0.0));
}
void bs_avgpool_window(const bs_op *op, int32_t oy, int32_t ox, int32_t *y0, int32_t *y1, int32_t *x0, int32_t *x1,
                       int32_t *div);
int8_t bs_quantize_value(float x, float scale, int32_t zero);

/* timing (model.c) */
double bs_now(void);

#endif
