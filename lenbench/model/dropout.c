/* Inverted dropout, optionally fused with a residual add, on CPU (lenbench, issue 9).
 *
 *   forward:  out_i = skip_i + keep_i x_i scale      (skip_i = 0 without a residual),
 *   backward: dx_i  = keep_i g_i scale,              scale = 1 / (1 - p),
 *   keep_i    = u_i < threshold,  threshold = round((1 - p) 2^32),
 *
 * where u_{2m} and u_{2m+1} are the low and high 32 bits of the m-th output of SplitMix64 (Steele,
 * Lea and Flood, OOPSLA 2014) started at `seed`: z = seed + (m + 1) * 0x9e3779b97f4a7c15, then
 * the variant-13 mix z ^= z >> 30; z *= 0xbf58476d1ce4e5b9; z ^= z >> 27; z *= 0x94d049bb133111eb;
 * z ^= z >> 31. Each u depends only on (seed, i), so the backward regenerates the mask instead of
 * storing it, and the result does not depend on how threads split the elements.
 *
 * x, skip, out, g, dx: n contiguous floats. threshold >= 2^32 keeps everything.
 */
#include <stdint.h>

/* Round the product and the sum separately, as PyTorch's `skip + x * mask * scale` does (no FMA). */
#pragma GCC optimize("fp-contract=off")

#define GAMMA 0x9e3779b97f4a7c15ULL

static inline uint64_t splitmix(uint64_t seed, int64_t m) {
    uint64_t z = seed + (uint64_t)(m + 1) * GAMMA;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* out[i] = base[i] + (u_i < threshold ? a[i] * scale : 0) for i in [2 m0, 2 m1), whole pairs only;
 * base is NULL (zero) or the residual. Branch-free, so the compiler vectorizes it. */
static inline __attribute__((always_inline)) void pairs(const float *restrict a, const float *restrict base,
                                                         float *restrict out, int64_t m0, int64_t m1, uint64_t seed,
                                                         uint64_t threshold, float scale) {
    for (int64_t m = m0; m < m1; m++) {
        const uint64_t r = splitmix(seed, m);
        const float lo = (r & 0xffffffffULL) < threshold ? scale : 0.0f;
        const float hi = (r >> 32) < threshold ? scale : 0.0f;
        const float x0 = a[2 * m] * lo, x1 = a[2 * m + 1] * hi;
        out[2 * m] = base ? base[2 * m] + x0 : x0;
        out[2 * m + 1] = base ? base[2 * m + 1] + x1 : x1;
    }
}

static void apply(const float *a, const float *skip, float *out, int64_t m0, int64_t m1, uint64_t seed,
                  uint64_t threshold, float scale) {
    if (skip) pairs(a, skip, out, m0, m1, seed, threshold, scale);
    else pairs(a, 0, out, m0, m1, seed, threshold, scale);
}

static void run(const float *a, const float *skip, float *out, int64_t n, uint64_t seed, uint64_t threshold,
                float scale, int64_t threads) {
    const int64_t whole = n / 2, block = 4096;
    const int64_t blocks = (whole + block - 1) / block;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (blocks > 1)
#endif
    for (int64_t b = 0; b < blocks; b++) {
        const int64_t m0 = b * block, m1 = m0 + block < whole ? m0 + block : whole;
        apply(a, skip, out, m0, m1, seed, threshold, scale);
    }
    if (n % 2) { /* the last element: the low half of pair `whole` */
        const float keep = (splitmix(seed, whole) & 0xffffffffULL) < threshold ? scale : 0.0f;
        const float x = a[n - 1] * keep;
        out[n - 1] = skip ? skip[n - 1] + x : x;
    }
    (void)threads;
}

/* Both return 0, or -1 (nothing touched) for a negative size or a keep threshold above 2^32. */
int dropout_forward(const float *x, const float *skip, float *out, int64_t n, uint64_t seed, uint64_t threshold,
                    float scale, int64_t threads) {
    if (n < 0 || threshold > (1ULL << 32)) return -1;
    run(x, skip, out, n, seed, threshold, scale, threads);
    return 0;
}

int dropout_backward(const float *g, float *dx, int64_t n, uint64_t seed, uint64_t threshold, float scale,
                     int64_t threads) {
    if (n < 0 || threshold > (1ULL << 32)) return -1;
    run(g, 0, dx, n, seed, threshold, scale, threads);
    return 0;
}
