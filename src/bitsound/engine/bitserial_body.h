/* bitserial_body.h: body of the bit-serial popcount kernel (see kernels_avx2.c), included once per
 * full-adder implementation. The includer defines BITSERIAL_NAME, BITSERIAL_ATTR and
 * CSA(h, l, a, b, c) (carry-save adder: l = a ^ b ^ c, h = majority(a, b, c)) and provides
 * transpose_patches, planes_to_counts, store_block and a64. */
/* Bit-serial popcounts for a block of up to 256 output pixels. The patches are transposed so
 * that row b of xt holds bit b of all 256 patches; for output channel o only the rows listed in
 * the plan are summed (w's 0 or 1 positions), per pixel, with a Harley-Seal carry-save tree over
 * 16 rows at a time into bit-sliced counters; a channel pair sums the rows both list once and
 * each channel continues from that partial sum (bs_bitserial in bsnn.h). Then
 * popcount(x xor w) = n1 + X - 2 C1 (listed w = 1) or n1 - X + 2 C0 (listed w = 0), X being the
 * patch's popcount. Per 256 pixels x K bits a channel costs about 3K/8 * 5.6 vector operations
 * (a pair lists about 3K/4 rows), where the word-parallel kernel spends about K/256 * 7.3 per
 * pixel, i.e. K * 7.3: about a quarter. */
BITSERIAL_ATTR void BITSERIAL_NAME(const uint64_t *patches, int n, const bs_op *op, int32_t *pop, void *work) {
    const bs_bitserial *bs = op->bser;
    const int kw4 = op->kwords, cout = op->cout, L = bs->nplanes, np = L - 5;
    uint64_t *xt = (uint64_t *)work;
    int32_t *xpop = (int32_t *)((char *)work + a64((size_t)kw4 * 64 * 32));
    __m256i *hp = (__m256i *)((char *)xpop + a64(BS_PIXEL_BLOCK * 4));
    int32_t *cnt = (int32_t *)((char *)hp + a64((size_t)L * 32)); /* [8][256]: a block of 8 channels */
    __m256i *high = hp + 5; /* planes of weight 32, 64, ... */
    transpose_patches(patches, n, kw4, xt);
    for (int p = 0; p < n; p++) {
        const uint64_t *x = patches + (size_t)p * kw4;
        int64_t c = 0;
        for (int j = 0; j < kw4; j++) c += (int64_t)_mm_popcnt_u64(x[j]);
        xpop[p] = (int32_t)c;
    }
#define LD(k) _mm256_load_si256((const __m256i *)(xt + (size_t)idx[i + (k)] * 4))
#define HS16(out, k)                                                                              \
    do {                                                                                          \
        CSA(twosA, ones, ones, LD(k + 0), LD(k + 1));                                             \
        CSA(twosB, ones, ones, LD(k + 2), LD(k + 3));                                             \
        CSA(foursA, twos, twos, twosA, twosB);                                                    \
        CSA(twosA, ones, ones, LD(k + 4), LD(k + 5));                                             \
        CSA(twosB, ones, ones, LD(k + 6), LD(k + 7));                                             \
        CSA(foursB, twos, twos, twosA, twosB);                                                    \
        CSA(eightsA, fours, fours, foursA, foursB);                                               \
        CSA(twosA, ones, ones, LD(k + 8), LD(k + 9));                                             \
        CSA(twosB, ones, ones, LD(k + 10), LD(k + 11));                                           \
        CSA(foursA, twos, twos, twosA, twosB);                                                    \
        CSA(twosA, ones, ones, LD(k + 12), LD(k + 13));                                           \
        CSA(twosB, ones, ones, LD(k + 14), LD(k + 15));                                           \
        CSA(foursB, twos, twos, twosA, twosB);                                                    \
        CSA(eightsB, fours, fours, foursA, foursB);                                               \
        CSA(out, eights, eights, eightsA, eightsB);                                               \
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
            HS16(sixteensA, 0);                                                                    \
            HS16(sixteensB, 16);                                                                   \
            CSA(thirtytwosA, sixteens, sixteens, sixteensA, sixteensB);                            \
            HS16(sixteensA, 32);                                                                   \
            HS16(sixteensB, 48);                                                                   \
            CSA(thirtytwosB, sixteens, sixteens, sixteensA, sixteensB);                            \
            CSA(carry, thirtytwos, thirtytwos, thirtytwosA, thirtytwosB);                          \
            RIPPLE64();                                                                            \
        }                                                                                          \
        if (i + 32 <= m) {                                                                         \
            HS16(sixteensA, 0);                                                                    \
            HS16(sixteensB, 16);                                                                   \
            CSA(carry, sixteens, sixteens, sixteensA, sixteensB);                                  \
            RIPPLE32();                                                                            \
            i += 32;                                                                               \
        }                                                                                          \
        if (i + 16 <= m) {                                                                         \
            HS16(sixteensA, 0);                                                                    \
            carry = _mm256_and_si256(sixteens, sixteensA);                                         \
            sixteens = _mm256_xor_si256(sixteens, sixteensA);                                      \
            RIPPLE32();                                                                            \
            i += 16;                                                                               \
        }                                                                                          \
        for (; i < m; i++) {                                                                       \
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
    __m256i *saved = (__m256i *)((char *)cnt + a64(8 * BS_PIXEL_BLOCK * 4)); /* a pair's shared sum */
    for (int o = 0; o < cout; o++) {
        const uint32_t *seg = bs->start + 3 * (o / 2);
        const uint16_t *idx;
        int m, i;
        __m256i ones, twos, fours, eights, sixteens, thirtytwos;
        __m256i twosA, twosB, foursA, foursB, eightsA, eightsB, sixteensA, sixteensB, thirtytwosA, thirtytwosB;
        __m256i carry, t;
        if (o % 2 == 0) { /* first of a pair: start from zero and add the shared rows */
            ones = twos = fours = eights = sixteens = thirtytwos = _mm256_setzero_si256();
            for (int l = 0; l < np; l++) high[l] = _mm256_setzero_si256();
            idx = bs->idx + seg[0];
            m = (int)(seg[1] - seg[0]);
            ADD_ROWS();
            if (o + 1 < cout) {
                saved[0] = ones, saved[1] = twos, saved[2] = fours, saved[3] = eights, saved[4] = sixteens;
                saved[5] = thirtytwos; /* high[0] stays unused while counting */
                for (int l = 1; l < np; l++) saved[5 + l] = high[l];
            }
        } else { /* second of a pair: continue from the shared sum */
            ones = saved[0], twos = saved[1], fours = saved[2], eights = saved[3], sixteens = saved[4];
            thirtytwos = saved[5];
            for (int l = 1; l < np; l++) high[l] = saved[5 + l];
        }
        const int own = 1 + o % 2;
        idx = bs->idx + seg[own];
        m = (int)(seg[own + 1] - seg[own]);
        ADD_ROWS();
#undef LD
#undef HS16
#undef RIPPLE32
#undef RIPPLE64
#undef ADD_ROWS
        hp[0] = ones;
        hp[1] = twos;
        hp[2] = fours;
        hp[3] = eights;
        hp[4] = sixteens;
        if (np > 0) high[0] = thirtytwos; /* zero when counts stay below 32 (np == 0) */
        planes_to_counts(hp, L, cnt + (size_t)(o % 8) * BS_PIXEL_BLOCK);
        if (o % 8 == 7 || o == cout - 1) store_block(cnt, o - o % 8, o % 8 + 1, n, bs, xpop, pop, cout);
    }
}

