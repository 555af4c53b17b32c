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

/* taps [k0, k1) of a window starting at i0 (stride 1) that fall inside [0, n) */
static void valid_range(int64_t i0, int32_t k, int32_t d, int32_t n, int32_t *k0, int32_t *k1) {
    int32_t a = 0, b = k;
    while (a < k && i0 + (int64_t)a * d < 0) a++;
    while (b > a && i0 + (int64_t)(b - 1) * d >= n) b--;
    *k0 = a;
    *k1 = b;
}

#define BS_SLICE_MAX_CLASSES 64 /* more border classes (huge kernels on tiny maps): no slice form */

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
    /* the distinct valid-tap ranges of the rows and of the columns: a class is one of each */
    int32_t *vy = malloc(sizeof(int32_t) * (size_t)so.h), *vx = malloc(sizeof(int32_t) * (size_t)so.w);
    int32_t rng_y[2 * BS_SLICE_MAX_CLASSES], rng_x[2 * BS_SLICE_MAX_CLASSES], ny = 0, nx = 0;
    if (!vy || !vx) {
        free(vy);
        free(vx);
        return BS_ERR_NOMEM;
    }
    int ok = 1;
    for (int32_t oy = 0; ok && oy < so.h; oy++) {
        int32_t a, b, j = 0;
        valid_range((int64_t)oy - g->pt, g->kh, g->dh, si.h, &a, &b);
        while (j < ny && (rng_y[2 * j] != a || rng_y[2 * j + 1] != b)) j++;
        if (j == ny && (ok = ny < BS_SLICE_MAX_CLASSES)) rng_y[2 * ny] = a, rng_y[2 * ny + 1] = b, ny++;
        vy[oy] = j;
    }
    for (int32_t ox = 0; ok && ox < so.w; ox++) {
        int32_t a, b, j = 0;
        valid_range((int64_t)ox - g->pl, g->kw, g->dw, si.w, &a, &b);
        while (j < nx && (rng_x[2 * j] != a || rng_x[2 * j + 1] != b)) j++;
        if (j == nx && (ok = nx < BS_SLICE_MAX_CLASSES)) rng_x[2 * nx] = a, rng_x[2 * nx + 1] = b, nx++;
        vx[ox] = j;
    }
    if (!ok || (int64_t)ny * nx > BS_SLICE_MAX_CLASSES) {
        free(vy);
        free(vx);
        return BS_ERR_UNSUPPORTED;
    }
    bs_slice *s = calloc(1, sizeof *s);
    if (!s) {
        free(vy);
        free(vx);
        return BS_ERR_NOMEM;
    }
    op->slc = s;
    s->S = S;
    s->shift = malloc(sizeof(int32_t) * (size_t)taps);
    if (!s->shift) goto nomem;
    int64_t lo = 0, hi = 0;
    for (int32_t ky = 0; ky < g->kh; ky++)
        for (int32_t kx = 0; kx < g->kw; kx++) {
            int64_t sh = ((int64_t)ky * g->dh - g->pt) * S + (int64_t)kx * g->dw - g->pl;
            s->shift[ky * g->kw + kx] = (int32_t)sh;
            if (sh < lo) lo = sh;
            if (sh > hi) hi = sh;
        }
    s->margin = (int32_t)((-lo + 63) / 64 * 64);
    /* reads: up to the end of the last block of the widest kernel, plus the funnel's next word;
     * writes: whole vectors of 64-pixel groups */
    const int64_t blk = 64 * BS_SLICE_MAX_VW, qend = ((int64_t)so.h * S + blk - 1) / blk * blk;
    const int64_t groups = ((int64_t)si.h * si.w + 63) / 64;
    int64_t nwp = (s->margin + qend + hi + 63) / 64 + 2;
    if (s->margin / 64 + groups + BS_SLICE_MAX_VW > nwp) nwp = s->margin / 64 + groups + BS_SLICE_MAX_VW;
    s->nwp = (int32_t)((nwp + 7) / 8 * 8);
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
    const int64_t nq = (int64_t)so.h * S;
    s->nmw = (int32_t)(qend / 64);
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
    if (!s->colmask || !s->clsmask || !s->kc || !s->inv) goto nomem;
    for (int64_t q = 0; q < nq; q++) {
        const int32_t oy = (int32_t)(q / S), ox = (int32_t)(q % S);
        for (int32_t kx = 0; kx < g->kw; kx++) {
            int64_t ix = (int64_t)ox - g->pl + (int64_t)kx * g->dw;
            if (ix >= 0 && ix < si.w) s->colmask[(size_t)kx * s->nmw + (size_t)(q / 64)] |= 1ull << (q % 64);
        }
        if (ox >= so.w) continue; /* not an output */
        int32_t j = vy[oy] * nx + vx[ox];
        if (j == interior) continue;
        int32_t cls = interior >= 0 && j > interior ? j - 1 : j; /* border classes 0 .. nclass - 1 */
        s->clsmask[(size_t)cls * s->nmw + (size_t)(q / 64)] |= 1ull << (q % 64);
    }
    /* the rule's constant per class and channel: with the taps of the class inside the input,
     * nvalid = valid taps x cin and n1 counts the weight's ones there (slice.c's header) */
    for (int32_t o = 0; o < cout; o++) {
        const int64_t phi = op->flip[o] ? -1 : 1, sigma = b->sel[o] ? 1 : -1;
        s->inv[o] = phi * sigma < 0;
        for (int32_t j = -1; j < ny * nx; j++) {
            if (j >= 0 && j == interior) continue;
            int32_t jy, jx, cls;
            if (j < 0) { /* class 0 of kc: the interior (its constant also serves when it is absent) */
                jy = -1, jx = -1, cls = 0;
            } else {
                jy = j / nx, jx = j % nx, cls = 1 + (interior >= 0 && j > interior ? j - 1 : j);
            }
            int64_t n1v = 0, nvt = 0;
            for (int32_t ky = 0; ky < g->kh; ky++)
                for (int32_t kx = 0; kx < g->kw; kx++) {
                    if (j >= 0 && (ky < rng_y[2 * jy] || ky >= rng_y[2 * jy + 1] || kx < rng_x[2 * jx] ||
                                   kx >= rng_x[2 * jx + 1]))
                        continue;
                    n1v += op->wpop[((size_t)ky * g->kw + kx) * cout + o];
                    nvt++;
                }
            const int64_t Q = (int64_t)op->thr[o] - phi * (nvt * op->cin - 2 * n1v);
            int64_t t = s->inv[o] ? floor2(-Q) + 1 : ceil2(Q);
            if (t < -(int64_t)K) t = -(int64_t)K;
            if (t > (int64_t)K + 1) t = (int64_t)K + 1;
            s->kc[(size_t)cls * cout + o] = (int32_t)(1 - t);
        }
    }
    free(vy);
    free(vx);
    return BS_OK;
nomem:
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

int bs_choose_form(const bs_op *op, const bs_kernels *k, int forced) {
    const int can_slice = op->slc && k->bitslice && !k->reference;
    const int can_serial = op->bser && k->bitserial && !k->reference;
    if (forced == BS_FORM_SLICE && can_slice) return BS_FORM_SLICE;
    if (forced == BS_FORM_SERIAL && can_serial) return BS_FORM_SERIAL;
    if (forced == BS_FORM_WORD) return BS_FORM_WORD;
    const double npix = (double)op->so.h * op->so.w, K = (double)op->g.kh * op->g.kw * op->cin;
    if (can_slice) {
        /* the slice kernel's blocks are whole vectors of positions: few positions waste most of
         * them, which the word-parallel kernel (per pixel) does not */
        const double bw = 64.0 * k->slice_words;
        const double blocks = (double)(((int64_t)op->so.h * op->slc->S + (int64_t)bw - 1) / (int64_t)bw);
        const double slice = blocks * (k->slice_cost[0] + k->slice_cost[1] * K);
        const double word = npix * (k->word_cost[0] + k->word_cost[1] * op->kwords);
        if (slice <= word) return BS_FORM_SLICE;
    }
    if (can_serial && k->prefer_serial && npix >= BS_BITSERIAL_MIN_PIXELS && K >= BS_BITSERIAL_MIN_BITS)
        return BS_FORM_SERIAL;
    return BS_FORM_WORD;
}

int bs_model_set_forms(bs_model *m, const bs_kernels *k, int forced) {
    int changed = 0;
    for (int i = 0; i < m->n_ops; i++) {
        bs_op *op = &m->ops[i];
        if (op->type != BS_OP_BINARY_CONV2D && op->type != BS_OP_BINARY_CONV1D) continue;
        int f = op->groups == 1 ? bs_choose_form(op, k, forced) : BS_FORM_WORD;
        changed += f != op->form;
        op->form = f;
    }
    return changed;
}
