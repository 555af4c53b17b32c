/* bitslice_body.h: the fused bit-sliced binary convolution (bs_slice in bsnn.h), included once per
 * vector width. The includer defines
 *   BSV, VW                 the vector type and its 64-bit words (a block is 64 VW output positions)
 *   BSL_ATTR                the functions' attributes (target instruction set)
 *   BSL(name)               an instance-specific name for a static function
 *   BSL_PLANES, BSL_BLOCK   the names of the two exported functions
 *   V_LOAD(p) V_LOADU(p) V_STORE(p, v) V_STOREU(p, v)  (p: uint64_t pointers; V_LOAD/V_STORE aligned)
 *   V_ZERO() V_ONES() V_SET1(u) V_XOR(a, b) V_AND(a, b) V_OR(a, b) V_NOT(a)
 *   V_XOR3(a, b, c) V_MAJ(a, b, c)   sum and carry of a full adder (CSA may be defined instead)
 *   V_ORAND(a, b, m)                 (a | b) & m
 *   V_SELECT(m, a, b)                m ? a : b, bit by bit
 *   V_SRLV(v, n) V_SLLV(v, n)        every word shifted by n in [0, 64] (64 gives 0)
 *   V_SRLI(v, s) V_SLLI(v, s)        every word shifted by s in [1, 63]
 *   V_NONZERO(v)
 *
 * One block: (1) the kernel rows of the block are built chunk by chunk from the planes, two
 * unaligned loads and a funnel shift per row; (2) a Harley-Seal carry-save tree (Mula, Kurz, Lemire
 * 2018) counts, per position, the input's ones X over all rows and, per pair of channels, the
 * rows each of its three segments lists (bs_bitserial), into bit-sliced counters; (3) per channel
 * the threshold rule, rewritten in R = 2 C - X (C the channel's count, see slice.c), becomes the
 * sign of R - t, computed as one carry chain over the P planes of 2 C_shared - X - 1 (once per
 * pair), the constant 1 - t and 2 C_own (three vector operations a plane); (4) 64 x 64 bit
 * transposes turn the channels' position bits into the output words of the interior positions.
 * The cost per block and channel is about 3K/8 full adders (a pair lists about 3K/4 rows) plus
 * 3P operations, against K/64 words x 256 pixels of the word-parallel kernel. */

#ifndef CSA
#define CSA(h, l, a, b, c)                                                                        \
    do {                                                                                          \
        BSV a_ = (a), b_ = (b), c_ = (c);                                                         \
        h = V_MAJ(a_, b_, c_);                                                                    \
        l = V_XOR3(a_, b_, c_);                                                                   \
    } while (0)
#define BSL_OWN_CSA 1
#endif

static size_t BSL(a64)(size_t x) { return (x + 63) / 64 * 64; }

/* 64 x 64 bit transpose in every word lane: bit j of a[i] <-> bit i of a[j] (Hacker's Delight 7-3) */
BSL_ATTR static void BSL(transpose)(BSV *a) {
    uint64_t mm = 0x00000000FFFFFFFFull;
    for (int s = 32; s; s >>= 1, mm ^= mm << s) {
        const BSV m = V_SET1(mm);
        for (int k = 0; k < 64; k = ((k | s) + 1) & ~s) {
            BSV t = V_AND(V_XOR(V_SRLI(a[k], s), a[k | s]), m);
            a[k | s] = V_XOR(a[k | s], t);
            a[k] = V_XOR(a[k], V_SLLI(t, s));
        }
    }
}

/* Add the m rows listed in idx (row offsets, BS_ROW_OFFSET) to the bit-sliced counter st: planes
 * of weight 1 .. 32 in st[0..5] (kept in registers meanwhile), 64 and up in st[6..L-1] (rippled
 * in memory once per 64 rows); fresh: the counter starts at 0. Carries beyond plane L - 1 cannot
 * occur: the plan sizes L for the largest count. */
BSL_ATTR static void BSL(add_rows)(BSV *st, int L, int fresh, const char *xt, const uint16_t *idx, int m) {
    BSV ones, twos, fours, eights, sixteens, thirtytwos;
    BSV sixteensA, sixteensB, thirtytwosA, thirtytwosB;
#ifndef BSL_TREE16
    BSV twosA, twosB, foursA, foursB, eightsA, eightsB;
#endif
    BSV carry, t;
    const uint16_t *ip = idx;
    int i = 0;
    if (fresh) {
        ones = twos = fours = eights = sixteens = thirtytwos = V_ZERO();
        for (int l = 6; l < L; l++) st[l] = V_ZERO();
    } else {
        ones = st[0], twos = st[1], fours = st[2], eights = st[3], sixteens = st[4], thirtytwos = st[5];
    }
#define LD(k) V_LOAD((const uint64_t *)(xt + BS_ROW_BYTES(ip[k], 8 * VW)))
/* the running counter goes into CSA last: a ^ b does not wait for it */
#define HS4(out, k)                                                                               \
    do {                                                                                          \
        CSA(twosA, ones, LD(k + 0), LD(k + 1), ones);                                             \
        CSA(twosB, ones, LD(k + 2), LD(k + 3), ones);                                             \
        CSA(out, twos, twosA, twosB, twos);                                                       \
    } while (0)
#define HS8(out, k)                                                                               \
    do {                                                                                          \
        HS4(foursA, k);                                                                           \
        HS4(foursB, k + 4);                                                                       \
        CSA(out, fours, foursA, foursB, fours);                                                   \
    } while (0)
#ifdef BSL_TREE16
/* 16 rows as a Wallace tree: each running counter enters one full adder per 16 rows, so no
 * counter's update waits on the previous row's (the serial chain of HS8 pairs) */
#define HS16(out, k)                                                                              \
    do {                                                                                          \
        BSV s0_, s1_, s2_, s3_, s4_, s5_, s6_, c0_, c1_, c2_, c3_, c4_, c5_, c6_, c7_;             \
        BSV d0_, d1_, d2_, e0_, e1_, e2_, e3_, f0_, g0_, g1_;                                     \
        CSA(c0_, s0_, LD(k + 0), LD(k + 1), LD(k + 2));                                           \
        CSA(c1_, s1_, LD(k + 3), LD(k + 4), LD(k + 5));                                           \
        CSA(c2_, s2_, LD(k + 6), LD(k + 7), LD(k + 8));                                           \
        CSA(c3_, s3_, LD(k + 9), LD(k + 10), LD(k + 11));                                         \
        CSA(c4_, s4_, LD(k + 12), LD(k + 13), LD(k + 14));                                        \
        CSA(c5_, s5_, s0_, s1_, s2_);                                                             \
        CSA(c6_, s6_, s3_, s4_, LD(k + 15));                                                      \
        CSA(c7_, ones, s5_, s6_, ones);                                                           \
        CSA(e0_, d0_, c0_, c1_, c2_);                                                             \
        CSA(e1_, d1_, c3_, c4_, c5_);                                                             \
        CSA(e2_, d2_, c6_, c7_, twos);                                                            \
        CSA(e3_, twos, d0_, d1_, d2_);                                                            \
        CSA(g0_, f0_, e0_, e1_, e2_);                                                             \
        CSA(g1_, fours, e3_, f0_, fours);                                                         \
        CSA(out, eights, g0_, g1_, eights);                                                       \
    } while (0)
#else
#define HS16(out, k)                                                                              \
    do {                                                                                          \
        HS8(eightsA, k);                                                                          \
        HS8(eightsB, k + 8);                                                                      \
        CSA(out, eights, eightsA, eightsB, eights);                                               \
    } while (0)
#endif
#define RIPPLE64()                                                                                \
    for (int l = 6; l < L; l++) {                                                                \
        BSV h_ = st[l];                                                                           \
        st[l] = V_XOR(h_, carry);                                                                 \
        carry = V_AND(h_, carry);                                                                 \
    }
#define RIPPLE32()                                                                                \
    do {                                                                                          \
        t = V_AND(thirtytwos, carry);                                                             \
        thirtytwos = V_XOR(thirtytwos, carry);                                                    \
        carry = t;                                                                                \
        RIPPLE64();                                                                               \
    } while (0)
    for (; i + 64 <= m; i += 64) {
        ip = idx + i;
        HS16(sixteensA, 0);
        HS16(sixteensB, 16);
        CSA(thirtytwosA, sixteens, sixteensA, sixteensB, sixteens);
        HS16(sixteensA, 32);
        HS16(sixteensB, 48);
        CSA(thirtytwosB, sixteens, sixteensA, sixteensB, sixteens);
        CSA(carry, thirtytwos, thirtytwosA, thirtytwosB, thirtytwos);
        RIPPLE64();
    }
    if (i + 32 <= m) {
        ip = idx + i;
        HS16(sixteensA, 0);
        HS16(sixteensB, 16);
        CSA(carry, sixteens, sixteensA, sixteensB, sixteens);
        RIPPLE32();
        i += 32;
    }
    if (i + 16 <= m) {
        ip = idx + i;
        HS16(sixteensA, 0);
        carry = V_AND(sixteens, sixteensA);
        sixteens = V_XOR(sixteens, sixteensA);
        RIPPLE32();
        i += 16;
    }
    for (; i < m; i++) {
        ip = idx + i;
        carry = LD(0);
        t = V_AND(ones, carry); ones = V_XOR(ones, carry); carry = t;
        t = V_AND(twos, carry); twos = V_XOR(twos, carry); carry = t;
        t = V_AND(fours, carry); fours = V_XOR(fours, carry); carry = t;
        t = V_AND(eights, carry); eights = V_XOR(eights, carry); carry = t;
        t = V_AND(sixteens, carry); sixteens = V_XOR(sixteens, carry); carry = t;
        if (V_NONZERO(carry)) RIPPLE32();
    }
#undef LD
#undef HS4
#undef HS8
#undef HS16
#undef RIPPLE32
#undef RIPPLE64
    st[0] = ones, st[1] = twos, st[2] = fours, st[3] = eights, st[4] = sixteens, st[5] = thirtytwos;
}

/* the planes of the input map x [h][w][nwi] (bs_slice): 64 pixels x 64 channels per transpose, VW
 * groups of 64 consecutive pixels (raster order, row stride S = w) in the lanes of a vector */
BSL_ATTR void BSL_PLANES(const bs_op *op, const uint64_t *x, uint64_t *planes) {
    const bs_slice *sl = op->slc;
    const int32_t cin = op->cin, nwi = (cin + 63) / 64, nwp = sl->nwp;
    const size_t npix = (size_t)op->s0.h * op->s0.w, ngroups = (npix + 63) / 64, m0 = (size_t)sl->margin / 64;
    BSV a[64];
    uint64_t tmp[VW];
    memset(planes, 0, (size_t)cin * nwp * 8);
    for (size_t g0 = 0; g0 < ngroups; g0 += VW)
        for (int32_t cw = 0; cw < nwi; cw++) {
            for (int i = 0; i < 64; i++) {
                for (int w = 0; w < VW; w++) {
                    size_t p = (g0 + (size_t)w) * 64 + (size_t)i;
                    tmp[w] = p < npix ? x[p * (size_t)nwi + (size_t)cw] : 0;
                }
                a[i] = V_LOADU(tmp);
            }
            BSL(transpose)(a);
            const int nc = cin - 64 * cw < 64 ? cin - 64 * cw : 64;
            for (int c = 0; c < nc; c++) V_STOREU(planes + (size_t)(64 * cw + c) * nwp + m0 + g0, a[c]);
        }
}

BSL_ATTR void BSL_BLOCK(const bs_op *op, const uint64_t *planes, int64_t q0, uint64_t *y, void *work) {
    const bs_bitserial *bs = op->bser;
    const bs_slice *sl = op->slc;
    const int32_t cin = op->cin, cout = op->cout, kw4 = op->kwords, taps = op->g.kh * op->g.kw;
    const int32_t K = taps * cin, L = bs->nplanes, P = sl->P, LX = sl->LX, npairs = (cout + 1) / 2;
    const int ST = L + 1 > 6 ? L + 1 : 6; /* vectors per segment counter */
    const int32_t nwo = (cout + 63) / 64, wo = op->so.w, ho = op->so.h, S = sl->S, nwp = sl->nwp, kwid = op->g.kw;
    char *wp = (char *)work;
    BSV *xt = (BSV *)wp;
    wp += BSL(a64)(((size_t)kw4 * 64 + 1) * sizeof(BSV));
    BSV *state = (BSV *)wp;
    wp += BSL(a64)((size_t)3 * npairs * ST * sizeof(BSV));
    BSV *xs = (BSV *)wp; /* the counter of X */
    wp += BSL(a64)((size_t)(LX + 1) * sizeof(BSV));
    BSV *nx = (BSV *)wp; /* ~X = -X - 1 over P planes */
    wp += BSL(a64)((size_t)P * sizeof(BSV));
    BSV *pa = (BSV *)wp; /* U of the pair's first channel */
    wp += BSL(a64)((size_t)P * sizeof(BSV));
    BSV *pu = (BSV *)wp; /* U of its second channel */
    wp += BSL(a64)((size_t)P * sizeof(BSV));
    BSV *ob = (BSV *)wp; /* [nwo * 64] each channel's output bits over the block */
    wp += BSL(a64)((size_t)nwo * 64 * sizeof(BSV));
    int32_t *present = (int32_t *)wp; /* the border classes with outputs in this block */
    const BSV zero = V_ZERO(), ones = V_ONES();
    BSV kvt[2];
    kvt[0] = zero, kvt[1] = ones;
    xt[(size_t)kw4 * 64] = zero; /* the row the segments are padded with */
    const size_t mw = (size_t)(q0 / 64);

    const int nchunks = bs->nchunks, cwords = (kw4 + nchunks - 1) / nchunks;
    for (int c = 0; c < nchunks; c++) {
        /* (1) this chunk's rows: tap t, channel ch at plane bit margin + q0 + shift[t], 0 where
         * the tap's column leaves the input row */
        const int32_t r0 = c * cwords * 64, r1 = (c + 1) * cwords * 64 < K ? (c + 1) * cwords * 64 : K;
        for (int32_t r = r0; r < r1;) {
            const int32_t t = r / cin, ch0 = r % cin, ch1 = (t + 1) * cin < r1 ? cin : r1 - t * cin;
            const int64_t base = (int64_t)sl->margin + q0 + sl->shift[t];
            const int s = (int)(base & 63);
            const uint64_t *pp = planes + (size_t)(base >> 6);
            const BSV cm = V_LOAD(sl->colmask + (size_t)(t % kwid) * sl->nmw + mw);
            for (int32_t ch = ch0; ch < ch1; ch++, r++) {
                const uint64_t *pc = pp + (size_t)ch * nwp;
                xt[r] = V_ORAND(V_SRLV(V_LOADU(pc), s), V_SLLV(V_LOADU(pc + 1), 64 - s), cm);
            }
        }
        /* (2) X over all rows, then the segments of every pair */
        BSL(add_rows)(xs, LX, c == 0, (const char *)xt, sl->all + sl->all_start[c],
                      (int)(sl->all_start[c + 1] - sl->all_start[c]));
        const uint32_t *seg = bs->start + (size_t)3 * npairs * c;
        for (int s = 0; s < 3 * npairs; s++) {
            const int m = (int)(seg[s + 1] - seg[s]);
            if (c > 0 && m == 0) continue;
            BSL(add_rows)(state + (size_t)s * ST, L, c == 0, (const char *)xt, bs->idx + seg[s], m);
        }
    }
    /* (3) thresholds on the bit-sliced counts: the sign of R - t = (2 C_shared - X - 1) + 2 C_own +
     * (1 - t), for the interior constant and for each border class in the block */
    int npresent = 0;
    for (int32_t k = 0; k < sl->nclass; k++)
        if (V_NONZERO(V_LOAD(sl->clsmask + (size_t)k * sl->nmw + mw))) present[npresent++] = k;
    for (int l = 0; l < P; l++) nx[l] = l < LX ? V_NOT(xs[l]) : ones;
    BSV *pu0 = pa, *pu1 = pu; /* the pair's two U = 2 C - X - 1 */
    for (int32_t q = 0; q < npairs; q++) {
        /* one pass over the planes: the pair's 2 C_shared - X - 1, each channel's U and the carry
         * chains of U + kc (interior) of both channels: five independent chains side by side */
        const BSV *cs = state + (size_t)3 * q * ST, *co0 = cs + ST, *co1 = cs + 2 * (size_t)ST;
        const int32_t o0 = 2 * q, o1 = 2 * q + 1, two = o1 < cout;
        const uint64_t k0 = (uint64_t)(int64_t)sl->kc[o0], k1 = two ? (uint64_t)(int64_t)sl->kc[o1] : 0;
        BSV ca = zero, cu0 = zero, cu1 = zero, c0 = zero, c1 = zero, s0 = zero, s1 = zero;
        for (int l = 0; l < P; l++) {
            BSV a = nx[0], d0 = zero, d1 = zero;
            if (l > 0) {
                const BSV h = l - 1 < L ? cs[l - 1] : zero;
                a = V_XOR3(h, nx[l], ca);
                ca = V_MAJ(h, nx[l], ca);
                if (l - 1 < L) d0 = co0[l - 1], d1 = co1[l - 1];
            }
            const BSV u0 = V_XOR3(a, d0, cu0), u1 = V_XOR3(a, d1, cu1);
            cu0 = V_MAJ(a, d0, cu0);
            cu1 = V_MAJ(a, d1, cu1);
            pu0[l] = u0, pu1[l] = u1;
            if (l < P - 1) {
                c0 = V_MAJ(u0, c0, kvt[(k0 >> l) & 1]);
                c1 = V_MAJ(u1, c1, kvt[(k1 >> l) & 1]);
            } else {
                s0 = V_XOR3(u0, c0, kvt[(k0 >> l) & 1]);
                s1 = V_XOR3(u1, c1, kvt[(k1 >> l) & 1]);
            }
        }
        const BSV inv0 = sl->inv[o0] ? ones : zero, inv1 = two && sl->inv[o1] ? ones : zero;
        BSV out0 = V_XOR(s0, inv0), out1 = V_XOR(s1, inv1);
        for (int i = 0; i < npresent; i++) { /* the border classes: their constants, both channels */
            const size_t cls = (size_t)present[i] + 1;
            const uint64_t b0 = (uint64_t)(int64_t)sl->kc[cls * cout + o0];
            const uint64_t b1 = two ? (uint64_t)(int64_t)sl->kc[cls * cout + o1] : 0;
            c0 = c1 = zero;
            for (int l = 0; l < P - 1; l++) {
                c0 = V_MAJ(pu0[l], c0, kvt[(b0 >> l) & 1]);
                c1 = V_MAJ(pu1[l], c1, kvt[(b1 >> l) & 1]);
            }
            s0 = V_XOR3(pu0[P - 1], c0, kvt[(b0 >> (P - 1)) & 1]);
            s1 = V_XOR3(pu1[P - 1], c1, kvt[(b1 >> (P - 1)) & 1]);
            const BSV m = V_LOAD(sl->clsmask + (size_t)present[i] * sl->nmw + mw);
            out0 = V_SELECT(m, V_XOR(s0, inv0), out0);
            out1 = V_SELECT(m, V_XOR(s1, inv1), out1);
        }
        ob[o0] = out0;
        if (two) ob[o1] = out1;
    }
    /* (4) channel bits -> output words of the positions q0 .. q0 + 64 VW - 1 */
    BSV a[64];
    uint64_t lanes[64][VW];
    const int64_t qend = (int64_t)ho * S;
    for (int32_t g = 0; g < nwo; g++) {
        for (int i = 0; i < 64; i++) a[i] = 64 * g + i < cout ? ob[64 * g + i] : zero;
        BSL(transpose)(a); /* a[i] word w: the channel bits of position q0 + 64 w + i */
        for (int i = 0; i < 64; i++) V_STOREU(lanes[i], a[i]);
        /* positions in raster order; those in the columns >= wo of a row are not outputs */
        int32_t ox = (int32_t)(q0 % S);
        const int64_t n = qend - q0 < 64 * VW ? qend - q0 : 64 * VW;
        uint64_t *dst = y + (size_t)((q0 / S) * wo + (ox < wo ? ox : wo)) * nwo + (size_t)g;
        for (int64_t j = 0; j < n; j++) {
            if (ox < wo) {
                *dst = lanes[j % 64][j / 64];
                dst += nwo;
            }
            if (++ox == S) ox = 0;
        }
    }
}

#ifdef BSL_OWN_CSA
#undef CSA
#undef BSL_OWN_CSA
#endif
