/* FIRE's bias for every (query, key) pair and every head at once, on CPU (lenbench, issue 9).
 *
 *   out[h, a, t] = b2[h] + sum_u w2[h, u] act(w1[u] x_at + b1[u]),   act = ReLU or LeakyReLU(slope),
 *   x_at = sign(d) num[|d|] / den[p],   d = qp[a] - kp[t],
 *   p = qp[a] (causal; a future key, d < 0, has x = 0) or max(qp[a], kp[t]) (bidirectional),
 *
 * with num[n] = psi(n) = log(|c n| + 1) and den[p] = psi(max(p, L)) + eps tabulated by the caller
 * over integer distances and positions (Li et al., ICLR 2024; docs/pe.md section 13; the formulas
 * are FIRE's in lenbench/pe/bias.py). Why: FIRE's hidden layer is shared by the heads, so it is
 * evaluated once per pair here, 16 keys per vector, with one accumulator vector per head; PyTorch
 * would write the [pairs, width] hidden activations to memory and read them back.
 *
 * With future_from >= 0, keys after the query (key index t > future_from + a) get -inf instead:
 * causal attention's mask, written here so that no second pass over the bias is needed.
 *
 * Layouts: qp [nq], kp [nk] (non-negative int64), w1, b1 [width], w2t [width, hp] (the second
 * layer transposed, heads zero-padded to hp, a multiple of HEADS_PER_PASS), b2 [hp]; out [heads, nq,
 * nk] contiguous. Returns 0, or -1 when hp is not a multiple of HEADS_PER_PASS or a size is impossible
 * (checked before any memory is read).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef __AVX512F__
#define LANES 16
#define HEADS_PER_PASS 16
#else
#define LANES 8
#define HEADS_PER_PASS 12
#endif

typedef float vf __attribute__((vector_size(4 * LANES)));
typedef int32_t vi __attribute__((vector_size(4 * LANES)));

static inline vf splat(float x) { return (vf){0} + x; }

/* act(z) = z for z > 0, slope * z otherwise (slope 0: ReLU). */
static inline vf act(vf z, float slope) {
    vi pos = z > 0;
    vf neg = z * slope;
    return (vf)((pos & (vi)z) | (~pos & (vi)neg));
}

/* The MLP input of queries position qa over keys kp[t0 .. t0 + count), count <= LANES; the rest 0. */
static inline vf inputs(int64_t qa, const int64_t *kp, int64_t t0, int64_t count, const float *num,
                        const float *den, int causal) {
    vf n = {0}, d = splat(1.0f);
    for (int64_t l = 0; l < count; l++) {
        const int64_t k = kp[t0 + l], diff = qa - k;
        if (causal) {
            n[l] = diff > 0 ? num[diff] : 0.0f;
            d[l] = den[qa];
        } else {
            n[l] = diff >= 0 ? num[diff] : -num[-diff];
            d[l] = den[qa > k ? qa : k];
        }
    }
    return n / d;
}

int fire_bias(const int64_t *qp, int64_t nq, const int64_t *kp, int64_t nk, const float *num, const float *den,
              const float *w1, const float *b1, const float *w2t, const float *b2, int64_t width, int64_t heads,
              int64_t hp, float slope, int64_t causal, int64_t future_from, float *out, int64_t threads) {
    if (hp % HEADS_PER_PASS || heads > hp || heads < 1 || width < 1 || nq < 0 || nk < 0) return -1;
    const int64_t chunks = (nk + LANES - 1) / LANES;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) collapse(2)
#endif
    for (int64_t a = 0; a < nq; a++) {
        for (int64_t c = 0; c < chunks; c++) {
            const int64_t t0 = c * LANES, count = nk - t0 < LANES ? nk - t0 : LANES;
            const int64_t open = future_from < 0 ? count : future_from + a + 1 - t0; /* unmasked keys here */
            if (open < count) {
                for (int64_t h = 0; h < heads; h++) {
                    float *dst = out + (h * nq + a) * nk + t0;
                    for (int64_t l = open < 0 ? 0 : open; l < count; l++) dst[l] = -INFINITY;
                }
                if (open <= 0) continue;
            }
            const vf x = inputs(qp[a], kp, t0, count, num, den, (int)causal);
            for (int64_t h0 = 0; h0 < heads; h0 += HEADS_PER_PASS) {
                vf acc[HEADS_PER_PASS];
                for (int hh = 0; hh < HEADS_PER_PASS; hh++) acc[hh] = splat(b2[h0 + hh]);
                for (int64_t u = 0; u < width; u++) {
                    const vf hidden = act(splat(w1[u]) * x + splat(b1[u]), slope);
                    const float *w = w2t + u * hp + h0;
                    for (int hh = 0; hh < HEADS_PER_PASS; hh++) acc[hh] += splat(w[hh]) * hidden;
                }
                const int64_t last = heads - h0 < HEADS_PER_PASS ? heads - h0 : HEADS_PER_PASS;
                const int64_t keep = open < count ? open : count;
                for (int64_t hh = 0; hh < last; hh++) {
                    float *dst = out + ((h0 + hh) * nq + a) * nk + t0;
                    if (keep == LANES) memcpy(dst, &acc[hh], sizeof(vf));
                    else memcpy(dst, &acc[hh], (size_t)keep * sizeof(float));
                }
            }
        }
    }
    (void)threads;
    return 0;
}
