/* The fast Walsh-Hadamard transform of float32 rows with AVX2, and the Persian Rug's operators fused with it.
 *
 * Built at install time as an optional extension (pyproject.toml, [tool.setuptools] ext-modules): a plain shared
 * library (no Python module, no Python headers needed) that decoderbench finds where the import system would and
 * loads with ctypes (decoderbench/model/_kernel.py), falling back to fht-cpu or torch where it is missing, where
 * the CPU lacks AVX2, or where DECODERBENCH_FWHT_DISABLE names "avx2".
 *
 * Every row of n floats (n a power of two, n >= 8) is transformed in the order of the radix-2 algorithm whose
 * stages run h = 1, 2, 4, ..., n/2, each output of a stage computed as a + c or a - c of the same two operands:
 * the results are bit for bit those of that algorithm (and of fht-cpu, which computes in the same order; the
 * tests compare the two). Stages 1, 2 and 4 run inside one 8-float register (a permute, an add, a subtract, a
 * blend; a lane that needs a - c computes sw - x, where sw holds a and x holds c); the later stages on 8-float
 * vectors, three at a time (radix 8) where they can.
 *
 * Blocks of 4096 floats (16 KB) are taken through all their stages while in L1: stages 1..32 of each 64 floats
 * in registers, the rest in radix-8 passes; the stages from 4096 on run over the row in radix-8 passes. The
 * rug's gather (encode), scatter (decode) and mask (apply) ride on the transform of each row instead of costing
 * passes over the batch of their own: at n_s = 4096, B = 1024, each operation alone, encode costs 1.0x and decode
 * 1.1x one out-of-place transform, 0.45x what they cost with fht-cpu (benchmarks/encoder_cost.py --steady).
 *
 * Threads: OpenMP over rows, as many as the caller asks (torch.get_num_threads()).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define DBK_X86 1
#include <immintrin.h>
#define AVX2 __attribute__((target("avx2")))
#else
#define DBK_X86 0
#endif

/* 1 when this CPU runs the kernels below (AVX2), else 0: the loader calls nothing else without it */
int dbk_supported(void) {
#if DBK_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") ? 1 : 0;
#else
    return 0;
#endif
}

#if DBK_X86

/* stages h = 1, 2, 4 of 8 consecutive floats; in each, lanes of the lower half of a pair take x + sw = a + c,
 * lanes of the upper half take sw - x = a - c (sw is x with the pairs swapped) */
static inline AVX2 __m256 stage124(__m256 x) {
    __m256 sw = _mm256_permute_ps(x, 0xB1); /* lanes 1,0,3,2 within each half */
    x = _mm256_blend_ps(_mm256_add_ps(x, sw), _mm256_sub_ps(sw, x), 0xAA);
    sw = _mm256_permute_ps(x, 0x4E); /* lanes 2,3,0,1 within each half */
    x = _mm256_blend_ps(_mm256_add_ps(x, sw), _mm256_sub_ps(sw, x), 0xCC);
    sw = _mm256_permute2f128_ps(x, x, 1); /* the two halves swapped */
    return _mm256_blend_ps(_mm256_add_ps(x, sw), _mm256_sub_ps(sw, x), 0xF0);
}

/* the radix-8 butterfly on eight vectors: stages h, 2h, 4h of the elements they hold, in that order */
#define RADIX8(a0, a1, a2, a3, a4, a5, a6, a7)                                                              \
    do {                                                                                                  \
        __m256 b0 = _mm256_add_ps(a0, a1), b1 = _mm256_sub_ps(a0, a1);                                    \
        __m256 b2 = _mm256_add_ps(a2, a3), b3 = _mm256_sub_ps(a2, a3);                                    \
        __m256 b4 = _mm256_add_ps(a4, a5), b5 = _mm256_sub_ps(a4, a5);                                    \
        __m256 b6 = _mm256_add_ps(a6, a7), b7 = _mm256_sub_ps(a6, a7);                                    \
        __m256 c0 = _mm256_add_ps(b0, b2), c2 = _mm256_sub_ps(b0, b2);                                    \
        __m256 c1 = _mm256_add_ps(b1, b3), c3 = _mm256_sub_ps(b1, b3);                                    \
        __m256 c4 = _mm256_add_ps(b4, b6), c6 = _mm256_sub_ps(b4, b6);                                    \
        __m256 c5 = _mm256_add_ps(b5, b7), c7 = _mm256_sub_ps(b5, b7);                                    \
        a0 = _mm256_add_ps(c0, c4); a4 = _mm256_sub_ps(c0, c4);                                           \
        a1 = _mm256_add_ps(c1, c5); a5 = _mm256_sub_ps(c1, c5);                                           \
        a2 = _mm256_add_ps(c2, c6); a6 = _mm256_sub_ps(c2, c6);                                           \
        a3 = _mm256_add_ps(c3, c7); a7 = _mm256_sub_ps(c3, c7);                                           \
    } while (0)

/* stages h, 2h, ..., n/2 of v in place (h >= 8, a power of two): three at a time (radix 8), then two or one */
static AVX2 void stages_from(float *v, int64_t n, int64_t h) {
    for (; 8 * h <= n; h *= 8) {
        for (int64_t i = 0; i < n; i += 8 * h) {
            for (int64_t j = 0; j < h; j += 8) {
                float *q = v + i + j;
                __m256 a0 = _mm256_loadu_ps(q), a1 = _mm256_loadu_ps(q + h);
                __m256 a2 = _mm256_loadu_ps(q + 2 * h), a3 = _mm256_loadu_ps(q + 3 * h);
                __m256 a4 = _mm256_loadu_ps(q + 4 * h), a5 = _mm256_loadu_ps(q + 5 * h);
                __m256 a6 = _mm256_loadu_ps(q + 6 * h), a7 = _mm256_loadu_ps(q + 7 * h);
                RADIX8(a0, a1, a2, a3, a4, a5, a6, a7);
                _mm256_storeu_ps(q, a0); _mm256_storeu_ps(q + h, a1);
                _mm256_storeu_ps(q + 2 * h, a2); _mm256_storeu_ps(q + 3 * h, a3);
                _mm256_storeu_ps(q + 4 * h, a4); _mm256_storeu_ps(q + 5 * h, a5);
                _mm256_storeu_ps(q + 6 * h, a6); _mm256_storeu_ps(q + 7 * h, a7);
            }
        }
    }
    if (4 * h <= n) {
        for (int64_t i = 0; i < n; i += 4 * h) {
            float *p0 = v + i, *p1 = p0 + h, *p2 = p1 + h, *p3 = p2 + h;
            for (int64_t j = 0; j < h; j += 8) {
                __m256 a0 = _mm256_loadu_ps(p0 + j), a1 = _mm256_loadu_ps(p1 + j);
                __m256 a2 = _mm256_loadu_ps(p2 + j), a3 = _mm256_loadu_ps(p3 + j);
                __m256 b0 = _mm256_add_ps(a0, a1), b1 = _mm256_sub_ps(a0, a1); /* stage h */
                __m256 b2 = _mm256_add_ps(a2, a3), b3 = _mm256_sub_ps(a2, a3);
                _mm256_storeu_ps(p0 + j, _mm256_add_ps(b0, b2)); /* stage 2h */
                _mm256_storeu_ps(p2 + j, _mm256_sub_ps(b0, b2));
                _mm256_storeu_ps(p1 + j, _mm256_add_ps(b1, b3));
                _mm256_storeu_ps(p3 + j, _mm256_sub_ps(b1, b3));
            }
        }
        h *= 4;
    }
    if (h < n) {
        for (int64_t i = 0; i < n; i += 2 * h) {
            float *p0 = v + i, *p1 = p0 + h;
            for (int64_t j = 0; j < h; j += 8) {
                __m256 a0 = _mm256_loadu_ps(p0 + j), a1 = _mm256_loadu_ps(p1 + j);
                _mm256_storeu_ps(p0 + j, _mm256_add_ps(a0, a1));
                _mm256_storeu_ps(p1 + j, _mm256_sub_ps(a0, a1));
            }
        }
    }
}

/* the stages below CHUNK act on each aligned block of CHUNK floats alone: a block is taken through all of them
 * while it sits in L1 (16 KB), then the stages from CHUNK on run over the row */
#define CHUNK 4096

/* dst[0:m] = the transform of src[0:m] (8 <= m <= CHUNK): stages 1..32 of each 64 floats in registers (stages
 * 1, 2, 4 inside each of eight vectors, then 8, 16, 32 across them), then the rest */
static AVX2 void fwht_chunk(const float *src, float *dst, int64_t m) {
    if (m < 64) {
        for (int64_t c = 0; c < m; c += 8)
            _mm256_storeu_ps(dst + c, stage124(_mm256_loadu_ps(src + c)));
        if (m > 8) stages_from(dst, m, 8);
        return;
    }
    for (int64_t c = 0; c < m; c += 64) {
        const float *s = src + c;
        __m256 a0 = stage124(_mm256_loadu_ps(s)), a1 = stage124(_mm256_loadu_ps(s + 8));
        __m256 a2 = stage124(_mm256_loadu_ps(s + 16)), a3 = stage124(_mm256_loadu_ps(s + 24));
        __m256 a4 = stage124(_mm256_loadu_ps(s + 32)), a5 = stage124(_mm256_loadu_ps(s + 40));
        __m256 a6 = stage124(_mm256_loadu_ps(s + 48)), a7 = stage124(_mm256_loadu_ps(s + 56));
        RADIX8(a0, a1, a2, a3, a4, a5, a6, a7);
        float *d = dst + c;
        _mm256_storeu_ps(d, a0); _mm256_storeu_ps(d + 8, a1);
        _mm256_storeu_ps(d + 16, a2); _mm256_storeu_ps(d + 24, a3);
        _mm256_storeu_ps(d + 32, a4); _mm256_storeu_ps(d + 40, a5);
        _mm256_storeu_ps(d + 48, a6); _mm256_storeu_ps(d + 56, a7);
    }
    if (m > 64) stages_from(dst, m, 64);
}

/* dst = the transform of src (n floats, n >= 8; dst may be src) */
static AVX2 void fwht_row(const float *src, float *dst, int64_t n) {
    int64_t m = n < CHUNK ? n : CHUNK;
    for (int64_t c = 0; c < n; c += m) fwht_chunk(src + c, dst + c, m);
    if (n > m) stages_from(dst, n, m);
}

/* inside a parallel region: each thread's scratch of n floats (64-byte aligned, zeroed if asked); *failed counts
 * the threads that got none, and is final for every thread when this returns (a barrier) */
static float *team_scratch(int64_t n, int zero, int *failed) {
    size_t bytes = ((size_t)n * sizeof(float) + 63) & ~(size_t)63; /* aligned_alloc wants a multiple of 64 */
    float *p = (float *)aligned_alloc(64, bytes);
    if (p != NULL && zero) memset(p, 0, bytes);
#pragma omp atomic
    *failed += p == NULL;
#pragma omp barrier
    return p;
}

/* out[b] = H x[b] for B rows of n floats (out may be x: in place) */
AVX2 void dbk_fwht_f32(const float *x, float *out, int64_t B, int64_t n, int nth) {
#pragma omp parallel for num_threads(nth) schedule(static)
    for (int64_t b = 0; b < B; b++) fwht_row(x + b * n, out + b * n, n);
}

/* out[b, k] = (H x[b])[S[k]] * scale: the rug's encode, each row transformed in a per-thread scratch row.
 * Returns 0, or -1 when a scratch row could not be allocated (nothing is then written) */
AVX2 int dbk_encode_f32(const float *x, const int64_t *S, int64_t nd, float scale, float *out, int64_t B,
                        int64_t n, int nth) {
    int failed = 0;
#pragma omp parallel num_threads(nth)
    {
        float *v = team_scratch(n, 0, &failed);
        if (!failed) {
#pragma omp for schedule(static)
            for (int64_t b = 0; b < B; b++) {
                fwht_row(x + b * n, v, n);
                float *o = out + b * nd;
                for (int64_t k = 0; k < nd; k++) o[k] = v[S[k]] * scale;
            }
        }
        free(v);
    }
    return failed ? -1 : 0;
}

/* out[b] = H z[b] with z[b] zero except z[b, S[k]] = h[b, k] * scale (S sorted, distinct): the rug's
 * decode/adjoint. Block by block of the row (CHUNK floats), the entries of h that fall in the block are scattered
 * into a per-thread scratch block kept zero (zeroed again after use), whose transform is written into out's row;
 * then the stages above CHUNK run over the row. Returns 0, or -1 when a scratch block could not be allocated
 * (nothing is then written) */
AVX2 int dbk_decode_f32(const float *h, const int64_t *S, int64_t nd, float scale, float *out, int64_t B,
                        int64_t n, int nth) {
    int64_t m = n < CHUNK ? n : CHUNK, nblk = n / m;
    int64_t *first = (int64_t *)malloc((size_t)(nblk + 1) * sizeof(int64_t)); /* S[first[c]:first[c+1]] in block c */
    if (first == NULL) return -1;
    for (int64_t c = 0, k = 0; c <= nblk; c++) { /* first[nblk] = nd: every S[k] < n */
        while (k < nd && S[k] < c * m) k++;
        first[c] = k;
    }
    int failed = 0;
#pragma omp parallel num_threads(nth)
    {
        float *z = team_scratch(m, 1, &failed);
        if (!failed) {
#pragma omp for schedule(static)
            for (int64_t b = 0; b < B; b++) {
                const float *hb = h + b * nd;
                float *o = out + b * n;
                for (int64_t c = 0; c < nblk; c++) {
                    int64_t base = c * m, k0 = first[c], k1 = first[c + 1];
                    for (int64_t k = k0; k < k1; k++) z[S[k] - base] = hb[k] * scale;
                    fwht_chunk(z, o + base, m);
                    if (8 * (k1 - k0) > m) /* zeroing the block in vector stores is cheaper than entry by entry */
                        memset(z, 0, (size_t)m * sizeof(float));
                    else
                        for (int64_t k = k0; k < k1; k++) z[S[k] - base] = 0.0f;
                }
                if (n > m) stages_from(o, n, m);
            }
        }
        free(z);
    }
    free(first);
    return failed ? -1 : 0;
}

/* out[b] = H (m * (H x[b])): the rug's apply with m the scaled mask (out may be x: in place) */
AVX2 void dbk_apply_f32(const float *x, const float *m, float *out, int64_t B, int64_t n, int nth) {
#pragma omp parallel for num_threads(nth) schedule(static)
    for (int64_t b = 0; b < B; b++) {
        float *o = out + b * n;
        fwht_row(x + b * n, o, n);
        for (int64_t c = 0; c < n; c += 8)
            _mm256_storeu_ps(o + c, _mm256_mul_ps(_mm256_loadu_ps(o + c), _mm256_loadu_ps(m + c)));
        fwht_row(o, o, n);
    }
}

#else /* not x86-64: the loader sees dbk_supported() == 0 and never calls these */

void dbk_fwht_f32(const float *x, float *out, int64_t B, int64_t n, int nth) { (void)x; (void)out; (void)B; (void)n; (void)nth; }
int dbk_encode_f32(const float *x, const int64_t *S, int64_t nd, float scale, float *out, int64_t B, int64_t n,
                   int nth) { (void)x; (void)S; (void)nd; (void)scale; (void)out; (void)B; (void)n; (void)nth; return -1; }
int dbk_decode_f32(const float *h, const int64_t *S, int64_t nd, float scale, float *out, int64_t B, int64_t n,
                   int nth) { (void)h; (void)S; (void)nd; (void)scale; (void)out; (void)B; (void)n; (void)nth; return -1; }
void dbk_apply_f32(const float *x, const float *m, float *out, int64_t B, int64_t n, int nth) { (void)x; (void)m; (void)out; (void)B; (void)n; (void)nth; }

#endif
