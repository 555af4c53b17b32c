/* slice.c: the fused bit-sliced form of a binary convolution (bs_slice in bsnn.h): its geometry,
 * built at load next to the bit-serial plan it runs on, its memory, and the choice of a form for
 * each binary conv from its shapes and the kernel table in use.
 *
 * The threshold rule in the slice kernels. With C the count of the input's ones over the
 * positions the plan lists for a channel (its w = 1 positions when sel = 1, else its w = 0 ones),
 * X the count over all K positions (a tap outside the input reads 0) and, over the taps inside
 * the input, nvalid positions and n1v ones of the weight row, popcount(x xor w) is
 * n1v + X - 2 C (sel = 1) or n1v - X + 2 C (sel = 0), so that
 * dot = nvalid - 2 n1v + 2 sigma R with R = 2 C - X and sigma = +1 (sel = 1) or -1. The channel's
 * output is +1 iff (flip ? -dot : dot) >= thr; with phi = -1 for flip, +1 otherwise, this is
 * 2 phi sigma R >= Q := thr - phi (nvalid - 2 n1v): R >= ceil(Q / 2) when phi sigma = +1 (inv = 0:
 * -1 out where R < t), and R <= floor(-Q / 2) otherwise (inv = 1: -1 out where R >= t, t the
 * floor plus one). R lies in [-K, K], so R - t (t clamped to [-K, K + 1]) lies in [-2K - 1, 2K]
 * and P planes with 2^(P-1) >= 2K + 1 hold it in two's complement. Only nvalid and n1v depend on
 * where the output is: they are the same for all outputs of a border class (the same taps
 * outside the input), so each class has its own constant kc = 1 - t per channel.
 */
#include <stdlib.h>
#include <string.h>

#include "bsnn.h"

static size_t a64(size_t x) { return (x + 63) / 64 * 64; }

/* zeroed, 64-byte aligned (the kernels load the masks with aligned vector loads) */
static void *zalloc64(size_t n) {
    void *p = NULL;
    if (posix_memalign(&p, 64, n ? n : 64) != 0) return NULL;
    memset(p, 0, n);
    return p;
}

void bs_slice_free(bs_slice *s) {
    if (!s) return;
    free(s->shift);
    free(s->all);
    free(s->all_start);
    free(s->colmask);
    free(s->clsmask);
    free(s->kc);
    free(s->inv);
    free(s);
}

static int32_t nbits(int64_t v) { /* the smallest b with 2^b > v */
    int32_t b = 0;
    while (((int64_t)1 << b) <= v) b++;
    return b;
}

static int32_t seg_stride(const bs_op *op) { return op->bser->nplanes + 1 > 6 ? op->bser->nplanes + 1 : 6; }

/* Bounds of the slice form, which a hostile file could otherwise turn into absurd memory, load
 * time or int32 overflow (the form is optional: the op then runs in another one). Positions are
 * oy * S + ox over every output row and the whole input width. */
#define BS_SLICE_MAX_CLASSES 64                    /* border classes (huge kernels on tiny maps) */
#define BS_SLICE_MAX_POSITIONS ((int64_t)1 << 26)  /* ho * S: as many as one activation tensor */
#define BS_SLICE_MAX_MASK_WORDS ((int64_t)1 << 23) /* colmask + clsmask: 64 MB */
#define BS_SLICE_MAX_ROW_RUNS ((int64_t)1 << 24)   /* kw * ho bit runs to set in the column masks */

/* taps [k0, k1) of a window starting at i0 (stride 1, dilation d) that fall inside [0, n), in O(1):
 * a loop over the taps would make a hostile kernel of 2^24 taps cost 2^24 steps per row */
static void valid_range(int64_t i0, int32_t k, int32_t d, int32_t n, int32_t *k0, int32_t *k1) {
    int64_t a = i0 >= 0 ? 0 : (-i0 + d - 1) / d;                /* first t with i0 + t d >= 0 */
    int64_t b = n - 1 - i0 >= 0 ? (n - 1 - i0) / d + 1 : 0;      /* past the last t with i0 + t d < n */
    if (a > k) a = k;
    if (b > k) b = k;
    if (b < a) b = a;
    *k0 = (int32_t)a;
    *k1 = (int32_t)b;
}

/* the distinct valid-tap ranges [a, b) of positions 0 .. n - 1 along one axis (window start
 * i - pad) into rng (at most BS_SLICE_MAX_CLASSES), each position's range index into v; 0 when
 * there are more. The ranges only move one way as i grows, so a new one is looked up only where
 * the range changes: O(n) in all. */
static int axis_classes(int32_t n, int32_t pad, int32_t k, int32_t d, int32_t len, int32_t *rng, int32_t *v,
                        int32_t *count) {
    int32_t nr = 0, cur = -1;
    for (int32_t i = 0; i < n; i++) {
        int32_t a, b;
        valid_range((int64_t)i - pad, k, d, len, &a, &b);
        if (cur < 0 || rng[2 * cur] != a || rng[2 * cur + 1] != b) {
            cur = 0;
            while (cur < nr && (rng[2 * cur] != a || rng[2 * cur + 1] != b)) cur++;
            if (cur == nr) {
                if (nr == BS_SLICE_MAX_CLASSES) return 0;
                rng[2 * nr] = a, rng[2 * nr + 1] = b, nr++;
            }
        }
        v[i] = cur;
    }
    *count = nr;
    return 1;
}

/* set bits [from, to) of the mask m */
static void set_bit_range(uint64_t *m, int64_t from, int64_t to) {
    while (from < to) {
        const int64_t w = from / 64, end = (w + 1) * 64 < to ? (w + 1) * 64 : to;
        const int b0 = (int)(from % 64), nb = (int)(end - from);
        m[w] |= (nb == 64 ? ~0ull : ((1ull << nb) - 1)) << b0;
        from = end;
    }
}

static int64_t ceil2(int64_t a) { return a >= 0 ? (a + 1) / 2 : -((-a) / 2); }
static int64_t floor2(int64_t a) { return a >= 0 ? a / 2 : -((-a + 1) / 2); }

int bs_slice_eligible(const bs_op *op) {
    const int binary = op->type == BS_OP_BINARY_CONV2D || op->type == BS_OP_BINARY_CONV1D;
    return binary && op->groups == 1 && op->mode == BS_BOUT_BITS && op->g.sh == 1 && op->g.sw == 1 &&
           op->so.w <= op->s0.w;
}

int bs_slice_build(bs_op *op) {
    const bs_geom *g = &op->g;
    const bs_shape si = op->s0, so = op->so;
    if (!bs_slice_eligible(op) || !op->bser) return BS_ERR_UNSUPPORTED;
    const int32_t taps = g->kh * g->kw, K = taps * op->cin, S = si.w, cout = op->cout;
    /* the geometry in int64 first: refuse what leaves the bounds before allocating anything */
    const int64_t nq = (int64_t)so.h * S;
    if (nq > BS_SLICE_MAX_POSITIONS || (int64_t)g->kw * so.h > BS_SLICE_MAX_ROW_RUNS) return BS_ERR_UNSUPPORTED;
    const int64_t blk = 64 * BS_SLICE_MAX_VW, qend = (nq + blk - 1) / blk * blk, nmw = qend / 64;
    int64_t lo = 0, hi = 0; /* |(ky dh - pt) S| <= 3 2^24 * 2^24: no int64 overflow (validated shapes) */
    for (int32_t ky = 0; ky < g->kh; ky += g->kh - 1 > 0 ? g->kh - 1 : 1)
        for (int32_t kx = 0; kx < g->kw; kx += g->kw - 1 > 0 ? g->kw - 1 : 1) { /* the extremes: corners */
            const int64_t sh = ((int64_t)ky * g->dh - g->pt) * S + (int64_t)kx * g->dw - g->pl;
            if (sh < lo) lo = sh;
            if (sh > hi) hi = sh;
        }
    const int64_t margin = (-lo + 63) / 64 * 64, groups = ((int64_t)si.h * si.w + 63) / 64;
    int64_t nwp = (margin + qend + hi + 63) / 64 + 2;
    if (margin / 64 + groups + BS_SLICE_MAX_VW > nwp) nwp = margin / 64 + groups + BS_SLICE_MAX_VW;
    nwp = (nwp + 7) / 8 * 8;
    if (nwp * 64 > INT32_MAX) return BS_ERR_UNSUPPORTED; /* plane bit positions and shifts stay int32 */
    /* the distinct valid-tap ranges of the rows and of the columns: a class is one of each */
    int32_t *vy = malloc(sizeof(int32_t) * (size_t)so.h), *vx = malloc(sizeof(int32_t) * (size_t)so.w);
    int32_t rng_y[2 * BS_SLICE_MAX_CLASSES], rng_x[2 * BS_SLICE_MAX_CLASSES], ny = 0, nx = 0;
    if (!vy || !vx) {
        free(vy);
        free(vx);
        return BS_ERR_NOMEM;
    }
    if (!axis_classes(so.h, g->pt, g->kh, g->dh, si.h, rng_y, vy, &ny) ||
        !axis_classes(so.w, g->pl, g->kw, g->dw, si.w, rng_x, vx, &nx) || (int64_t)ny * nx > BS_SLICE_MAX_CLASSES ||
        ((int64_t)g->kw + ny * nx) * nmw > BS_SLICE_MAX_MASK_WORDS) {
        free(vy);
        free(vx);
        return BS_ERR_UNSUPPORTED;
    }
    int64_t *pre = NULL; /* per channel: 2-D prefix sums of the taps' weight popcounts */
    bs_slice *s = calloc(1, sizeof *s);
    if (!s) {
        free(vy);
        free(vx);
        return BS_ERR_NOMEM;
    }
    op->slc = s;
    s->S = S;
    s->margin = (int32_t)margin;
    s->nwp = (int32_t)nwp;
    s->nmw = (int32_t)nmw;
    s->shift = malloc(sizeof(int32_t) * (size_t)taps);
    if (!s->shift) goto nomem;
    for (int32_t ky = 0; ky < g->kh; ky++)
        for (int32_t kx = 0; kx < g->kw; kx++)
            s->shift[ky * g->kw + kx] = (int32_t)(((int64_t)ky * g->dh - g->pt) * S + (int64_t)kx * g->dw - g->pl);
    s->LX = nbits(K) > 6 ? nbits(K) : 6;
    int32_t P = nbits(2 * (int64_t)K) + 1; /* 2^(P-1) > 2K */
    if (P < op->bser->nplanes + 2) P = op->bser->nplanes + 2;
    if (P < s->LX) P = s->LX;
    s->P = P;
    /* every row of each chunk, as the plan's segments: a tail of 4 or more padded to 16 rows */
    const bs_bitserial *b = op->bser;
    const size_t kw = (size_t)op->kwords, nchunks = (size_t)b->nchunks, cw = (kw + nchunks - 1) / nchunks;
    s->all_start = malloc(sizeof(uint32_t) * (nchunks + 1));
    s->all = malloc(sizeof(uint16_t) * ((size_t)K + nchunks * (BS_PAD_ROWS + 1)));
    if (!s->all_start || !s->all) goto nomem;
    size_t n = 0;
    for (size_t c = 0; c < nchunks; c++) {
        s->all_start[c] = (uint32_t)n;
        size_t r1 = (c + 1) * cw * 64 < (size_t)K ? (c + 1) * cw * 64 : (size_t)K, first = n;
        for (size_t r = c * cw * 64; r < r1; r++) s->all[n++] = (uint16_t)BS_ROW_OFFSET(r);
        const size_t tail = (n - first) % (BS_PAD_ROWS + 1);
        if (tail >= 4)
            for (size_t r = tail; r <= BS_PAD_ROWS; r++) s->all[n++] = (uint16_t)BS_ROW_OFFSET(kw * 64);
    }
    s->all_start[nchunks] = (uint32_t)n;
    /* position masks: the columns each tap column reads inside the row, the border classes */
    int32_t interior = -1; /* the class with every tap inside, if any */
    for (int32_t j = 0; j < ny * nx; j++)
        if (rng_y[2 * (j / nx)] == 0 && rng_y[2 * (j / nx) + 1] == g->kh && rng_x[2 * (j % nx)] == 0 &&
            rng_x[2 * (j % nx) + 1] == g->kw)
            interior = j;
    s->nclass = ny * nx - (interior >= 0);
    s->colmask = zalloc64((size_t)g->kw * s->nmw * 8);
    s->clsmask = zalloc64((size_t)(s->nclass > 0 ? s->nclass : 1) * s->nmw * 8);
    s->kc = malloc(sizeof(int32_t) * (size_t)(s->nclass + 1) * (size_t)cout);
    s->inv = malloc((size_t)cout);
    pre = malloc(sizeof(int64_t) * (size_t)(g->kh + 1) * (size_t)(g->kw + 1));
    if (!s->colmask || !s->clsmask || !s->kc || !s->inv || !pre) goto nomem;
    for (int32_t kx = 0; kx < g->kw; kx++) { /* columns ox with 0 <= ox - pl + kx dw < S, on every row */
        int64_t x0 = (int64_t)g->pl - (int64_t)kx * g->dw, x1 = x0 + S;
        if (x0 < 0) x0 = 0;
        if (x1 > S) x1 = S;
        for (int64_t oy = 0; x0 < x1 && oy < so.h; oy++)
            set_bit_range(s->colmask + (size_t)kx * s->nmw, oy * S + x0, oy * S + x1);
    }
    for (int32_t oy = 0; oy < so.h; oy++) /* the output columns' border classes, run by run */
        for (int32_t ox = 0; ox < so.w;) {
            int32_t end = ox + 1;
            while (end < so.w && vx[end] == vx[ox]) end++;
            const int32_t j = vy[oy] * nx + vx[ox];
            if (j != interior) {
                const int32_t cls = interior >= 0 && j > interior ? j - 1 : j; /* 0 .. nclass - 1 */
                set_bit_range(s->clsmask + (size_t)cls * s->nmw, (int64_t)oy * S + ox, (int64_t)oy * S + end);
            }
            ox = end;
        }
    /* the rule's constant per class and channel: with the taps of the class inside the input,
     * nvalid = valid taps x cin and n1 counts the weight's ones there (slice.c's header) */
    const int32_t W1 = g->kw + 1;
    for (int32_t o = 0; o < cout; o++) {
        for (int32_t ky = 0; ky <= g->kh; ky++)
            for (int32_t kx = 0; kx <= g->kw; kx++)
                pre[ky * W1 + kx] = ky == 0 || kx == 0 ? 0
                                                       : pre[(ky - 1) * W1 + kx] + pre[ky * W1 + kx - 1] -
                                                             pre[(ky - 1) * W1 + kx - 1] +
                                                             op->wpop[((size_t)(ky - 1) * g->kw + kx - 1) * cout + o];
        const int64_t phi = op->flip[o] ? -1 : 1, sigma = b->sel[o] ? 1 : -1;
        s->inv[o] = phi * sigma < 0;
        for (int32_t j = -1; j < ny * nx; j++) {
            if (j >= 0 && j == interior) continue;
            /* class 0 of kc: the interior (its constant also serves when it is absent) */
            const int32_t y0 = j < 0 ? 0 : rng_y[2 * (j / nx)], y1 = j < 0 ? g->kh : rng_y[2 * (j / nx) + 1];
            const int32_t x0 = j < 0 ? 0 : rng_x[2 * (j % nx)], x1 = j < 0 ? g->kw : rng_x[2 * (j % nx) + 1];
            const int32_t cls = j < 0 ? 0 : 1 + (interior >= 0 && j > interior ? j - 1 : j);
            const int64_t n1v = pre[y1 * W1 + x1] - pre[y0 * W1 + x1] - pre[y1 * W1 + x0] + pre[y0 * W1 + x0];
            const int64_t nvt = (int64_t)(y1 - y0) * (x1 - x0);
            const int64_t Q = (int64_t)op->thr[o] - phi * (nvt * op->cin - 2 * n1v);
            int64_t t = s->inv[o] ? floor2(-Q) + 1 : ceil2(Q);
            if (t < -(int64_t)K) t = -(int64_t)K;
            if (t > (int64_t)K + 1) t = (int64_t)K + 1;
            s->kc[(size_t)cls * cout + o] = (int32_t)(1 - t);
        }
    }
    free(pre);
    free(vy);
    free(vx);
    return BS_OK;
nomem:
    free(pre);
    free(vy);
    free(vx);
    return BS_ERR_NOMEM;
}

size_t bs_slice_planes_bytes(const bs_op *op) {
    return op->slc ? a64((size_t)op->cin * op->slc->nwp * 8) : 0;
}

/* the layout of bitslice_body.h for the widest vector (BS_SLICE_MAX_VW words) */
size_t bs_slice_work_bytes(const bs_op *op) {
    if (!op->slc) return 0;
    const size_t v = 8 * BS_SLICE_MAX_VW, npairs = ((size_t)op->cout + 1) / 2, nwo = ((size_t)op->cout + 63) / 64;
    return a64(((size_t)op->kwords * 64 + 1) * v) + a64(3 * npairs * (size_t)seg_stride(op) * v) +
           a64(((size_t)op->slc->LX + 1) * v) + 3 * a64((size_t)op->slc->P * v) + a64(nwo * 64 * v) +
           a64(((size_t)op->slc->nclass + 1) * 4);
}

/* whether op may have a bit-serial plan: its rows' offsets fit the plan's uint16 entries, and it
 * is large enough to gain (or the slice form, which runs on the plan, may apply) */
static int serial_possible(const bs_op *op) {
    const size_t kbits = (size_t)op->g.kh * op->g.kw * op->cin, npix = (size_t)op->so.h * op->so.w;
    return BS_ROW_OFFSET((size_t)op->kwords * 64) <= 65535 &&
           ((kbits >= BS_BITSERIAL_MIN_BITS && npix >= BS_BITSERIAL_MIN_PIXELS) || bs_slice_eligible(op));
}

#define BS_FAILED_PLAN (1u << 3) /* with the form bits 1 << BS_FORM_*: the plan could not be built */

/* the form of op for kernel table k among those not in `failed` (a bit per form whose structures
 * could not be built or did not fit): forced where allowed, else from the measured costs */
static int choose_form(const bs_op *op, const bs_kernels *k, int forced, unsigned failed) {
    const int plan = !(failed & BS_FAILED_PLAN) && !k->reference && serial_possible(op);
    const int can_serial = plan && !(failed & 1u << BS_FORM_SERIAL) && k->bitserial;
    const int can_slice = plan && !(failed & 1u << BS_FORM_SLICE) && k->bitslice && bs_slice_eligible(op);
    if (forced == BS_FORM_SLICE && can_slice) return BS_FORM_SLICE;
    if (forced == BS_FORM_SERIAL && can_serial) return BS_FORM_SERIAL;
    if (forced == BS_FORM_WORD) return BS_FORM_WORD;
    const double npix = (double)op->so.h * op->so.w, K = (double)op->g.kh * op->g.kw * op->cin;
    if (can_slice) {
        /* the slice kernel's blocks are whole vectors of positions: few positions waste most of
         * them, which the word-parallel kernel (per pixel) does not */
        const double bw = 64.0 * k->slice_words;
        const double blocks = (double)(((int64_t)op->so.h * op->s0.w + (int64_t)bw - 1) / (int64_t)bw);
        const double slice = blocks * (k->slice_cost[0] + k->slice_cost[1] * K);
        const double word = npix * (k->word_cost[0] + k->word_cost[1] * op->kwords);
        if (slice <= word) return BS_FORM_SLICE;
    }
    if (can_serial && k->prefer_serial && npix >= BS_BITSERIAL_MIN_PIXELS && K >= BS_BITSERIAL_MIN_BITS)
        return BS_FORM_SERIAL;
    return BS_FORM_WORD;
}

static void drop_slice(bs_op *op) {
    bs_slice_free(op->slc);
    op->slc = NULL;
}

static void drop_serial(bs_op *op) {
    drop_slice(op); /* the slice form runs on the plan */
    bs_bitserial_free(op->bser);
    op->bser = NULL;
}

/* Set op's form for k and hold exactly the structures it needs (the plan for serial, the plan
 * and the slice tables for slice; nothing for word), so that a form that is not chosen costs no
 * memory, load time or arena. A form whose structures cannot be built, or whose scratch exceeds
 * `budget` bytes, gives way to the next choice; the word form always stands. */
static void set_op_form(bs_op *op, const bs_kernels *k, int forced, size_t budget) {
    unsigned failed = 0;
    for (;;) {
        const int f = choose_form(op, k, forced, failed);
        op->form = f;
        if (f == BS_FORM_WORD) {
            drop_serial(op);
            return;
        }
        if (f == BS_FORM_SERIAL) drop_slice(op);
        int ok = op->bser || bs_bitserial_build(op) == BS_OK;
        if (!ok) {
            drop_serial(op); /* a partly built plan */
            failed |= BS_FAILED_PLAN;
            continue;
        }
        if (f == BS_FORM_SLICE && !op->slc && bs_slice_build(op) != BS_OK) {
            drop_slice(op);
            failed |= 1u << BS_FORM_SLICE;
            continue;
        }
        if (bs_op_scratch_bytes(op) <= budget) return;
        if (f == BS_FORM_SLICE) drop_slice(op);
        else drop_serial(op);
        failed |= 1u << f;
    }
}

int bs_model_set_forms(bs_model *m, const bs_kernels *k, int forced) {
    /* an optional form may use what the activations leave of BS_MAX_ARENA */
    const size_t budget = m->scratch_off < BS_MAX_ARENA ? (BS_MAX_ARENA - m->scratch_off) / 64 * 64 : 0;
    size_t scratch = 0;
    for (int i = 0; i < m->n_ops; i++) {
        bs_op *op = &m->ops[i];
        if (op->type == BS_OP_BINARY_CONV2D || op->type == BS_OP_BINARY_CONV1D) {
            if (op->groups == 1) {
                set_op_form(op, k, forced, budget);
            } else { /* run group by group on the word-parallel kernels */
                drop_serial(op);
                op->form = BS_FORM_WORD;
            }
        }
        const size_t need = bs_op_scratch_bytes(op);
        if (need > scratch) scratch = need;
    }
    m->scratch_bytes = scratch;
    m->arena_bytes = m->scratch_off + a64(scratch);
    return m->arena_bytes > BS_MAX_ARENA ? BS_ERR_RANGE : BS_OK;
}
