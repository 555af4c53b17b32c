/* bitserial_body.h: body of the bit-serial popcount kernel (see kernels_avx2.c), included once per
 * full-adder implementation. The includer defines BITSERIAL_NAME, BITSERIAL_ATTR and
 * CSA(h, l, a, b, c) (carry-save adder: l = a ^ b ^ c, h = majority(a, b, c)) and provides
 * transpose_patches, planes_to_counts, store_block and a64. */
/* Bit-serial popcounts for a block of up to 256 output pixels. The patches are transposed so
 * that row b of xt holds bit b of all 256 patches; for output channel o only the rows listed in
 * the plan are summed (w's 0 or 1 positions), per pixel, with a Harley-Seal carry-save tree over
 * up to 64 rows at a time into bit-sliced counters; a channel pair sums the rows both list once
 * and each channel adds that sum to its own (bs_bitserial in bsnn.h). The rows go by in chunks of
 * up to 768 (24 KB, L1-resident) through all channels, each segment's counters kept between
 * chunks. Then
 * popcount(x xor w) = n1 + X - 2 C1 (listed w = 1) or n1 - X + 2 C0 (listed w = 0), X being the
 * patch's popcount. Per 256 pixels x K bits a channel costs about 3K/8 * 5.6 vector operations
 * (a pair lists about 3K/4 rows), where the word-parallel kernel spends about K/256 * 7.3 per
 * pixel, i.e. K * 7.3: about a quarter. */
BITSERIAL_ATTR void BITSERIAL_NAME(const uint64_t *patches, int n, const bs_op *op, int32_t *pop, void *work) {
    const bs_bitserial *bs = op->bser;
    const int kw4 = op->kwords, cout = op->cout, L = bs->nplanes, np = L - 5;
    uint64_t *xt = (uint64_t *)work;
    int32_t *xpop = (int32_t *)((char *)work + a64(BS_XT_BYTES(kw4)));
    __m256i *hp = (__m256i *)((char *)xpop + a64(BS_PIXEL_BLOCK * 4));
    int32_t *cnt = (int32_t *)((char *)hp + a64((size_t)L * 32)); /* [8][256]: a block of 8 channels */
    transpose_patches(patches, n, kw4, xt);
    _mm256_store_si256((__m256i *)(xt + (size_t)kw4 * 64 * 4), _mm256_setzero_si256()); /* the zero row */
    for (int p = 0; p < n; p++) {
        const uint64_t *x = patches + (size_t)p * kw4;
        int64_t c = 0;
        for (int j = 0; j < kw4; j++) c += (int64_t)_mm_popcnt_u64(x[j]);
        xpop[p] = (int32_t)c;
    }
#define LD(k) _mm256_load_si256((const __m256i *)((const char *)xt + BS_ROW_BYTES(ip[k], 32)))
/* the running counter goes into CSA last: a ^ b does not wait for it (a shorter dependency chain) */
/* out = the carries of weight 4 (HS4), 8 (HS8), 16 (HS16) from the next 4, 8, 16 rows */
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
#define HS16(out, k)                                                                              \
    do {                                                                                          \
        HS8(eightsA, k);                                                                          \
        HS8(eightsB, k + 8);                                                                      \
        CSA(out, eights, eightsA, eightsB, eights);                                               \
    } while (0)
/* a carry of weight 32 into thirtytwos, then of weight 64 on into the planes in memory */
#define RIPPLE64()                                                                                \
    for (int l = 1; l < np; l++) {                                                               \
        __m256i h = high[l];                                                                      \
        high[l] = _mm256_xor_si256(h, carry);                                                     \
        carry = _mm256_and_si256(h, carry);                                                       \
    }
#define RIPPLE32()                                                                                \
    do {                                                                                          \
        t = _mm256_and_si256(thirtytwos, carry);                                                  \
        thirtytwos = _mm256_xor_si256(thirtytwos, carry);                                         \
        carry = t;                                                                                \
        RIPPLE64();                                                                               \
    } while (0)
#define ADD_ROWS()                                                                                \
    do {                                                                                          \
        i = 0;                                                                                    \
        /* 64 rows per step: the weight-64 carry ripples into the planes in memory once a step */ \
        for (; i + 64 <= m; i += 64) {                                                             \
            ip = idx + i;                                                                          \
            HS16(sixteensA, 0);                                                                    \
            HS16(sixteensB, 16);                                                                   \
            CSA(thirtytwosA, sixteens, sixteensA, sixteensB, sixteens);                            \
            HS16(sixteensA, 32);                                                                   \
            HS16(sixteensB, 48);                                                                   \
            CSA(thirtytwosB, sixteens, sixteensA, sixteensB, sixteens);                            \
            CSA(carry, thirtytwos, thirtytwosA, thirtytwosB, thirtytwos);                          \
            RIPPLE64();                                                                            \
        }                                                                                          \
        if (i + 32 <= m) {                                                                         \
            ip = idx + i;                                                                          \
            HS16(sixteensA, 0);                                                                    \
            HS16(sixteensB, 16);                                                                   \
            CSA(carry, sixteens, sixteensA, sixteensB, sixteens);                                  \
            RIPPLE32();                                                                            \
            i += 32;                                                                               \
        }                                                                                          \
        if (i + 16 <= m) {                                                                         \
            ip = idx + i;                                                                          \
            HS16(sixteensA, 0);                                                                    \
            carry = _mm256_and_si256(sixteens, sixteensA);                                         \
            sixteens = _mm256_xor_si256(sixteens, sixteensA);                                      \
            RIPPLE32();                                                                            \
            i += 16;                                                                               \
        }                                                                                          \
        for (; i < m; i++) {                                                                       \
            ip = idx + i;                                                                          \
            carry = LD(0);                                                                         \
            t = _mm256_and_si256(ones, carry); ones = _mm256_xor_si256(ones, carry); carry = t;    \
            t = _mm256_and_si256(twos, carry); twos = _mm256_xor_si256(twos, carry); carry = t;    \
            t = _mm256_and_si256(fours, carry); fours = _mm256_xor_si256(fours, carry); carry = t; \
            t = _mm256_and_si256(eights, carry); eights = _mm256_xor_si256(eights, carry); carry = t; \
            t = _mm256_and_si256(sixteens, carry); sixteens = _mm256_xor_si256(sixteens, carry); carry = t; \
            if (!_mm256_testz_si256(carry, carry)) {                                               \
                RIPPLE32();                                                                        \
            }                                                                                      \
        }                                                                                          \
    } while (0)
    /* the count planes of every segment of every pair, carried from chunk to chunk */
    __m256i *state = (__m256i *)((char *)cnt + a64(8 * BS_PIXEL_BLOCK * 4));
    const int npairs = (cout + 1) / 2, stride = L + 1;
    for (int c = 0; c < bs->nchunks; c++) {
        const uint32_t *seg = bs->start + (size_t)3 * npairs * c;
        for (int s = 0; s < 3 * npairs; s++) {
            __m256i *st = state + (size_t)s * stride;
            const uint16_t *idx = bs->idx + seg[s], *ip;
            const int m = (int)(seg[s + 1] - seg[s]);
            int i;
            __m256i ones, twos, fours, eights, sixteens, thirtytwos;
            __m256i twosA, twosB, foursA, foursB, eightsA, eightsB, sixteensA, sixteensB, thirtytwosA, thirtytwosB;
            __m256i carry, t;
            __m256i *high = st + 5; /* planes of weight 32 (high[0], in thirtytwos meanwhile), 64, ... */
            if (c == 0) {
                ones = twos = fours = eights = sixteens = thirtytwos = _mm256_setzero_si256();
                for (int l = 1; l < np; l++) high[l] = _mm256_setzero_si256();
            } else {
                if (m == 0) continue;
                ones = st[0], twos = st[1], fours = st[2], eights = st[3], sixteens = st[4], thirtytwos = st[5];
            }
            ADD_ROWS();
            st[0] = ones, st[1] = twos, st[2] = fours, st[3] = eights, st[4] = sixteens, st[5] = thirtytwos;
        }
    }
#undef LD
#undef HS4
#undef HS8
#undef HS16
#undef RIPPLE32
#undef RIPPLE64
#undef ADD_ROWS
    /* channel 2q + k (k = 0, 1) counts segment 3q (shared) plus segment 3q + 1 + k (its own):
     * a ripple-carry add of the two plane stacks (no carry leaves the top plane) */
    for (int o = 0; o < cout; o++) {
        const __m256i *sh = state + (size_t)3 * (o / 2) * stride, *own = sh + (size_t)(1 + o % 2) * stride;
        __m256i carry = _mm256_setzero_si256();
        for (int l = 0; l < L; l++) {
            __m256i u = _mm256_xor_si256(sh[l], own[l]);
            hp[l] = _mm256_xor_si256(u, carry);
            carry = _mm256_or_si256(_mm256_and_si256(sh[l], own[l]), _mm256_and_si256(u, carry));
        }
        planes_to_counts(hp, L, cnt + (size_t)(o % 8) * BS_PIXEL_BLOCK);
        if (o % 8 == 7 || o == cout - 1) store_block(cnt, o - o % 8, o % 8 + 1, n, bs, xpop, pop, cout);
    }
}
