/* Fused DAPE v1 attention on CPU, forward and backward, O(B H N) memory (lenbench, issue 19).
 *
 * DAPE v1 (Zheng et al., NeurIPS 2024; reference/dape.md section 1), per batch row b, query i, key j:
 *   s_h  = scale q_hi . k_hj                      (all heads h < H; scale = 1 / sqrt(d))
 *   x    = [s; B] (concat_residual, concat: C = 2H channels) or s + B (add_residual: C = H)
 *   z_u  = b1_u + sum_c W1_uc x_c,   a_u = LeakyReLU(z_u),   f_h = b2_h + sum_u W2_hu a_u
 *   l_h  = s_h + B_h + f_h (concat_residual, add_residual) or s_h + f_h (concat)
 *   p    = softmax_j(l_h over visible keys),   o_hi = sum_j p_hij v_hj
 * with B_h(i, j) the static base bias. Why: the reference code (and lenbench's `explicit` backend)
 * materializes the [B, Nq, Nk, D] MLP activations; here a query tile meets one chunk of LANES keys
 * at a time, the logits of all heads and the MLP across heads live in vectors, and the softmax is
 * online (running max m and sum l per row and head), so only O(H N) per thread is ever written.
 *
 * Backward (flash-attention style): the tile's logits are recomputed from q, k and the saved
 * log-sum-exp; with Delta_hi = do_hi . o_hi,
 *   p = exp(l - lse),   dl = p (do . v - Delta),   dv_j += p do_i,
 *   dW2_hu += dl_h a_u,  db2 += dl,  dz_u = LeakyReLU'(z_u) sum_h W2_hu dl_h,  dW1_uc += dz_u x_c,
 *   db1 += dz,  dx_c = sum_u W1_uc dz_u,  ds = dl + dx_s,  dB = dl [residual] + dx_b,
 *   dq_i += scale sum_j ds_j k_j,  dk_j += scale ds_j q_i.
 *
 * Layouts (fp32): q, dout, out, dq [B, H, Nq, d]; kT, vT [B, H, d, Kp] (keys transposed, zero-padded
 * to Kp = Nk rounded up to LANES); k, v, dk, dv [B, H, Nk, d]; lse, delta [B, H, Nq]; w1 [D, C],
 * b1 [D], w2t [D, H] (W2 transposed), b2 [H]. The bias is read as bias[h sh + r si + j] for local
 * query row r = i - first and key j: a Toeplitz row (si = -1, bias pointing at column N - 1 - first
 * of a [H, 2N - 1] distance row) or a full [H, Nq, Nk] tensor (si = Nk). Causal: keys j > first + r
 * are masked (after f, as in the reference). Work items are (tile of TQ query rows, batch row); in the
 * backward with a full (shared) dbias, a tile over all batch rows, so dq and dbias get unique writes;
 * dk, dv, the weight gradients and a Toeplitz dbias are accumulated per thread (thread strides given)
 * and summed by the caller.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#ifdef __AVX512F__
#define LANES 16
#else
#define LANES 8
#endif
#define TQ 64 /* query rows per work item: each pass over the keys serves TQ rows (16 -> 64: backward
                 * 1.8x faster at N=2048, dk and dv leave the cache at long N) */

typedef float vf __attribute__((vector_size(4 * LANES)));
typedef int32_t vi __attribute__((vector_size(4 * LANES)));

static inline vf splat(float x) { return (vf){0} + x; }
static inline vf load(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void store(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline vf sel(vi m, vf a, vf b) { return (vf)((m & (vi)a) | (~m & (vi)b)); }
static inline vf leaky(vf z, float slope) { return sel(z > 0, z, z * slope); }

/* 64-byte aligned buffer of n bytes (vectors need their alignment), or NULL. */
static void *vec_alloc(size_t n) { return aligned_alloc(64, (n + 63) / 64 * 64); }

static inline float hsum(vf v) {
    float t = 0.0f;
    for (int l = 0; l < LANES; l++) t += v[l];
    return t;
}

/* max over lanes; NaN lanes are skipped (they reach the output through exp, below). */
static inline float hmax(vf v) {
    float m = -INFINITY;
    for (int l = 0; l < LANES; l++) m = v[l] > m ? v[l] : m;
    return m;
}

/* e^x = 2^n e^r, n = round(x / ln 2), |r| <= ln 2 / 2, Taylor to degree 7 (rel. error < 2e-7);
 * x < -87 (and -inf) -> 0, x clamped at 88, NaN -> NaN. */
static inline vf vexp(vf x) {
    vi nan = x != x, tiny = x < -87.0f;
    vf xc = sel(x > 88.0f, splat(88.0f), sel(tiny | nan, splat(0.0f), x));
    vf n = xc * 1.44269504088896341f;
    n = n + sel(n >= 0, splat(0.5f), splat(-0.5f));
    vi ni = __builtin_convertvector(n, vi);
    vf nf = __builtin_convertvector(ni, vf);
    vf r = xc - nf * 0.693145751953125f - nf * 1.428606765330187045e-06f;
    vf p = splat(1.0f / 5040.0f);
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    vf y = p * (vf)((ni + 127) << 23);
    return sel(nan, x, sel(tiny, splat(0.0f), y));
}

typedef struct {
    const float *q, *kT, *k, *vT, *v, *bias, *w1, *b1, *w2t, *b2;
    int64_t B, H, Nq, Nk, d, D, C, variant, causal, first, sh, si, Kp;
    float scale, slope;
} Args;

enum { CONCAT_RESIDUAL = 0, CONCAT = 1, ADD_RESIDUAL = 2 };

static void unpack(Args *a, const int64_t *dims, float scale, float slope) {
    a->B = dims[0]; a->H = dims[1]; a->Nq = dims[2]; a->Nk = dims[3]; a->d = dims[4]; a->D = dims[5];
    a->variant = dims[6]; a->causal = dims[7]; a->first = dims[8]; a->sh = dims[9]; a->si = dims[10];
    a->Kp = dims[11];
    a->C = a->variant == ADD_RESIDUAL ? a->H : 2 * a->H;
    a->scale = scale; a->slope = slope;
}

/* Keys j0 .. j0 + n - 1 of this chunk are visible to local query row r. */
static inline int64_t visible(const Args *a, int64_t r, int64_t j0) {
    int64_t n = a->Nk - j0;
    if (a->causal && a->first + r + 1 - j0 < n) n = a->first + r + 1 - j0;
    return n < LANES ? n : LANES;
}

/* Logits of batch row b, local query r, keys j0 .. j0 + LANES - 1, all heads: s, B (bb), the MLP
 * input x, pre-activations z and logits lg (-inf on lanes that are not visible). */
static void chunk_logits(const Args *a, int64_t b, int64_t r, int64_t j0, int64_t nvis, vf *s, vf *bb, vf *x,
                         vf *z, vf *lg) {
    const int64_t H = a->H, d = a->d, D = a->D, C = a->C, Kp = a->Kp;
    for (int64_t h = 0; h < H; h++) {
        const float *qh = a->q + ((b * H + h) * a->Nq + r) * d;
        const float *kh = a->kT + (b * H + h) * d * Kp + j0;
        vf acc0 = {0}, acc1 = {0};
        int64_t c = 0;
        for (; c + 1 < d; c += 2) {
            acc0 += splat(qh[c]) * load(kh + c * Kp);
            acc1 += splat(qh[c + 1]) * load(kh + (c + 1) * Kp);
        }
        if (c < d) acc0 += splat(qh[c]) * load(kh + c * Kp);
        s[h] = (acc0 + acc1) * a->scale;
        const float *bp = a->bias + h * a->sh + r * a->si + j0;
        if (nvis == LANES) {
            bb[h] = load(bp);
        } else {
            vf t = {0};
            for (int64_t l = 0; l < nvis; l++) t[l] = bp[l];
            bb[h] = t;
        }
    }
    if (a->variant == ADD_RESIDUAL) {
        for (int64_t h = 0; h < H; h++) x[h] = s[h] + bb[h];
    } else {
        for (int64_t h = 0; h < H; h++) { x[h] = s[h]; x[H + h] = bb[h]; }
    }
    for (int64_t h = 0; h < H; h++) lg[h] = splat(a->b2[h]) + (a->variant == CONCAT ? s[h] : s[h] + bb[h]);
    int64_t u = 0;
    for (; u + 4 <= D; u += 4) { /* four hidden units per pass: each x[c] and lg[h] load serves four */
        const float *w = a->w1 + u * C;
        vf z0 = splat(a->b1[u]), z1 = splat(a->b1[u + 1]), z2 = splat(a->b1[u + 2]), z3 = splat(a->b1[u + 3]);
        for (int64_t c = 0; c < C; c++) {
            const vf xc = x[c];
            z0 += splat(w[c]) * xc; z1 += splat(w[C + c]) * xc; z2 += splat(w[2 * C + c]) * xc;
            z3 += splat(w[3 * C + c]) * xc;
        }
        z[u] = z0; z[u + 1] = z1; z[u + 2] = z2; z[u + 3] = z3;
        const vf a0 = leaky(z0, a->slope), a1 = leaky(z1, a->slope), a2 = leaky(z2, a->slope);
        const vf a3 = leaky(z3, a->slope);
        const float *w2 = a->w2t + u * H;
        for (int64_t h = 0; h < H; h++)
            lg[h] += splat(w2[h]) * a0 + splat(w2[H + h]) * a1 + splat(w2[2 * H + h]) * a2 + splat(w2[3 * H + h]) * a3;
    }
    for (; u < D; u++) {
        const float *w = a->w1 + u * C;
        vf zu = splat(a->b1[u]);
        for (int64_t c = 0; c < C; c++) zu += splat(w[c]) * x[c];
        z[u] = zu;
        const vf act = leaky(zu, a->slope);
        const float *w2 = a->w2t + u * H;
        for (int64_t h = 0; h < H; h++) lg[h] += splat(w2[h]) * act;
    }
    if (nvis < LANES) {
        vi keep = {0};
        for (int64_t l = 0; l < nvis; l++) keep[l] = -1;
        for (int64_t h = 0; h < H; h++) lg[h] = sel(keep, lg[h], splat(-INFINITY));
    }
}

/* dst[c] += sum_e p[e] src[e * d + c] for e < n, c < d: the sum over keys stays in registers. */
static inline void add_rows(float *dst, vf p, const float *src, int64_t n, int64_t d) {
    int64_t c = 0;
    for (; c + LANES <= d; c += LANES) {
        vf acc = load(dst + c);
        for (int64_t e = 0; e < n; e++) acc += splat(p[e]) * load(src + e * d + c);
        store(dst + c, acc);
    }
    for (; c < d; c++) {
        float acc = dst[c];
        for (int64_t e = 0; e < n; e++) acc += p[e] * src[e * d + c];
        dst[c] = acc;
    }
}

/* g[u * C + c] += sum_p A[p * D + u] * X[p * C + c], p < np: a weight gradient over np stashed pairs
 * (vectors of LANES keys), 4 x 2 accumulators in registers so g is read and written once per call. */
static void rank_update(vf *g, const vf *A, const vf *X, int64_t np, int64_t D, int64_t C) {
    int64_t u0 = 0;
    for (; u0 + 4 <= D; u0 += 4) {
        int64_t c0 = 0;
        for (; c0 + 2 <= C; c0 += 2) {
            vf acc[4][2];
            for (int i = 0; i < 4; i++) { acc[i][0] = g[(u0 + i) * C + c0]; acc[i][1] = g[(u0 + i) * C + c0 + 1]; }
            for (int64_t p = 0; p < np; p++) {
                const vf x0 = X[p * C + c0], x1 = X[p * C + c0 + 1];
                for (int i = 0; i < 4; i++) {
                    const vf av = A[p * D + u0 + i];
                    acc[i][0] += av * x0;
                    acc[i][1] += av * x1;
                }
            }
            for (int i = 0; i < 4; i++) { g[(u0 + i) * C + c0] = acc[i][0]; g[(u0 + i) * C + c0 + 1] = acc[i][1]; }
        }
        for (; c0 < C; c0++)
            for (int64_t i = u0; i < u0 + 4; i++)
                for (int64_t p = 0; p < np; p++) g[i * C + c0] += A[p * D + i] * X[p * C + c0];
    }
    for (; u0 < D; u0++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t p = 0; p < np; p++) g[u0 * C + c] += A[p * D + u0] * X[p * C + c];
}

/* dst[c] += sum_p w[p * ws][e] src[rows[p] * d + c], p < np, c < d: one key row's gradient summed over
 * the stashed query rows in registers (one read and write of dst per chunk, not per query row). */
static void gather_rows(float *dst, const vf *w, int64_t ws, int64_t e, const float *src, const int64_t *rows,
                        int64_t np, int64_t d) {
    int64_t c = 0;
    for (; c + LANES <= d; c += LANES) {
        vf acc = load(dst + c);
        for (int64_t p = 0; p < np; p++) acc += splat(w[p * ws][e]) * load(src + rows[p] * d + c);
        store(dst + c, acc);
    }
    for (; c < d; c++) {
        float acc = dst[c];
        for (int64_t p = 0; p < np; p++) acc += w[p * ws][e] * src[rows[p] * d + c];
        dst[c] = acc;
    }
}

static inline int64_t key_end(const Args *a, int64_t r1) {
    return a->causal && a->first + r1 < a->Nk ? a->first + r1 : a->Nk;
}

int dape_threads(int64_t requested) {
#ifdef _OPENMP
    return (int)(requested > 0 ? requested : 1);
#else
    (void)requested;
    return 1;
#endif
}

/* out [B, H, Nq, d], lse [B, H, Nq]. Returns 0, or -1 when out of memory. */
int dape_forward(const float *q, const float *kT, const float *v, const float *bias, const float *w1,
                 const float *b1, const float *w2t, const float *b2, float *out, float *lse, const int64_t *dims,
                 float scale, float slope, int64_t threads) {
    Args a = {q, kT, NULL, NULL, v, bias, w1, b1, w2t, b2, 0};
    unpack(&a, dims, scale, slope);
    const int64_t H = a.H, d = a.d, tiles = (a.Nq + TQ - 1) / TQ;
    int failed = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(dape_threads(threads))
#endif
    {
        vf *s = vec_alloc(sizeof(vf) * (size_t)(5 * H + 2 * a.D + 1));
        float *m = malloc(sizeof(float) * (size_t)(TQ * H * (d + 2)));
        if (!s || !m) {
            failed = 1;
        } else {
            vf *bb = s + H, *x = bb + H, *lg = x + 2 * H, *z = lg + H;
            float *l = m + TQ * H, *o = l + TQ * H;
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1) collapse(2)
#endif
            for (int64_t t = 0; t < tiles; t++) {
                for (int64_t b = 0; b < a.B; b++) {
                    const int64_t r0 = (tiles - 1 - t) * TQ; /* longest causal tiles first */
                    const int64_t r1 = r0 + TQ < a.Nq ? r0 + TQ : a.Nq;
                    for (int64_t i = 0; i < (r1 - r0) * H; i++) { m[i] = -INFINITY; l[i] = 0.0f; }
                    memset(o, 0, sizeof(float) * (size_t)((r1 - r0) * H * d));
                    const int64_t kend = key_end(&a, r1);
                    for (int64_t j0 = 0; j0 < kend; j0 += LANES) {
                        for (int64_t r = r0; r < r1; r++) {
                            const int64_t nvis = visible(&a, r, j0);
                            if (nvis <= 0) continue;
                            chunk_logits(&a, b, r, j0, nvis, s, bb, x, z, lg);
                            for (int64_t h = 0; h < H; h++) {
                                const int64_t at = (r - r0) * H + h;
                                float *oh = o + at * d;
                                const float mx = hmax(lg[h]);
                                if (mx > m[at]) {
                                    const float alpha = expf(m[at] - mx);
                                    l[at] *= alpha;
                                    for (int64_t c = 0; c < d; c++) oh[c] *= alpha;
                                    m[at] = mx;
                                }
                                const vf p = vexp(lg[h] - splat(m[at]));
                                l[at] += hsum(p);
                                add_rows(oh, p, a.v + ((b * H + h) * a.Nk + j0) * d, nvis, d);
                            }
                        }
                    }
                    for (int64_t r = r0; r < r1; r++) {
                        for (int64_t h = 0; h < H; h++) {
                            const int64_t at = (r - r0) * H + h;
                            float *dst = out + ((b * H + h) * a.Nq + r) * d;
                            const float inv = 1.0f / l[at];
                            for (int64_t c = 0; c < d; c++) dst[c] = o[at * d + c] * inv;
                            lse[(b * H + h) * a.Nq + r] = m[at] + logf(l[at]);
                        }
                    }
                }
            }
        }
        free(s);
        free(m);
    }
    (void)threads;
    return failed ? -1 : 0;
}

/* Gradients. Shared (unique writes): dq [B, H, Nq, d]; with dbias_ts == 0 also dbias (full form).
 * Per thread (thread strides *_ts): dk, dv [B, H, Nk, d]; dw1 [D, C]; db1 [D]; dw2t [D, H]; db2 [H];
 * dbias (Toeplitz form, indexed like the bias). All must be zeroed by the caller. */
int dape_backward(const float *q, const float *kT, const float *k, const float *vT, const float *bias,
                  const float *w1, const float *b1, const float *w2t, const float *b2, const float *dout,
                  const float *lse, const float *delta, float *dq, float *dk, float *dv, float *dw1, float *db1,
                  float *dw2t, float *db2, float *dbias, const int64_t *strides, const int64_t *dims, float scale,
                  float slope, int64_t threads) {
    Args a = {q, kT, k, vT, NULL, bias, w1, b1, w2t, b2, 0};
    unpack(&a, dims, scale, slope);
    const int64_t H = a.H, d = a.d, D = a.D, C = a.C, Kp = a.Kp, tiles = (a.Nq + TQ - 1) / TQ;
    const int64_t kv_ts = strides[0], dbias_ts = strides[1];
    /* a shared (full) dbias needs each query row in one item: batch rows inside; else one item per (tile, b) */
    const int64_t per_item = dbias_ts == 0 ? 1 : a.B, items = tiles * per_item;
    int failed = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(dape_threads(threads))
#endif
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        const size_t nvec = (size_t)(7 * H + 2 * C + 2 * D + D * C + D * H + D + H + TQ * (C + 2 * D + 3 * H));
        vf *s = vec_alloc(sizeof(vf) * nvec);
        if (!s) {
            failed = 1;
        } else {
            memset(s, 0, sizeof(vf) * nvec);
            vf *bb = s + H, *x = bb + H, *lg = x + C, *z = lg + H, *dl = z + D, *dx = dl + H, *ds = dx + C;
            vf *dbb = ds + H, *gw1 = dbb + H, *gw2 = gw1 + D * C, *gb1 = gw2 + D * H, *gb2 = gb1 + D;
            vf *dz = gb2 + H;
            /* per chunk, the MLP input, dz, activations and dl of each row, for rank_update */
            vf *sx = dz + D, *sdz = sx + TQ * C, *sact = sdz + TQ * D, *sdl = sact + TQ * D;
            vf *sp = sdl + TQ * H, *sg = sp + TQ * H; /* p and scale * ds per row and head, for dv and dk */
            int64_t srow[TQ];
            float *tdk = dk + tid * kv_ts, *tdv = dv + tid * kv_ts, *tdb = dbias + tid * dbias_ts;
#ifdef _OPENMP
#pragma omp for schedule(static)  /* fixed items per thread: the per-thread gradient sums, and so training, are reproducible */
#endif
            for (int64_t item = 0; item < items; item++) {
                const int64_t t = item / per_item;
                const int64_t r0 = (tiles - 1 - t) * TQ, r1 = r0 + TQ < a.Nq ? r0 + TQ : a.Nq;
                const int64_t kend = key_end(&a, r1);
                const int64_t b_end = per_item == 1 ? a.B : item % per_item + 1;
                for (int64_t b = per_item == 1 ? 0 : item % per_item; b < b_end; b++) {
                    for (int64_t j0 = 0; j0 < kend; j0 += LANES) {
                        int64_t np = 0; /* rows stashed for this chunk */
                        for (int64_t r = r0; r < r1; r++) {
                            const int64_t nvis = visible(&a, r, j0);
                            if (nvis <= 0) continue;
                            chunk_logits(&a, b, r, j0, nvis, s, bb, x, z, lg);
                            for (int64_t h = 0; h < H; h++) {
                                const int64_t row = (b * H + h) * a.Nq + r;
                                const vf p = vexp(lg[h] - splat(lse[row]));
                                const float *doh = dout + row * d, *vh = a.vT + (b * H + h) * d * Kp + j0;
                                vf dp0 = {0}, dp1 = {0};
                                int64_t c = 0;
                                for (; c + 1 < d; c += 2) {
                                    dp0 += splat(doh[c]) * load(vh + c * Kp);
                                    dp1 += splat(doh[c + 1]) * load(vh + (c + 1) * Kp);
                                }
                                if (c < d) dp0 += splat(doh[c]) * load(vh + c * Kp);
                                vf g = p * (dp0 + dp1 - splat(delta[row]));
                                if (nvis < LANES) for (int64_t e = nvis; e < LANES; e++) g[e] = 0.0f;
                                dl[h] = g;
                                gb2[h] += g;
                                sp[np * H + h] = p;
                            }
                            for (int64_t cc = 0; cc < C; cc++) dx[cc] = splat(0.0f);
                            for (int64_t u = 0; u < D; u++) {
                                const float *w2 = a.w2t + u * H;
                                const vf act = leaky(z[u], slope);
                                vf da = {0};
                                for (int64_t h = 0; h < H; h++) da += splat(w2[h]) * dl[h];
                                dz[u] = sel(z[u] > 0, da, da * slope);
                                gb1[u] += dz[u];
                                sact[np * D + u] = act;
                                sdz[np * D + u] = dz[u];
                            }
                            for (int64_t cc = 0; cc < C; cc++) sx[np * C + cc] = x[cc];
                            for (int64_t h = 0; h < H; h++) sdl[np * H + h] = dl[h];
                            srow[np++] = r;
                            int64_t u = 0;
                            for (; u + 4 <= D; u += 4) { /* four hidden units per pass over x and dx */
                                const float *w = a.w1 + u * C;
                                const vf d0 = dz[u], d1 = dz[u + 1], d2 = dz[u + 2], d3 = dz[u + 3];
                                for (int64_t cc = 0; cc < C; cc++) {
                                    dx[cc] += splat(w[cc]) * d0 + splat(w[C + cc]) * d1 + splat(w[2 * C + cc]) * d2
                                              + splat(w[3 * C + cc]) * d3;
                                }
                            }
                            for (; u < D; u++) {
                                const float *w = a.w1 + u * C;
                                for (int64_t cc = 0; cc < C; cc++) dx[cc] += splat(w[cc]) * dz[u];
                            }
                            for (int64_t h = 0; h < H; h++) {
                                if (a.variant == ADD_RESIDUAL) {
                                    ds[h] = dl[h] + dx[h];
                                    dbb[h] = ds[h];
                                } else {
                                    ds[h] = dl[h] + dx[h];
                                    dbb[h] = a.variant == CONCAT ? dx[H + h] : dl[h] + dx[H + h];
                                }
                                float *db = tdb + h * a.sh + r * a.si + j0;
                                for (int64_t e = 0; e < nvis; e++) db[e] += dbb[h][e];
                                const float *kh = a.k + ((b * H + h) * a.Nk + j0) * d;
                                float *dqh = dq + ((b * H + h) * a.Nq + r) * d;
                                const vf g = ds[h] * scale;
                                add_rows(dqh, g, kh, nvis, d);
                                sg[(np - 1) * H + h] = g;
                            }
                        }
                        /* dk_j += sum_i scale ds_ij q_i, dv_j += sum_i p_ij do_i over the stashed rows; lanes a
                         * row does not see hold p = ds = 0 */
                        const int64_t keys = a.Nk - j0 < LANES ? a.Nk - j0 : LANES;
                        for (int64_t h = 0; h < H; h++) {
                            const int64_t at = (b * H + h) * a.Nq * d;
                            float *dkh = tdk + ((b * H + h) * a.Nk + j0) * d, *dvh = tdv + ((b * H + h) * a.Nk + j0) * d;
                            for (int64_t e = 0; e < keys; e++) {
                                gather_rows(dkh + e * d, sg + h, H, e, a.q + at, srow, np, d);
                                gather_rows(dvh + e * d, sp + h, H, e, dout + at, srow, np, d);
                            }
                        }
                        rank_update(gw1, sdz, sx, np, D, C); /* dW1 += dz x^T over the stashed rows */
                        rank_update(gw2, sact, sdl, np, D, H); /* dW2^T += a dl^T */
                    }
                }
            }
            float *tw1 = dw1 + tid * D * C, *tb1 = db1 + tid * D, *tw2 = dw2t + tid * D * H, *tb2 = db2 + tid * H;
            for (int64_t i = 0; i < D * C; i++) tw1[i] += hsum(gw1[i]);
            for (int64_t i = 0; i < D * H; i++) tw2[i] += hsum(gw2[i]);
            for (int64_t i = 0; i < D; i++) tb1[i] += hsum(gb1[i]);
            for (int64_t i = 0; i < H; i++) tb2[i] += hsum(gb2[i]);
        }
        free(s);
    }
    (void)threads;
    return failed ? -1 : 0;
}
