/* format.c: reader of the .bsnn packed model format; every field is validated before use.
 *
 * File layout (all integers little-endian, floats IEEE-754 binary32 little-endian):
 *
 *   header (40 bytes)
 *     0  magic      8 bytes  "BSNN\r\n\x1a\n"
 *     8  u16 major, u16 minor   format version (this reader: major 1, any minor)
 *     12 u32 flags              must be 0 (no optional features defined yet)
 *     16 u32 header_bytes       40
 *     20 u32 n_records
 *     24 u32 n_slots            tensor slots the ops read and write
 *     28 u32 reserved           0
 *     32 u64 file_bytes         total size, CRC included
 *   n_records records, each
 *     u32 type, u32 record_bytes (8-byte record header included, a multiple of 4), body
 *   trailer
 *     u32 crc32 (zlib polynomial) of every byte before it
 *
 * Op record body: i32 in0, i32 in1, i32 out, u32 name_len, name (padded with zeros to a multiple
 * of 4), then the op's parameters and arrays (see bitsound/export/packed.py, which writes them,
 * and parse_op() below). A record must be consumed exactly.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bsnn.h"

const char *bs_status_name(int s) {
    switch (s) {
    case BS_OK: return "ok";
    case BS_ERR_ARG: return "bad_argument";
    case BS_ERR_TRUNCATED: return "truncated";
    case BS_ERR_MAGIC: return "bad_magic";
    case BS_ERR_VERSION: return "bad_version";
    case BS_ERR_CRC: return "bad_checksum";
    case BS_ERR_RANGE: return "out_of_range";
    case BS_ERR_GRAPH: return "bad_graph";
    case BS_ERR_NOMEM: return "out_of_memory";
    case BS_ERR_ISA: return "isa_unavailable";
    case BS_ERR_UNSUPPORTED: return "unsupported";
    default: return "unknown";
    }
}

/* ---- CRC-32 (IEEE 802.3 / zlib) ---- */
static uint32_t crc_table[256];
static int crc_ready = 0;

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
    crc_ready = 1;
}

uint32_t bs_crc32(const uint8_t *data, size_t len) {
    if (!crc_ready) crc_init();
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < len; i++) c = crc_table[(c ^ data[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

/* ---- bounded little-endian reader ---- */
typedef struct {
    const uint8_t *p;
    size_t pos, end;
    int err;
    char *msg;
    size_t msg_len;
    int rec;          /* record index for messages, -1 = header */
    const char *what; /* op name for messages */
} rd_t;

static int fail(rd_t *r, int code, const char *fmt, ...) {
    if (r->err) return r->err; /* keep the first message */
    r->err = code;
    if (r->msg && r->msg_len) {
        char body[400];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(body, sizeof body, fmt, ap);
        va_end(ap);
        if (r->rec < 0)
            snprintf(r->msg, r->msg_len, "%s", body);
        else
            snprintf(r->msg, r->msg_len, "record %d (%s): %s", r->rec, r->what ? r->what : "?", body);
    }
    return code;
}

static int need(rd_t *r, size_t n) {
    if (r->err) return 0;
    if (n > r->end - r->pos) {
        fail(r, BS_ERR_TRUNCATED, "needs %zu more bytes at offset %zu but only %zu remain", n, r->pos,
             r->end - r->pos);
        return 0;
    }
    return 1;
}

static uint32_t rd_u32(rd_t *r) {
    if (!need(r, 4)) return 0;
    const uint8_t *b = r->p + r->pos;
    r->pos += 4;
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static int32_t rd_i32(rd_t *r) {
    uint32_t u = rd_u32(r);
    int32_t v;
    memcpy(&v, &u, 4);
    return v;
}

static float rd_f32(rd_t *r) {
    uint32_t u = rd_u32(r);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint64_t rd_u64_at(const uint8_t *b) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | b[i];
    return v;
}

/* checked a * b <= limit */
static int mul_ok(size_t a, size_t b, size_t limit, size_t *out) {
    if (a != 0 && b > limit / a) return 0;
    *out = a * b;
    return 1;
}

static void *xalloc(rd_t *r, size_t n) {
    if (r->err) return NULL;
    void *p = NULL;
    size_t bytes = n ? n : 1;
    bytes = (bytes + 63) / 64 * 64;
    if (posix_memalign(&p, 64, bytes) != 0) p = NULL;
    if (!p) {
        fail(r, BS_ERR_NOMEM, "cannot allocate %zu bytes", n);
        return NULL;
    }
    memset(p, 0, bytes);
    return p;
}

static float *rd_f32_array(rd_t *r, size_t n, int finite, const char *what) {
    size_t bytes;
    if (!mul_ok(n, 4, SIZE_MAX, &bytes) || !need(r, bytes)) return NULL;
    float *a = xalloc(r, n * sizeof(float));
    if (!a) return NULL;
    for (size_t i = 0; i < n; i++) {
        a[i] = rd_f32(r);
        if (finite && !isfinite(a[i])) {
            fail(r, BS_ERR_RANGE, "%s[%zu] is not finite", what, i);
            free(a);
            return NULL;
        }
    }
    return a;
}

static int32_t *rd_i32_array(rd_t *r, size_t n) {
    size_t bytes;
    if (!mul_ok(n, 4, SIZE_MAX, &bytes) || !need(r, bytes)) return NULL;
    int32_t *a = xalloc(r, n * sizeof(int32_t));
    if (!a) return NULL;
    for (size_t i = 0; i < n; i++) a[i] = rd_i32(r);
    return a;
}

static int check_range(rd_t *r, const char *name, int32_t v, int32_t lo, int32_t hi) {
    if (r->err) return 0;
    if (v < lo || v > hi) {
        fail(r, BS_ERR_RANGE, "%s = %d is outside [%d, %d]", name, v, lo, hi);
        return 0;
    }
    return 1;
}

/* channel-like counts */
static int check_dim(rd_t *r, const char *name, int32_t v, int32_t lo) { return check_range(r, name, v, lo, BS_MAX_DIM); }

/* spatial lengths and window geometry */
static int check_len(rd_t *r, const char *name, int32_t v, int32_t lo) { return check_range(r, name, v, lo, BS_MAX_LEN); }

static int shape_ok(rd_t *r, bs_shape s) {
    size_t n;
    if (!mul_ok((size_t)s.h, (size_t)s.w, BS_MAX_ELEMS, &n) || !mul_ok(n, (size_t)s.c, BS_MAX_ELEMS, &n)) {
        fail(r, BS_ERR_RANGE, "output tensor %dx%dx%d has more than %u elements", s.h, s.w, s.c,
             BS_MAX_ELEMS);
        return 0;
    }
    return 1;
}

size_t bs_shape_bytes(bs_shape s) {
    size_t px = (size_t)s.h * (size_t)s.w;
    if (s.dtype == BS_BITS) return px * (size_t)((s.c + 63) / 64) * 8;
    if (s.dtype == BS_I8) return px * (size_t)s.c;
    return px * (size_t)s.c * 4;
}

static const char *dtype_name(int d) { return d == BS_BITS ? "bits" : d == BS_I8 ? "int8" : "floats"; }

/* ---- graph state while parsing ---- */
typedef struct {
    bs_shape *shape; /* current shape of each slot; dtype 0 = undefined */
    size_t *max_bytes;
} graph_t;

static int get_in(rd_t *r, graph_t *g, int n_slots, int32_t slot, bs_shape *s, int dtype, const char *which) {
    if (r->err) return 0;
    if (slot < 0 || slot >= n_slots) {
        fail(r, BS_ERR_GRAPH, "%s slot %d is outside [0, %d)", which, slot, n_slots);
        return 0;
    }
    if (g->shape[slot].dtype == 0) {
        fail(r, BS_ERR_GRAPH, "%s slot %d is read before any op writes it", which, slot);
        return 0;
    }
    if (dtype && g->shape[slot].dtype != dtype) {
        fail(r, BS_ERR_GRAPH, "%s slot %d holds %s, this op needs %s", which, slot, dtype_name(g->shape[slot].dtype),
             dtype_name(dtype));
        return 0;
    }
    *s = g->shape[slot];
    return 1;
}

static int want_dtype(rd_t *r, bs_shape s, int d1, int d2) {
    if (r->err) return 0;
    if (s.dtype != d1 && s.dtype != d2) {
        fail(r, BS_ERR_GRAPH, "the input holds %s, this op needs %s%s%s", dtype_name(s.dtype), dtype_name(d1),
             d2 ? " or " : "", d2 ? dtype_name(d2) : "");
        return 0;
    }
    return 1;
}

static int conv_out(rd_t *r, int32_t in, int32_t k, int32_t s, int32_t p0, int32_t p1, int32_t d,
                    int32_t *out, const char *axis) {
    /* all values are <= BS_MAX_LEN, so int64 cannot overflow */
    int64_t span = (int64_t)d * (k - 1) + 1;
    int64_t padded = (int64_t)in + p0 + p1;
    if (padded < span) {
        fail(r, BS_ERR_GRAPH, "kernel extent %lld does not fit the padded %s size %lld", (long long)span,
             axis, (long long)padded);
        return 0;
    }
    int64_t o = (padded - span) / s + 1;
    if (o < 1 || o > BS_MAX_LEN) {
        fail(r, BS_ERR_RANGE, "output %s size %lld is out of range", axis, (long long)o);
        return 0;
    }
    *out = (int32_t)o;
    return 1;
}

static int geom_ok(rd_t *r, const bs_geom *g) {
    if (!(check_len(r, "kernel height", g->kh, 1) && check_len(r, "kernel width", g->kw, 1) &&
          check_len(r, "stride", g->sh, 1) && check_len(r, "stride", g->sw, 1) &&
          check_len(r, "padding", g->pt, 0) && check_len(r, "padding", g->pl, 0) &&
          check_len(r, "padding", g->pb, 0) && check_len(r, "padding", g->pr, 0) &&
          check_len(r, "dilation", g->dh, 1) && check_len(r, "dilation", g->dw, 1)))
        return 0;
    if ((size_t)g->kh * (size_t)g->kw > BS_MAX_ELEMS) {
        fail(r, BS_ERR_RANGE, "kernel of %d x %d taps", g->kh, g->kw);
        return 0;
    }
    return 1;
}

/* kh kw sh sw pt pl pb pr dh dw */
static int rd_geom2(rd_t *r, bs_geom *g) {
    g->kh = rd_i32(r); g->kw = rd_i32(r); g->sh = rd_i32(r); g->sw = rd_i32(r);
    g->pt = rd_i32(r); g->pl = rd_i32(r); g->pb = rd_i32(r); g->pr = rd_i32(r);
    g->dh = rd_i32(r); g->dw = rd_i32(r);
    return geom_ok(r, g);
}

/* k s p0 p1 d: the 1 x k window of a 1-D op on the h = 1 map */
static int rd_geom1(rd_t *r, bs_geom *g) {
    g->kh = 1; g->sh = 1; g->pt = 0; g->pb = 0; g->dh = 1;
    g->kw = rd_i32(r); g->sw = rd_i32(r); g->pl = rd_i32(r); g->pr = rd_i32(r); g->dw = rd_i32(r);
    return geom_ok(r, g);
}

static const char *op_type_name(int32_t t) {
    if (t == BS_REC_META) return "meta";
    if (t >= 0 && t <= BS_OP_CODE_MAX && BS_OP_NAMES[t]) return BS_OP_NAMES[t];
    return "unknown";
}

static int is_1d(int32_t type) {
    return type == BS_OP_CONV1D || type == BS_OP_BINARY_CONV1D || type == BS_OP_QCONV1D || type == BS_OP_MAXPOOL1D ||
           type == BS_OP_AVGPOOL1D;
}

/* IEEE binary16 -> binary32 (exact) */
static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
    if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else { /* subnormal: normalise */
        int e = -1;
        do { man <<= 1; e++; } while (!(man & 0x400));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3FF) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* n half floats (zero-padded to 4 bytes in the file) -> float32, all finite */
static float *rd_f16_array(rd_t *r, size_t n, const char *what) {
    size_t bytes = (n * 2 + 3) / 4 * 4;
    if (n > SIZE_MAX / 4 || !need(r, bytes)) return NULL;
    float *a = xalloc(r, n * sizeof(float));
    if (!a) return NULL;
    for (size_t i = 0; i < n; i++) {
        const uint8_t *b = r->p + r->pos + 2 * i;
        a[i] = half_to_float((uint16_t)(b[0] | b[1] << 8));
        if (!isfinite(a[i])) {
            fail(r, BS_ERR_RANGE, "%s[%zu] is not finite", what, i);
            free(a);
            return NULL;
        }
    }
    r->pos += bytes;
    return a;
}

static int8_t *rd_i8_array(rd_t *r, size_t n) {
    size_t bytes = (n + 3) / 4 * 4;
    if (n > SIZE_MAX / 4 || !need(r, bytes)) return NULL;
    int8_t *a = xalloc(r, n);
    if (!a) return NULL;
    memcpy(a, r->p + r->pos, n);
    r->pos += bytes;
    return a;
}

/* n packed sign words -> +1/-1 floats of c channels per row of nw = ceil(c / 64) words */
static float *rd_sign_rows(rd_t *r, size_t rows, int32_t c, const char *what) {
    size_t nw = ((size_t)c + 63) / 64, n, bytes;
    if (!mul_ok(rows, nw, SIZE_MAX / 64, &n) || !mul_ok(n, 8, SIZE_MAX, &bytes) || !need(r, bytes)) return NULL;
    if (!mul_ok(rows, (size_t)c, SIZE_MAX / 8, &n)) { fail(r, BS_ERR_RANGE, "%s count overflows", what); return NULL; }
    float *a = xalloc(r, n * sizeof(float));
    if (!a) return NULL;
    uint64_t padmask = (c % 64) ? ~(((uint64_t)1 << (c % 64)) - 1) : 0;
    for (size_t i = 0; i < rows; i++)
        for (size_t j = 0; j < nw; j++) {
            uint64_t v = rd_u64_at(r->p + r->pos);
            r->pos += 8;
            if (j == nw - 1 && (v & padmask)) {
                fail(r, BS_ERR_RANGE, "%s bits set beyond the %d channels of row %zu (padding bits must be 0)", what,
                     c, i);
                free(a);
                return NULL;
            }
            for (size_t b = 0; b < 64 && j * 64 + b < (size_t)c; b++)
                a[i * (size_t)c + j * 64 + b] = (v >> b) & 1 ? -1.0f : 1.0f;
        }
    return a;
}

/* cin, cout and groups of a convolution: groups divide both, and the input has cin channels */
static int rd_channels(rd_t *r, bs_op *op, bs_shape si) {
    op->cin = rd_i32(r);
    op->cout = rd_i32(r);
    op->groups = rd_i32(r);
    if (!check_dim(r, "in channels", op->cin, 1) || !check_dim(r, "out channels", op->cout, 1) ||
        !check_dim(r, "groups", op->groups, 1))
        return 0;
    if (op->cin % op->groups || op->cout % op->groups) {
        fail(r, BS_ERR_RANGE, "groups = %d must divide cin = %d and cout = %d", op->groups, op->cin, op->cout);
        return 0;
    }
    if (si.c != op->cin) {
        fail(r, BS_ERR_GRAPH, "the input has %d channels, the op expects %d", si.c, op->cin);
        return 0;
    }
    return 1;
}

static int conv_shape(rd_t *r, const bs_op *op, bs_shape si, bs_shape *so) {
    if (is_1d(op->type) && si.h != 1) {
        fail(r, BS_ERR_GRAPH, "a 1-D op needs a [1][t][c] input, got height %d", si.h);
        return 0;
    }
    if (!conv_out(r, si.h, op->g.kh, op->g.sh, op->g.pt, op->g.pb, op->g.dh, &so->h, "height") ||
        !conv_out(r, si.w, op->g.kw, op->g.sw, op->g.pl, op->g.pr, op->g.dw, &so->w, "width"))
        return 0;
    so->c = op->cout;
    return 1;
}

/* float-activation conv (conv2d / conv1d): weights as f32, f16 or signs times a scale */
static void parse_float_conv(rd_t *r, bs_op *op, bs_shape si, bs_shape *so) {
    if (!want_dtype(r, si, BS_F32, 0) || !rd_channels(r, op, si)) return;
    if (!(op->type == BS_OP_CONV1D ? rd_geom1(r, &op->g) : rd_geom2(r, &op->g))) return;
    int32_t has_bias = rd_i32(r), wdtype = rd_i32(r);
    if (r->err) return;
    if (has_bias != 0 && has_bias != 1) { fail(r, BS_ERR_RANGE, "has_bias = %d", has_bias); return; }
    if (wdtype < BS_W_F32 || wdtype > BS_W_SIGN) { fail(r, BS_ERR_UNSUPPORTED, "weight dtype %d", wdtype); return; }
    if (!conv_shape(r, op, si, so)) return;
    const size_t G = (size_t)op->groups, cg = (size_t)op->cin / G, cog = (size_t)op->cout / G;
    size_t taps = (size_t)op->g.kh * (size_t)op->g.kw, n;
    if (taps > BS_MAX_ELEMS || !mul_ok(taps, cg, BS_MAX_ELEMS, &n) || !mul_ok(n, (size_t)op->cout, SIZE_MAX / 64, &n)) {
        fail(r, BS_ERR_RANGE, "weight count overflows");
        return;
    }
    float *w = wdtype == BS_W_F32   ? rd_f32_array(r, n, 1, "weight")
               : wdtype == BS_W_F16 ? rd_f16_array(r, n, "weight")
                                    : rd_sign_rows(r, (size_t)op->cout * taps, (int32_t)cg, "weight");
    if (wdtype == BS_W_SIGN) op->wscale = rd_f32_array(r, (size_t)op->cout, 1, "weight_scale");
    if (has_bias) op->bias = rd_f32_array(r, (size_t)op->cout, 1, "bias");
    if (r->err) { free(w); return; }
    /* [cout][kh][kw][cin/g] in the file -> [g][kh][kw][cin/g][cout/g] (depthwise: [kh][kw][c]) */
    op->depthwise = cg == 1 && cog == 1;
    op->wf = xalloc(r, n * sizeof(float));
    if (op->wf)
        for (size_t o = 0; o < (size_t)op->cout; o++) {
            size_t grp = o / cog, oo = o % cog;
            for (size_t t = 0; t < taps; t++)
                for (size_t c = 0; c < cg; c++) {
                    float v = w[(o * taps + t) * cg + c];
                    if (op->depthwise)
                        op->wf[t * G + grp] = v;
                    else
                        op->wf[((grp * taps + t) * cg + c) * cog + oo] = v;
                }
        }
    free(w);
    so->dtype = BS_F32;
}

/* binary conv (binary_conv2d / binary_conv1d) on bits */
static void parse_binary_conv(rd_t *r, bs_op *op, bs_shape si, bs_shape *so) {
    if (!want_dtype(r, si, BS_BITS, 0) || !rd_channels(r, op, si)) return;
    if (!(op->type == BS_OP_BINARY_CONV1D ? rd_geom1(r, &op->g) : rd_geom2(r, &op->g))) return;
    op->mode = rd_i32(r);
    if (r->err || !conv_shape(r, op, si, so)) return;
    if (op->mode < BS_BOUT_DOT || op->mode > BS_BOUT_BITS) {
        fail(r, BS_ERR_UNSUPPORTED, "binary conv output mode %d", op->mode);
        return;
    }
    const int32_t G = op->groups, cg = op->cin / G, cog = op->cout / G;
    const int nwi = (cg + 63) / 64;
    size_t taps = (size_t)op->g.kh * (size_t)op->g.kw, k, n;
    if (taps > BS_MAX_ELEMS) { fail(r, BS_ERR_RANGE, "kernel of %zu taps", taps); return; }
    /* the file stores nwi words per tap; the engine keeps each output channel's taps densely packed
     * (tap t's channels at bits [t * cg, (t + 1) * cg)), padded with zeros to a multiple of 4 words */
    if (!mul_ok(taps, (size_t)nwi, (size_t)1 << 24, &k)) { fail(r, BS_ERR_RANGE, "binary kernel of more than 2^30 bits"); return; }
    size_t kbits = taps * (size_t)cg, kw4 = ((kbits + 63) / 64 + 3) / 4 * 4;
    op->nwi = nwi;
    op->kwords = (int32_t)kw4;
    if (!mul_ok(k, (size_t)op->cout * 8, SIZE_MAX / 2, &n) || !need(r, n)) return;
    if (!mul_ok(kw4, (size_t)op->cout, SIZE_MAX / 16, &n)) { fail(r, BS_ERR_RANGE, "weight count overflows"); return; }
    op->wbits = xalloc(r, n * 8 + 64); /* + slack: vector loads never leave the buffer */
    op->wpop = xalloc(r, taps * (size_t)op->cout * sizeof(int32_t));
    if (r->err) return;
    uint64_t padmask = (cg % 64) ? ~(((uint64_t)1 << (cg % 64)) - 1) : 0;
    for (int32_t o = 0; o < op->cout; o++) {
        uint64_t *dst = op->wbits + (size_t)o * kw4;
        int32_t grp = o / cog, oo = o % cog;
        for (size_t t = 0; t < taps; t++) {
            int32_t pc = 0;
            size_t bit = t * (size_t)cg;
            for (int j = 0; j < nwi; j++, bit += 64) {
                uint64_t v = rd_u64_at(r->p + r->pos);
                r->pos += 8;
                if (j == nwi - 1 && (v & padmask)) {
                    fail(r, BS_ERR_RANGE, "weight bits of output channel %d, tap %zu set beyond the %d "
                         "input channels (padding bits must be 0)", o, t, cg);
                    return;
                }
                dst[bit / 64] |= v << (bit % 64);
                if (bit % 64 && bit / 64 + 1 < kw4) dst[bit / 64 + 1] |= v >> (64 - bit % 64);
                pc += __builtin_popcountll(v);
            }
            op->wpop[((size_t)grp * taps + t) * (size_t)cog + (size_t)oo] = pc;
        }
    }
    if (op->mode == BS_BOUT_FLOAT) {
        op->scale = rd_f32_array(r, (size_t)op->cout, 1, "scale");
        op->bias = rd_f32_array(r, (size_t)op->cout, 1, "bias");
        so->dtype = BS_F32;
    } else if (op->mode == BS_BOUT_BITS) {
        op->thr = rd_i32_array(r, (size_t)op->cout);
        int32_t *fl = rd_i32_array(r, (size_t)op->cout);
        if (r->err) { free(fl); return; }
        op->flip = xalloc(r, (size_t)op->cout);
        op->fsign = xalloc(r, (size_t)op->cout * sizeof(int32_t));
        for (int32_t o = 0; o < op->cout && !r->err; o++) {
            if (fl[o] != 0 && fl[o] != 1) {
                fail(r, BS_ERR_RANGE, "flip[%d] = %d is not 0 or 1", o, fl[o]);
            } else {
                op->flip[o] = (uint8_t)fl[o];
                op->fsign[o] = 1 - 2 * fl[o];
            }
        }
        free(fl);
        so->dtype = BS_BITS;
    } else {
        so->dtype = BS_F32;
    }
}

static int scale_zero_ok(rd_t *r, float scale, int32_t zero, const char *what) {
    if (r->err) return 0;
    if (!isfinite(scale) || !(scale > 0) || zero < -128 || zero > 127) {
        fail(r, BS_ERR_RANGE, "%s scale %g / zero point %d: need a finite scale > 0 and a zero point in [-128, 127]",
             what, (double)scale, zero);
        return 0;
    }
    return 1;
}

/* in_scale in_zero out_mode out_scale out_zero relu; then the per-channel multipliers are
 * in_scale * weight_scale[o] (float32) */
static int rd_qparams(rd_t *r, bs_op *op) {
    op->qscale = rd_f32(r);
    op->qzero = rd_i32(r);
    op->mode = rd_i32(r);
    op->oscale = rd_f32(r);
    op->ozero = rd_i32(r);
    op->aux = rd_i32(r);
    if (!scale_zero_ok(r, op->qscale, op->qzero, "input")) return 0;
    if (op->mode != BS_QOUT_FLOAT && op->mode != BS_QOUT_INT8) { fail(r, BS_ERR_UNSUPPORTED, "int8 output mode %d", op->mode); return 0; }
    if (op->aux != 0 && op->aux != 1) { fail(r, BS_ERR_RANGE, "relu = %d", op->aux); return 0; }
    if (op->mode == BS_QOUT_INT8 && !scale_zero_ok(r, op->oscale, op->ozero, "output")) return 0;
    return 1;
}

static void rd_qweights(rd_t *r, bs_op *op, size_t n, int has_bias) {
    op->wq = rd_i8_array(r, n);
    op->wscale = rd_f32_array(r, (size_t)op->cout, 1, "weight_scale");
    if (has_bias) op->bias = rd_f32_array(r, (size_t)op->cout, 1, "bias");
    for (int32_t o = 0; o < op->cout && !r->err; o++) {
        if (!(op->wscale[o] > 0)) { fail(r, BS_ERR_RANGE, "weight_scale[%d] = %g is not > 0", o, (double)op->wscale[o]); return; }
        op->wscale[o] = op->qscale * op->wscale[o];
    }
}

static void parse_qconv(rd_t *r, bs_op *op, bs_shape si, bs_shape *so) {
    if (!want_dtype(r, si, BS_I8, 0) || !rd_channels(r, op, si)) return;
    if (!(op->type == BS_OP_QCONV1D ? rd_geom1(r, &op->g) : rd_geom2(r, &op->g))) return;
    int32_t has_bias = rd_i32(r);
    if (r->err) return;
    if (has_bias != 0 && has_bias != 1) { fail(r, BS_ERR_RANGE, "has_bias = %d", has_bias); return; }
    if (!rd_qparams(r, op) || !conv_shape(r, op, si, so)) return;
    size_t taps = (size_t)op->g.kh * (size_t)op->g.kw, n;
    if (taps > BS_MAX_ELEMS || !mul_ok(taps, (size_t)(op->cin / op->groups), BS_MAX_ELEMS, &n) ||
        !mul_ok(n, (size_t)op->cout, SIZE_MAX / 64, &n)) {
        fail(r, BS_ERR_RANGE, "weight count overflows");
        return;
    }
    if (taps * (size_t)(op->cin / op->groups) > BS_MAX_QFAN) {
        fail(r, BS_ERR_RANGE, "int8 kernel of %zu inputs per output: more than %d could overflow the int32 sum",
             taps * (size_t)(op->cin / op->groups), BS_MAX_QFAN);
        return;
    }
    rd_qweights(r, op, n, has_bias);
    so->dtype = op->mode == BS_QOUT_INT8 ? BS_I8 : BS_F32;
}

/* pools: 2-D kh kw sh sw ph pw ceil_mode [count_include_pad]; 1-D k s p ceil_mode [count_include_pad] */
static void parse_pool(rd_t *r, bs_op *op, bs_shape si, bs_shape *so) {
    int avg = op->type == BS_OP_AVGPOOL2D || op->type == BS_OP_AVGPOOL1D;
    bs_geom *g = &op->g;
    if (is_1d(op->type)) {
        g->kh = g->sh = 1;
        g->pt = g->pb = 0;
        g->kw = rd_i32(r); g->sw = rd_i32(r);
        g->pl = g->pr = rd_i32(r);
    } else {
        g->kh = rd_i32(r); g->kw = rd_i32(r); g->sh = rd_i32(r); g->sw = rd_i32(r);
        g->pt = g->pb = rd_i32(r);
        g->pl = g->pr = rd_i32(r);
    }
    g->dh = g->dw = 1;
    op->mode = rd_i32(r); /* ceil_mode */
    if (avg) op->aux = rd_i32(r); /* count_include_pad */
    if (!check_len(r, "pool height", g->kh, 1) || !check_len(r, "pool width", g->kw, 1) ||
        !check_len(r, "pool stride", g->sh, 1) || !check_len(r, "pool stride", g->sw, 1) ||
        !check_len(r, "pool padding", g->pt, 0) || !check_len(r, "pool padding", g->pl, 0))
        return;
    if (!want_dtype(r, si, BS_F32, avg ? 0 : BS_BITS)) return;
    if (is_1d(op->type) && si.h != 1) { fail(r, BS_ERR_GRAPH, "a 1-D pool needs a [1][t][c] input, got height %d", si.h); return; }
    if (op->mode != 0 && op->mode != 1) { fail(r, BS_ERR_RANGE, "ceil_mode = %d", op->mode); return; }
    if (avg && op->aux != 0 && op->aux != 1) { fail(r, BS_ERR_RANGE, "count_include_pad = %d", op->aux); return; }
    if (2 * g->pt > g->kh || 2 * g->pl > g->kw) {
        fail(r, BS_ERR_RANGE, "pool padding must be at most half the pool size");
        return;
    }
    /* torch's pooling output size, with ceil_mode's rule that the last window starts inside */
    int32_t dims[2] = {si.h, si.w}, k[2] = {g->kh, g->kw}, s[2] = {g->sh, g->sw}, p[2] = {g->pt, g->pl}, o[2];
    for (int a = 0; a < 2; a++) {
        int64_t num = (int64_t)dims[a] + 2 * p[a] - k[a];
        if (num < 0) { fail(r, BS_ERR_GRAPH, "pool window %d larger than the padded input %d", k[a], dims[a] + 2 * p[a]); return; }
        int64_t out = (op->mode ? (num + s[a] - 1) / s[a] : num / s[a]) + 1;
        if (op->mode && (out - 1) * s[a] >= (int64_t)dims[a] + p[a]) out--;
        o[a] = (int32_t)out;
    }
    *so = (bs_shape){o[0], o[1], si.c, si.dtype};
}

/* linear / qlinear over the hwc-flattened input */
static int rd_dense_dims(rd_t *r, bs_op *op, bs_shape si, size_t *n) {
    op->cin = rd_i32(r);
    op->cout = rd_i32(r);
    if (r->err) return 0;
    size_t nin = (size_t)si.h * si.w * si.c;
    if (op->cin < 1 || (size_t)op->cin != nin) { fail(r, BS_ERR_GRAPH, "dense layer expects %d inputs, the input tensor has %zu", op->cin, nin); return 0; }
    if (!check_dim(r, "dense outputs", op->cout, 1)) return 0;
    if (!mul_ok(nin, (size_t)op->cout, SIZE_MAX / 64, n)) { fail(r, BS_ERR_RANGE, "weight count overflows"); return 0; }
    return 1;
}

static int axis_ok(rd_t *r, int32_t a) {
    if (r->err) return 0;
    if (a < BS_AXIS_H || a > BS_AXIS_C) { fail(r, BS_ERR_RANGE, "axis %d is not 0 (h), 1 (w) or 2 (c)", a); return 0; }
    return 1;
}

static int32_t dim_of(bs_shape s, int a) { return a == BS_AXIS_H ? s.h : a == BS_AXIS_W ? s.w : s.c; }
static void set_dim(bs_shape *s, int a, int32_t v) {
    if (a == BS_AXIS_H) s->h = v;
    else if (a == BS_AXIS_W) s->w = v;
    else s->c = v;
}

/* parse the body of an op record into op; the shapes of its inputs come from g */
static void parse_op(rd_t *r, graph_t *g, bs_model *m, bs_op *op, int32_t type) {
    int ns = m->n_slots;
    op->type = type;
    op->in0 = rd_i32(r);
    op->in1 = rd_i32(r);
    op->out = rd_i32(r);
    uint32_t name_len = rd_u32(r);
    if (r->err) return;
    if (name_len > BS_NAME_MAX) {
        fail(r, BS_ERR_RANGE, "name length %u exceeds %d", name_len, BS_NAME_MAX);
        return;
    }
    size_t padded = ((size_t)name_len + 3) / 4 * 4;
    if (!need(r, padded)) return;
    memcpy(op->name, r->p + r->pos, name_len);
    op->name[name_len] = 0;
    for (size_t i = 0; i < name_len; i++)
        if (op->name[i] < 32 || op->name[i] > 126) op->name[i] = '?';
    r->pos += padded;
    if (op->name[0]) r->what = op->name;

    if (type != BS_OP_INPUT && !get_in(r, g, ns, op->in0, &op->s0, 0, "input")) return;
    if (op->out < 0 || op->out >= ns) {
        fail(r, BS_ERR_GRAPH, "output slot %d is outside [0, %d)", op->out, ns);
        return;
    }
    if (type != BS_OP_OUTPUT && (op->out == op->in0 || op->out == op->in1)) {
        fail(r, BS_ERR_GRAPH, "output slot %d is also an input slot", op->out);
        return;
    }
    bs_shape so = {0, 0, 0, BS_F32};
    const bs_shape si = op->s0;
    size_t n;

    switch (type) {
    case BS_OP_INPUT: {
        int32_t rank = rd_i32(r), c = rd_i32(r), h = rd_i32(r), w = rd_i32(r);
        if (r->err) return;
        if (rank != 1 && rank != 2) { fail(r, BS_ERR_RANGE, "input rank %d is not 1 or 2", rank); return; }
        if (!check_dim(r, "input channels", c, 1) || !check_len(r, "input height", h, 1) ||
            !check_len(r, "input width", w, 1))
            return;
        if (rank == 1 && h != 1) { fail(r, BS_ERR_RANGE, "a rank-1 input needs height 1, got %d", h); return; }
        if (m->input_slot >= 0) { fail(r, BS_ERR_GRAPH, "a second input record"); return; }
        m->in_rank = rank; m->in_c = c; m->in_h = h; m->in_w = w;
        m->input_slot = op->out;
        so = (bs_shape){h, w, c, BS_F32};
        break;
    }
    case BS_OP_FEATURE_NORM:
        op->mode = rd_i32(r);
        op->has_floor = rd_i32(r);
        op->floor_off = rd_f32(r);
        op->eps = rd_f32(r);
        if (!want_dtype(r, si, BS_F32, 0)) return;
        if (op->mode < BS_NORM_NONE || op->mode > BS_NORM_EXAMPLE) { fail(r, BS_ERR_UNSUPPORTED, "norm mode %d", op->mode); return; }
        if ((op->has_floor != 0 && op->has_floor != 1) || !isfinite(op->floor_off) || !isfinite(op->eps) ||
            op->eps < 0) {
            fail(r, BS_ERR_RANGE, "bad floor/eps parameters");
            return;
        }
        so = si;
        break;
    case BS_OP_AFFINE: {
        int32_t c = rd_i32(r);
        if (!want_dtype(r, si, BS_F32, 0)) return;
        if (c != si.c) { fail(r, BS_ERR_GRAPH, "affine over %d channels, input has %d", c, si.c); return; }
        op->cin = op->cout = c;
        op->scale = rd_f32_array(r, (size_t)c, 1, "scale");
        op->bias = rd_f32_array(r, (size_t)c, 1, "bias");
        so = si;
        break;
    }
    case BS_OP_ACTIVATION: {
        op->mode = rd_i32(r);
        int32_t c = rd_i32(r);
        if (r->err) return;
        if (op->mode < BS_ACT_RELU || op->mode > BS_ACT_SIGMOID) {
            fail(r, BS_ERR_UNSUPPORTED, "activation kind %d", op->mode);
            return;
        }
        if (!want_dtype(r, si, BS_F32, 0)) return;
        if (c != si.c) { fail(r, BS_ERR_GRAPH, "activation over %d channels, input has %d", c, si.c); return; }
        if (op->mode == BS_ACT_PRELU) op->scale = rd_f32_array(r, (size_t)c, 1, "slope");
        so = si;
        break;
    }
    case BS_OP_CONV2D:
    case BS_OP_CONV1D:
        parse_float_conv(r, op, si, &so);
        break;
    case BS_OP_BINARY_CONV2D:
    case BS_OP_BINARY_CONV1D:
        parse_binary_conv(r, op, si, &so);
        break;
    case BS_OP_QCONV2D:
    case BS_OP_QCONV1D:
        parse_qconv(r, op, si, &so);
        break;
    case BS_OP_PACK: {
        int32_t c = rd_i32(r);
        if (!want_dtype(r, si, BS_F32, 0)) return;
        if (c != si.c) { fail(r, BS_ERR_GRAPH, "pack of %d channels, input has %d", c, si.c); return; }
        so = si;
        so.dtype = BS_BITS;
        break;
    }
    case BS_OP_MAXPOOL2D:
    case BS_OP_MAXPOOL1D:
    case BS_OP_AVGPOOL2D:
    case BS_OP_AVGPOOL1D:
        parse_pool(r, op, si, &so);
        break;
    case BS_OP_GLOBAL_AVG_POOL:
        if (!want_dtype(r, si, BS_F32, 0)) return;
        so = (bs_shape){1, 1, si.c, BS_F32};
        break;
    case BS_OP_LINEAR: {
        if (!want_dtype(r, si, BS_F32, 0) || !rd_dense_dims(r, op, si, &n)) return;
        int32_t has_bias = rd_i32(r), wdtype = rd_i32(r);
        if (r->err) return;
        if (has_bias != 0 && has_bias != 1) { fail(r, BS_ERR_RANGE, "has_bias = %d", has_bias); return; }
        if (wdtype == BS_W_F32)
            op->wf = rd_f32_array(r, n, 1, "weight");
        else if (wdtype == BS_W_F16)
            op->wf = rd_f16_array(r, n, "weight");
        else if (wdtype == BS_W_SIGN) {
            op->wf = rd_sign_rows(r, (size_t)op->cout, op->cin, "weight");
            op->wscale = rd_f32_array(r, (size_t)op->cout, 1, "weight_scale");
        } else {
            fail(r, BS_ERR_UNSUPPORTED, "weight dtype %d", wdtype);
            return;
        }
        if (has_bias) op->bias = rd_f32_array(r, (size_t)op->cout, 1, "bias");
        so = (bs_shape){1, 1, op->cout, BS_F32};
        break;
    }
    case BS_OP_QLINEAR: {
        if (!want_dtype(r, si, BS_I8, 0) || !rd_dense_dims(r, op, si, &n)) return;
        op->groups = 1;
        int32_t has_bias = rd_i32(r);
        if (r->err) return;
        if (has_bias != 0 && has_bias != 1) { fail(r, BS_ERR_RANGE, "has_bias = %d", has_bias); return; }
        if (!rd_qparams(r, op)) return;
        if (op->cin > BS_MAX_QFAN) {
            fail(r, BS_ERR_RANGE, "int8 dense layer of %d inputs: more than %d could overflow the int32 sum", op->cin,
                 BS_MAX_QFAN);
            return;
        }
        rd_qweights(r, op, n, has_bias);
        so = (bs_shape){1, 1, op->cout, op->mode == BS_QOUT_INT8 ? BS_I8 : BS_F32};
        break;
    }
    case BS_OP_ADD: {
        op->mode = rd_i32(r);
        if (r->err) return;
        if (!get_in(r, g, ns, op->in1, &op->s1, BS_F32, "shortcut") || !want_dtype(r, si, BS_F32, 0)) return;
        bs_shape sb = op->s1;
        if (op->mode == BS_ADD_SAME) {
            if (sb.c != si.c || (sb.h != 1 && sb.h != si.h) || (sb.w != 1 && sb.w != si.w)) {
                fail(r, BS_ERR_GRAPH, "cannot add a %dx%dx%d tensor to %dx%dx%d (h and w may broadcast from 1)", sb.h,
                     sb.w, sb.c, si.h, si.w, si.c);
                return;
            }
        } else if (op->mode == BS_ADD_PAD || op->mode == BS_ADD_GROUP_MEAN) {
            if (sb.h != si.h || sb.w != si.w) { fail(r, BS_ERR_GRAPH, "add of %dx%d and %dx%d maps", si.h, si.w, sb.h, sb.w); return; }
            if ((op->mode == BS_ADD_PAD && sb.c > si.c) || (op->mode == BS_ADD_GROUP_MEAN && sb.c % si.c != 0)) {
                fail(r, BS_ERR_GRAPH, "shortcut mode %d cannot map %d channels onto %d", op->mode, sb.c, si.c);
                return;
            }
        } else {
            fail(r, BS_ERR_UNSUPPORTED, "add mode %d", op->mode);
            return;
        }
        so = si;
        break;
    }
    case BS_OP_CONCAT: {
        op->aux = rd_i32(r);
        if (!axis_ok(r, op->aux)) return;
        if (!get_in(r, g, ns, op->in1, &op->s1, BS_F32, "second input") || !want_dtype(r, si, BS_F32, 0)) return;
        for (int a = 0; a < 3; a++)
            if (a != op->aux && dim_of(si, a) != dim_of(op->s1, a)) {
                fail(r, BS_ERR_GRAPH, "concat of %dx%dx%d and %dx%dx%d along axis %d", si.h, si.w, si.c, op->s1.h,
                     op->s1.w, op->s1.c, op->aux);
                return;
            }
        so = si;
        int64_t total = (int64_t)dim_of(si, op->aux) + dim_of(op->s1, op->aux);
        int32_t limit = op->aux == BS_AXIS_C ? BS_MAX_DIM : BS_MAX_LEN;
        if (total > limit) { fail(r, BS_ERR_RANGE, "concatenated size %lld exceeds %d", (long long)total, limit); return; }
        set_dim(&so, op->aux, (int32_t)total);
        break;
    }
    case BS_OP_SLICE: {
        op->aux = rd_i32(r);
        op->start = rd_i32(r);
        op->stop = rd_i32(r);
        if (!axis_ok(r, op->aux) || !want_dtype(r, si, BS_F32, 0)) return;
        int32_t len_a = dim_of(si, op->aux);
        if (op->start < 0 || op->start >= op->stop || op->stop > len_a) {
            fail(r, BS_ERR_RANGE, "slice %d:%d of an axis of %d", op->start, op->stop, len_a);
            return;
        }
        so = si;
        set_dim(&so, op->aux, op->stop - op->start);
        break;
    }
    case BS_OP_FREQ_AFFINE: {
        int32_t h = rd_i32(r), c = rd_i32(r);
        if (!want_dtype(r, si, BS_F32, 0)) return;
        if (h != si.h || c != si.c) { fail(r, BS_ERR_GRAPH, "freq_affine over %dx%d, input %dx%d", h, c, si.h, si.c); return; }
        n = (size_t)h * (size_t)c;
        op->scale = rd_f32_array(r, n, 1, "scale");
        op->bias = rd_f32_array(r, n, 1, "bias");
        so = si;
        break;
    }
    case BS_OP_NORMALIZE:
        op->mode = rd_i32(r);
        op->eps = rd_f32(r);
        if (!want_dtype(r, si, BS_F32, 0)) return;
        if (op->mode < 1 || op->mode > 7) { fail(r, BS_ERR_RANGE, "axes mask %d must be 1..7", op->mode); return; }
        if (!isfinite(op->eps) || op->eps < 0) { fail(r, BS_ERR_RANGE, "eps %g", (double)op->eps); return; }
        so = si;
        break;
    case BS_OP_PERMUTE: {
        int seen = 0;
        for (int a = 0; a < 3; a++) {
            op->perm[a] = rd_i32(r);
            if (!r->err && (op->perm[a] < 0 || op->perm[a] > 2 || (seen & (1 << op->perm[a])))) {
                fail(r, BS_ERR_RANGE, "(%d, %d, %d) is not a permutation of the axes", op->perm[0], op->perm[1], op->perm[2]);
                return;
            }
            if (!r->err) seen |= 1 << op->perm[a];
        }
        if (!want_dtype(r, si, BS_F32, 0)) return;
        so = (bs_shape){dim_of(si, op->perm[0]), dim_of(si, op->perm[1]), dim_of(si, op->perm[2]), BS_F32};
        break;
    }
    case BS_OP_QUANTIZE:
    case BS_OP_DEQUANTIZE:
        op->qscale = rd_f32(r);
        op->qzero = rd_i32(r);
        if (!scale_zero_ok(r, op->qscale, op->qzero, op_type_name(type))) return;
        if (!want_dtype(r, si, type == BS_OP_QUANTIZE ? BS_F32 : BS_I8, 0)) return;
        so = si;
        so.dtype = type == BS_OP_QUANTIZE ? BS_I8 : BS_F32;
        break;
    case BS_OP_OUTPUT:
        if (!want_dtype(r, si, BS_F32, 0)) return;
        if (op->out != op->in0) { fail(r, BS_ERR_GRAPH, "output record must name the same slot twice"); return; }
        m->output_slot = op->in0;
        m->n_out = si.h * si.w * si.c;
        so = si;
        break;
    default:
        fail(r, BS_ERR_UNSUPPORTED, "unknown record type %d", type);
        return;
    }
    if (r->err) return;
    if (!shape_ok(r, so)) return;
    op->so = so;
    g->shape[op->out] = so;
    size_t b = bs_shape_bytes(so);
    if (b > g->max_bytes[op->out]) g->max_bytes[op->out] = b;
}

void bs_bitserial_free(bs_bitserial *b) {
    if (!b) return;
    free(b->start);
    free(b->idx);
    free(b->sel);
    free(b->n1);
    free(b);
}

/* word j of the positions a pair lists: kind 0 both channels, 1 channel a only, 2 channel b only
 * (wb NULL: a lone channel, all in kind 0); la/lb are the listed polarities, bits >= kbits off */
static uint64_t listed_word(const uint64_t *wa, const uint64_t *wb, int sa, int sb, size_t j, size_t kbits,
                           int kind) {
    uint64_t valid = (j + 1) * 64 <= kbits ? ~0ull : j * 64 >= kbits ? 0 : (1ull << (kbits % 64)) - 1;
    uint64_t la = (sa ? wa[j] : ~wa[j]) & valid;
    if (!wb) return kind == 0 ? la : 0;
    uint64_t lb = (sb ? wb[j] : ~wb[j]) & valid;
    return kind == 0 ? la & lb : kind == 1 ? la & ~lb : ~la & lb;
}

/* the bit-serial plan of a binary conv (see bs_bitserial in bsnn.h); BS_OK, BS_ERR_NOMEM, or
 * BS_ERR_RANGE for kernels whose rows' offsets leave uint16 (BS_ROW_OFFSET: over 16128 bits) or
 * plans beyond BS_MAX_PLAN_ENTRIES.
 * Channels go in pairs (a, b): each lists its w = 1 or its w = 0 positions, the pair of choices
 * that lists the fewest positions in all, and the positions both list are stored once. The
 * positions are stored chunk by chunk (equal chunks of at most BS_CHUNK_WORDS words of the
 * kernel), every pair's three segments within a chunk. */
int bs_bitserial_build(bs_op *op) {
    size_t taps = (size_t)op->g.kh * op->g.kw, kbits = taps * (size_t)op->cin;
    if (BS_ROW_OFFSET((size_t)op->kwords * 64) > 65535) return BS_ERR_RANGE; /* the zero row's offset */
    bs_bitserial *b = calloc(1, sizeof *b);
    if (!b) return BS_ERR_NOMEM;
    op->bser = b;
    const int32_t cout = op->cout, npairs = (cout + 1) / 2;
    /* chunks of equal size, none over BS_CHUNK_WORDS words */
    const size_t kw = (size_t)op->kwords, nchunks = (kw + BS_CHUNK_WORDS - 1) / BS_CHUNK_WORDS;
    const size_t chunk_words = (kw + nchunks - 1) / nchunks;
    b->nchunks = (int32_t)nchunks;
    b->start = malloc(sizeof(uint32_t) * (3 * (size_t)npairs * nchunks + 1));
    b->sel = malloc((size_t)cout);
    b->n1 = malloc(sizeof(int32_t) * (size_t)cout);
    if (!b->start || !b->sel || !b->n1) return BS_ERR_NOMEM;
    for (int32_t o = 0; o < cout; o++) {
        size_t n1 = 0;
        for (size_t j = 0; j < kw; j++) n1 += (size_t)__builtin_popcountll(op->wbits[o * kw + j]);
        b->n1[o] = (int32_t)n1;
    }
    /* polarities: the choice that lists the fewest positions; most: the largest count a channel sums */
    size_t total = 0, most = 0;
    for (int32_t q = 0; q < npairs; q++) {
        const int32_t oa = 2 * q, ob = oa + 1;
        const uint64_t *wa = op->wbits + (size_t)oa * kw, *wb = ob < cout ? wa + kw : NULL;
        size_t best = (size_t)-1, pair_most = 0;
        for (int sa = 0; sa < 2; sa++)
            for (int sb = 0; sb < (wb ? 2 : 1); sb++) {
                size_t seg[3] = {0, 0, 0};
                for (size_t j = 0; j < kw; j++)
                    for (int kind = 0; kind < 3; kind++)
                        seg[kind] += (size_t)__builtin_popcountll(listed_word(wa, wb, sa, sb, j, kbits, kind));
                if (seg[0] + seg[1] + seg[2] < best) {
                    best = seg[0] + seg[1] + seg[2];
                    b->sel[oa] = (uint8_t)sa;
                    if (wb) b->sel[ob] = (uint8_t)sb;
                    pair_most = seg[0] + (seg[1] > seg[2] ? seg[1] : seg[2]);
                }
            }
        total += best;
        if (pair_most > most) most = pair_most;
    }
    total += (size_t)BS_PAD_ROWS * 3 * (size_t)npairs * nchunks; /* room for the padding */
    if (total > BS_MAX_PLAN_ENTRIES) return BS_ERR_RANGE; /* too big to be worth it */
    b->idx = malloc(sizeof(uint16_t) * total);
    if (!b->idx) return BS_ERR_NOMEM;
    total = 0;
    for (size_t c = 0; c < nchunks; c++) {
        const size_t j_end = (c + 1) * chunk_words < kw ? (c + 1) * chunk_words : kw;
        for (int32_t q = 0; q < npairs; q++) {
            const int32_t oa = 2 * q, ob = oa + 1;
            const uint64_t *wa = op->wbits + (size_t)oa * kw, *wb = ob < cout ? wa + kw : NULL;
            const int sa = b->sel[oa], sb = wb ? b->sel[ob] : 0;
            for (int kind = 0; kind < 3; kind++) {
                const size_t first = total;
                b->start[(c * (size_t)npairs + (size_t)q) * 3 + (size_t)kind] = (uint32_t)total;
                for (size_t j = c * chunk_words; j < j_end; j++)
                    for (uint64_t word = listed_word(wa, wb, sa, sb, j, kbits, kind); word; word &= word - 1)
                        b->idx[total++] = (uint16_t)(BS_ROW_OFFSET(j * 64 + (size_t)__builtin_ctzll(word)));
                /* a tail of 4 or more rows is padded with the zero row to a whole step of 16 */
                const size_t tail = (total - first) % (BS_PAD_ROWS + 1);
                if (tail >= 4)
                    for (size_t r = tail; r <= BS_PAD_ROWS; r++) b->idx[total++] = (uint16_t)BS_ROW_OFFSET(kw * 64);
            }
        }
    }
    b->start[3 * (size_t)npairs * nchunks] = (uint32_t)total;
    int bits = 1;
    while (((size_t)1 << bits) <= most) bits++;
    b->nplanes = bits < 5 ? 5 : bits;
    return BS_OK;
}

static void free_op(bs_op *op) {
    bs_bitserial_free(op->bser);
    bs_slice_free(op->slc);
    free(op->wf);
    free(op->wscale);
    free(op->wq);
    free(op->bias);
    free(op->scale);
    free(op->wbits);
    free(op->thr);
    free(op->flip);
    free(op->fsign);
    free(op->wpop);
}

void bs_model_free(bs_model *m) {
    if (!m) return;
    if (m->ops)
        for (int i = 0; i < m->n_ops; i++) free_op(&m->ops[i]);
    free(m->ops);
    free(m->slot_off);
    free(m->slot_bytes);
    free(m->meta);
    free(m);
}

static size_t align64(size_t x) { return (x + 63) / 64 * 64; }

int bs_model_load(const uint8_t *data, size_t len, bs_model **out, char *msg, size_t msg_len) {
    rd_t r = {data, 0, len, 0, msg, msg_len, -1, NULL};
    graph_t g = {NULL, NULL};
    bs_model *m = NULL;
    if (msg && msg_len) msg[0] = 0;
    if (!out) return BS_ERR_ARG;
    *out = NULL;
    if (!data && len) return fail(&r, BS_ERR_ARG, "no data");

    /* header */
    if (len < BSNN_MAGIC_LEN || memcmp(data, BSNN_MAGIC, BSNN_MAGIC_LEN) != 0)
        return fail(&r, BS_ERR_MAGIC, "not a bsnn model file (bad magic bytes); export one with "
                                      "`bitsound export`");
    if (len < BSNN_HEADER_BYTES + 4)
        return fail(&r, BS_ERR_TRUNCATED, "file of %zu bytes is shorter than the %d-byte header and checksum",
                    len, BSNN_HEADER_BYTES);
    r.pos = BSNN_MAGIC_LEN;
    uint32_t ver = rd_u32(&r);
    uint16_t major = (uint16_t)(ver & 0xFFFF), minor = (uint16_t)(ver >> 16);
    uint32_t flags = rd_u32(&r), hbytes = rd_u32(&r), n_records = rd_u32(&r), n_slots = rd_u32(&r),
             reserved = rd_u32(&r);
    uint64_t fbytes = rd_u64_at(data + 32);
    r.pos = BSNN_HEADER_BYTES;
    if (major != BSNN_VERSION_MAJOR)
        return fail(&r, BS_ERR_VERSION, "format version %u.%u, this engine reads %d.x; re-export the model "
                    "with this bitsound", major, minor, BSNN_VERSION_MAJOR);
    if (fbytes != len)
        return fail(&r, fbytes > len ? BS_ERR_TRUNCATED : BS_ERR_RANGE,
                    "the header says %llu bytes but the file has %zu", (unsigned long long)fbytes, len);
    uint32_t stored = (uint32_t)data[len - 4] | (uint32_t)data[len - 3] << 8 | (uint32_t)data[len - 2] << 16 |
                      (uint32_t)data[len - 1] << 24;
    uint32_t crc = bs_crc32(data, len - 4);
    if (crc != stored)
        return fail(&r, BS_ERR_CRC, "checksum mismatch (stored %08x, computed %08x): the file is corrupt", stored,
                    crc);
    if (flags != 0) return fail(&r, BS_ERR_UNSUPPORTED, "unknown header flags 0x%x", flags);
    if (hbytes != BSNN_HEADER_BYTES || reserved != 0)
        return fail(&r, BS_ERR_RANGE, "header size %u / reserved %u, expected %d / 0", hbytes, reserved,
                    BSNN_HEADER_BYTES);
    if (n_records < 2 || n_records > BS_MAX_RECORDS)
        return fail(&r, BS_ERR_RANGE, "record count %u outside [2, %d]", n_records, BS_MAX_RECORDS);
    if (n_slots < 1 || n_slots > BS_MAX_SLOTS)
        return fail(&r, BS_ERR_RANGE, "slot count %u outside [1, %d]", n_slots, BS_MAX_SLOTS);
    /* each record has at least an 8-byte header: bounds n_records by the file size before allocating */
    if ((uint64_t)n_records * 8 > len - BSNN_HEADER_BYTES - 4)
        return fail(&r, BS_ERR_TRUNCATED, "%u records cannot fit in %zu bytes", n_records, len);
    if ((uint64_t)n_slots > (uint64_t)n_records * 2 + 16)
        return fail(&r, BS_ERR_RANGE, "slot count %u is more than the %u records can use", n_slots, n_records);

    m = calloc(1, sizeof *m);
    if (!m) return fail(&r, BS_ERR_NOMEM, "cannot allocate the model");
    m->version_major = major;
    m->version_minor = minor;
    m->n_slots = (int)n_slots;
    m->input_slot = m->output_slot = -1;
    m->ops = calloc(n_records, sizeof(bs_op));
    g.shape = calloc(n_slots, sizeof(bs_shape));
    g.max_bytes = calloc(n_slots, sizeof(size_t));
    if (!m->ops || !g.shape || !g.max_bytes) {
        fail(&r, BS_ERR_NOMEM, "cannot allocate %u records", n_records);
        goto done;
    }
    size_t body_end = len - 4;
    for (uint32_t i = 0; i < n_records && !r.err; i++) {
        r.rec = (int)i;
        r.what = NULL;
        r.end = body_end;
        size_t start = r.pos;
        uint32_t type = rd_u32(&r), rbytes = rd_u32(&r);
        if (r.err) break;
        r.what = op_type_name((int32_t)type);
        if (rbytes < 8 || rbytes % 4 || rbytes > body_end - start) {
            fail(&r, rbytes > body_end - start ? BS_ERR_TRUNCATED : BS_ERR_RANGE,
                 "record size %u at offset %zu is invalid (file body ends at %zu)", rbytes, start, body_end);
            break;
        }
        r.end = start + rbytes;
        if (m->output_slot >= 0) { fail(&r, BS_ERR_GRAPH, "record after the output record"); break; }
        if (type == BS_REC_META) {
            uint32_t mlen = rd_u32(&r);
            if (r.err) break;
            if (mlen > r.end - r.pos) { fail(&r, BS_ERR_TRUNCATED, "metadata of %u bytes overruns its record", mlen); break; }
            if (m->meta) { fail(&r, BS_ERR_GRAPH, "a second metadata record"); break; }
            m->meta = malloc((size_t)mlen + 1);
            if (!m->meta) { fail(&r, BS_ERR_NOMEM, "metadata"); break; }
            memcpy(m->meta, data + r.pos, mlen);
            m->meta[mlen] = 0;
            m->meta_len = mlen;
            r.pos += ((size_t)mlen + 3) / 4 * 4;
        } else {
            if (m->input_slot < 0 && type != BS_OP_INPUT) { fail(&r, BS_ERR_GRAPH, "the first op must be the input"); break; }
            bs_op *op = &m->ops[m->n_ops++];
            parse_op(&r, &g, m, op, (int32_t)type);
        }
        if (!r.err && r.pos != r.end)
            fail(&r, BS_ERR_RANGE, "record declares %u bytes but its fields use %zu", rbytes, r.pos - start);
        r.pos = r.end;
    }
    r.end = body_end;
    r.rec = -1;
    if (!r.err && r.pos != body_end)
        fail(&r, BS_ERR_RANGE, "%zu unread bytes after the last record", body_end - r.pos);
    if (!r.err && m->output_slot < 0) fail(&r, BS_ERR_GRAPH, "no output record");
    if (r.err) goto done;

    /* arena: one region per slot (its largest use) + scratch for the binary convolutions */
    m->slot_off = calloc(n_slots, sizeof(size_t));
    m->slot_bytes = calloc(n_slots, sizeof(size_t));
    if (!m->slot_off || !m->slot_bytes) { fail(&r, BS_ERR_NOMEM, "slots"); goto done; }
    size_t off = 0;
    for (uint32_t s = 0; s < n_slots; s++) {
        m->slot_off[s] = off;
        m->slot_bytes[s] = g.max_bytes[s];
        off += align64(g.max_bytes[s] + 64);
        if (off > BS_MAX_ARENA) { fail(&r, BS_ERR_RANGE, "the model needs more than %zu bytes of activations", (size_t)BS_MAX_ARENA); goto done; }
    }
    m->scratch_off = off;
    /* the binary convs' forms for the fastest kernels here (a binding re-chooses for its own), and
     * the scratch of the forms chosen: an optional form that would not fit gives way */
    int kst;
    if (bs_model_set_forms(m, bs_kernels_get("auto", &kst), -1) != BS_OK) { fail(&r, BS_ERR_RANGE, "the model needs more than %zu bytes of working memory", (size_t)BS_MAX_ARENA); goto done; }

done:
    free(g.shape);
    free(g.max_bytes);
    if (r.err) {
        bs_model_free(m);
        return r.err;
    }
    *out = m;
    return BS_OK;
}
