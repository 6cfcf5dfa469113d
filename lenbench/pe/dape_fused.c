/* Fused DAPE v1 attention on CPU, forward and backward, O(B H N) memory (lenbench, issue 19).
 *
 * DAPE v1 (Zheng et al., NeurIPS 2024; docs/dape.md section 1), per batch row b, query i, key j:
 *   s_h  = scale q_hi . k_hj                      (all heads h < H; scale = 1 / sqrt(d))
 *   x    = [s; B] (concat_residual, concat: C = 2H channels) or s + B (add_residual: C = H)
 *   z_u  = b1_u + sum_c W1_uc x_c,   a_u = LeakyReLU(z_u),   f_h = b2_h + sum_u W2_hu a_u
 *   l_h  = s_h + B_h + f_h (concat_residual, add_residual) or s_h + f_h (concat)
 *   p    = softmax_j(l_h over visible keys),   o_hi = sum_j p_hij v_hj
 * with B_h(i, j) the static base bias. Why: the reference code (and lenbench's `explicit` backend)
 * materializes the [B, Nq, Nk, D] MLP activations; here a query tile meets one chunk of LANES keys
 * at a time, R = 4 of its rows together (each loaded key vector and MLP weight serves 4 rows), the
 * logits of all heads and the MLP across heads live in vectors, and the softmax is online (running
 * max m and sum l per row and head), so only O(H N) per thread is ever written. With a Toeplitz bias
 * in the concat forms, b1 + W1_b B depends on i - j only and is tabulated per distance
 * (bias_units), so a pair's first layer reads s alone.
 *
 * Backward (flash-attention style): the tile's logits are recomputed from q, k and the saved
 * log-sum-exp; with Delta_hi = do_hi . o_hi,
 *   p = exp(l - lse),   dl = p (do . v - Delta),   dv_j += p do_i,
 *   dW2_hu += dl_h a_u,  db2 += dl,  dz_u = LeakyReLU'(z_u) sum_h W2_hu dl_h,  dW1_uc += dz_u x_c,
 *   db1 += dz,  dx_c = sum_u W1_uc dz_u,  ds = dl + dx_s,  dB = dl [residual] + dx_b,
 *   dq_i += scale sum_j ds_j k_j,  dk_j += scale ds_j q_i.
 *
 * Layouts (fp32): q, dout, out, dq [B, H, Nq, d]; kT, vT [B, H, Kp / KB, d, KB] (keys in blocks of
 * KB, each block transposed; zero-padded to Kp = Nk rounded up to KB); k, v, dk, dv [B, H, Nk, d];
 * lse, delta [B, H, Nq]; w1 [D, C], b1 [D], w2t [D, H] (W2 transposed), b2 [H]. dims: B, H, Nq, Nk,
 * d, D, variant, causal, first, sh, si, Kp, and the bias pointer's offset into its tensor (a Toeplitz
 * row is tabulated whole). The bias is read as bias[h sh + r si + j] for local
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
#define KB 16 /* keys per block of the key-blocked kT and vT (a multiple of LANES): a chunk's d x LANES
                 * values lie in one 4 KB stretch, not d rows N floats apart (at N = 1024 those rows were 4 KB
                 * apart, all in one L1 set) */
#define TQ 64 /* query rows per work item: each pass over the keys serves TQ rows (16 -> 64: backward
                 * 1.8x faster at N=2048, dk and dv leave the cache at long N) */
#define R 4   /* query rows computed together: each key vector and weight loaded serves R rows, and R x 4
               * independent accumulators keep both FMA pipes busy (TQ is a multiple of R) */

typedef float vf __attribute__((vector_size(4 * LANES)));
typedef int32_t vi __attribute__((vector_size(4 * LANES)));

/* x in every lane: one broadcast ("(vf){0} + x" costs a scalar add first, 0 + x differing from x at
 * -0; x - 0 is x for every x, so the compiler drops it) */
static inline vf splat(float x) { return x - (vf){0}; }
static inline vf load(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void store(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline vf sel(vi m, vf a, vf b) { return (vf)((m & (vi)a) | (~m & (vi)b)); }
static inline vf leaky(vf z, float slope) { return sel(z > 0, z, z * slope); }
static inline int64_t min64(int64_t x, int64_t y) { return x < y ? x : y; }

/* Lanes 0 .. n - 1 set. */
static inline vi first_lanes(int64_t n) {
    vi m;
    for (int l = 0; l < LANES; l++) m[l] = l < n ? -1 : 0;
    return m;
}

/* p[0 .. n - 1], zeros after: a chunk that ends inside the keys reads no further. */
static inline vf load_part(const float *p, int64_t n) {
    vf t = {0};
    for (int64_t l = 0; l < n; l++) t[l] = p[l];
    return t;
}

/* 64-byte aligned buffer of n bytes (vectors need their alignment), or NULL. */
static void *vec_alloc(size_t n) { return aligned_alloc(64, (n + 63) / 64 * 64); }

/* Lane sum and max by halving (log2 LANES steps). The max takes the right operand on a NaN: a NaN
 * row still ends NaN, through exp and the sum. */
static inline vf fold(vf v, int half, int is_max) {
    vi idx;
    for (int l = 0; l < LANES; l++) idx[l] = (l + half) % LANES;
    const vf w = __builtin_shuffle(v, idx);
    return is_max ? sel(v > w, v, w) : v + w;
}

static inline float hsum(vf v) {
    for (int half = LANES / 2; half >= 1; half /= 2) v = fold(v, half, 0);
    return v[0];
}

static inline float hmax(vf v) {
    for (int half = LANES / 2; half >= 1; half /= 2) v = fold(v, half, 1);
    return v[0];
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
    int64_t B, H, Nq, Nk, d, D, C, variant, causal, first, sh, si, Kp, off;
    float scale, slope;
    const float *zb; /* Toeplitz concat forms: b1 + W1_b B per distance, indexed like the bias; else NULL */
    int64_t Cx;      /* channels of x the first layer reads per pair: H with zb (s only), else C */
} Args;

enum { CONCAT_RESIDUAL = 0, CONCAT = 1, ADD_RESIDUAL = 2 };

static void unpack(Args *a, const int64_t *dims, float scale, float slope) {
    a->B = dims[0]; a->H = dims[1]; a->Nq = dims[2]; a->Nk = dims[3]; a->d = dims[4]; a->D = dims[5];
    a->variant = dims[6]; a->causal = dims[7]; a->first = dims[8]; a->sh = dims[9]; a->si = dims[10];
    a->Kp = dims[11]; a->off = dims[12];
    a->C = a->variant == ADD_RESIDUAL ? a->H : 2 * a->H;
    a->zb = NULL; a->Cx = a->C;
    a->scale = scale; a->slope = slope;
}

/* With a Toeplitz bias (si = -1) in the concat forms, the bias half of the first layer,
 * zb_u(i - j) = b1_u + sum_h W1[u, H + h] B_h(i - j), depends on the distance only: computed here once
 * per distance over the whole [D, 2N - 1] row (O(D N) memory), a pair's first layer then reads s only
 * (H of its 2H channels). Sets a->zb (indexed like the bias: zb[u sh + r si + j]) and returns the
 * buffer to free, NULL when the form does not apply (or out of memory: *failed set). */
static float *bias_units(Args *a, int *failed) {
    if (a->si != -1 || a->variant == ADD_RESIDUAL) return NULL;
    const int64_t H = a->H, D = a->D, C = a->C, sh = a->sh;
    float *zb = malloc(sizeof(float) * (size_t)(D * sh));
    if (!zb) { *failed = 1; return NULL; }
    const float *row = a->bias - a->off;
    for (int64_t u = 0; u < D; u++) {
        float *zu = zb + u * sh;
        for (int64_t col = 0; col < sh; col++) zu[col] = a->b1[u];
        for (int64_t h = 0; h < H; h++) {
            const float w = a->w1[u * C + H + h], *bh = row + h * sh;
            for (int64_t col = 0; col < sh; col++) zu[col] += w * bh[col];
        }
    }
    a->zb = zb + a->off;
    a->Cx = H;
    return zb;
}

/* How many of keys j0 .. j0 + LANES - 1 local query row r sees (0 .. LANES). */
static inline int64_t visible(const Args *a, int64_t r, int64_t j0) {
    int64_t n = a->Nk - j0;
    if (a->causal && a->first + r + 1 - j0 < n) n = a->first + r + 1 - j0;
    return n < 0 ? 0 : n < LANES ? n : LANES;
}

/* The R rows r .. r + R - 1 of a tile ending at r1: rows[] clamped into the tile (a row past its end
 * repeats the last one and sees nothing), nvis[] the keys of this chunk each sees. Returns whether
 * any row sees a key. */
static inline int group(const Args *a, int64_t r, int64_t r1, int64_t j0, int64_t *rows, int64_t *nvis) {
    int any = 0;
    for (int i = 0; i < R; i++) {
        rows[i] = min64(r + i, r1 - 1);
        nvis[i] = r + i < r1 ? visible(a, r + i, j0) : 0;
        any |= nvis[i] > 0;
    }
    return any;
}

/* Keys j0 .. j0 + LANES - 1 of the key-blocked [B, H, Kp / KB, d, KB] tensor t, channel 0, for batch
 * row and head bh; channel c is KB floats further. */
static inline const float *key_block(const Args *a, const float *t, int64_t bh, int64_t j0) {
    return t + bh * a->d * a->Kp + (j0 / KB) * a->d * KB + j0 % KB;
}

/* out[i] = sum_c qr[i][c] kt[c * KB + lanes], i < R: one key chunk's dot products for R query rows
 * (2 x R accumulators, each key vector loaded once for the R rows). */
static inline void rows_dot(vf *out, const float *const *qr, const float *kt, int64_t d) {
    vf a0[R], a1[R];
    for (int i = 0; i < R; i++) a0[i] = a1[i] = splat(0.0f);
    int64_t c = 0;
    for (; c + 1 < d; c += 2) {
        const vf k0 = load(kt + c * KB), k1 = load(kt + (c + 1) * KB);
        for (int i = 0; i < R; i++) {
            a0[i] += splat(qr[i][c]) * k0;
            a1[i] += splat(qr[i][c + 1]) * k1;
        }
    }
    if (c < d) {
        const vf k0 = load(kt + c * KB);
        for (int i = 0; i < R; i++) a0[i] += splat(qr[i][c]) * k0;
    }
    for (int i = 0; i < R; i++) out[i] = a0[i] + a1[i];
}

/* dst[i][c] += sum_{e < n[i]} w[i * ws][e] src[e * d + c], i < R, c < d: the keys' rows weighted per
 * query row (PV, dq). The keys all R rows see run with R x 2 accumulators; a row's extra keys after.
 * The R dst rows must be distinct (rows that see nothing point at scratch). */
static void rows_add(float *const *dst, const vf *w, int64_t ws, const int64_t *n, const float *src, int64_t d) {
    int64_t emin = n[0];
    for (int i = 1; i < R; i++) emin = min64(emin, n[i]);
    int64_t c = 0;
    for (; c + 2 * LANES <= d; c += 2 * LANES) {
        vf acc[R][2];
        for (int i = 0; i < R; i++) { acc[i][0] = load(dst[i] + c); acc[i][1] = load(dst[i] + c + LANES); }
        for (int64_t e = 0; e < emin; e++) {
            const vf x0 = load(src + e * d + c), x1 = load(src + e * d + c + LANES);
            for (int i = 0; i < R; i++) {
                const vf we = splat(w[i * ws][e]);
                acc[i][0] += we * x0;
                acc[i][1] += we * x1;
            }
        }
        for (int i = 0; i < R; i++) { store(dst[i] + c, acc[i][0]); store(dst[i] + c + LANES, acc[i][1]); }
    }
    for (; c + LANES <= d; c += LANES) {
        vf acc[R];
        for (int i = 0; i < R; i++) acc[i] = load(dst[i] + c);
        for (int64_t e = 0; e < emin; e++) {
            const vf x0 = load(src + e * d + c);
            for (int i = 0; i < R; i++) acc[i] += splat(w[i * ws][e]) * x0;
        }
        for (int i = 0; i < R; i++) store(dst[i] + c, acc[i]);
    }
    for (; c < d; c++)
        for (int i = 0; i < R; i++) {
            float acc = dst[i][c];
            for (int64_t e = 0; e < emin; e++) acc += w[i * ws][e] * src[e * d + c];
            dst[i][c] = acc;
        }
    for (int i = 0; i < R; i++)
        for (int64_t e = emin; e < n[i]; e++) {
            const float we = w[i * ws][e];
            for (int64_t cc = 0; cc < d; cc++) dst[i][cc] += we * src[e * d + cc];
        }
}

/* The first layer's start for unit u, query row r, keys j0 ..: zb's, else b1_u. */
static inline vf unit_bias(const Args *a, int64_t u, int64_t r, int64_t j0, int64_t kvalid) {
    if (!a->zb) return splat(a->b1[u]);
    const float *p = a->zb + u * a->sh + r * a->si + j0;
    return kvalid == LANES ? load(p) : load_part(p, kvalid);
}

/* Logits of batch row b, query rows rows[0 .. R-1], keys j0 .. j0 + LANES - 1 (kvalid of them inside
 * the sequence), all heads: s [R][H], bias bb [R][H], the MLP input x [R][C], pre-activations z and
 * activations act [R][D], logits lg [R][H] (-inf on the lanes a row does not see). Each MLP layer runs
 * 4 output units x R rows at a time: every weight broadcast serves R rows, every input vector 4 units. */
static void chunk_logits(const Args *a, int64_t b, const int64_t *rows, int64_t j0, int64_t kvalid,
                         const int64_t *nvis, vf *s, vf *bb, vf *x, vf *z, vf *act, vf *lg) {
    const int64_t H = a->H, d = a->d, D = a->D, C = a->C;
    for (int64_t h = 0; h < H; h++) {
        const float *qr[R];
        for (int i = 0; i < R; i++) qr[i] = a->q + ((b * H + h) * a->Nq + rows[i]) * d;
        vf dot[R];
        rows_dot(dot, qr, key_block(a, a->kT, b * H + h, j0), d);
        for (int i = 0; i < R; i++) {
            s[i * H + h] = dot[i] * a->scale;
            const float *bp = a->bias + h * a->sh + rows[i] * a->si + j0;
            bb[i * H + h] = kvalid == LANES ? load(bp) : load_part(bp, kvalid);
        }
    }
    for (int i = 0; i < R; i++) {
        vf *xi = x + i * C;
        const vf *si = s + i * H, *bi = bb + i * H;
        if (a->variant == ADD_RESIDUAL) {
            for (int64_t h = 0; h < H; h++) xi[h] = si[h] + bi[h];
        } else {
            for (int64_t h = 0; h < H; h++) { xi[h] = si[h]; xi[H + h] = bi[h]; }
        }
    }
    const int64_t Cx = a->Cx; /* with zb: z = zb + W1_s s, else z = W1 x + b1 */
    int64_t u = 0;
    for (; u + 4 <= D; u += 4) {
        const float *w = a->w1 + u * C;
        vf acc[R][4];
        for (int i = 0; i < R; i++)
            for (int t = 0; t < 4; t++) acc[i][t] = unit_bias(a, u + t, rows[i], j0, kvalid);
        for (int64_t c = 0; c < Cx; c++) {
            const vf w0 = splat(w[c]), w1 = splat(w[C + c]), w2 = splat(w[2 * C + c]), w3 = splat(w[3 * C + c]);
            for (int i = 0; i < R; i++) {
                const vf xc = x[i * C + c];
                acc[i][0] += w0 * xc; acc[i][1] += w1 * xc; acc[i][2] += w2 * xc; acc[i][3] += w3 * xc;
            }
        }
        for (int i = 0; i < R; i++)
            for (int t = 0; t < 4; t++) { z[i * D + u + t] = acc[i][t]; act[i * D + u + t] = leaky(acc[i][t], a->slope); }
    }
    for (; u < D; u++) {
        const float *w = a->w1 + u * C;
        for (int i = 0; i < R; i++) {
            vf zu = unit_bias(a, u, rows[i], j0, kvalid);
            for (int64_t c = 0; c < Cx; c++) zu += splat(w[c]) * x[i * C + c];
            z[i * D + u] = zu;
            act[i * D + u] = leaky(zu, a->slope);
        }
    }
    const int residual = a->variant != CONCAT;
    int64_t h = 0;
    for (; h + 4 <= H; h += 4) { /* lg = s [+ B] + W2 act + b2 */
        vf acc[R][4];
        for (int i = 0; i < R; i++)
            for (int t = 0; t < 4; t++)
                acc[i][t] = splat(a->b2[h + t]) + s[i * H + h + t] + (residual ? bb[i * H + h + t] : splat(0.0f));
        for (int64_t uu = 0; uu < D; uu++) {
            const float *w2 = a->w2t + uu * H + h;
            const vf w0 = splat(w2[0]), w1 = splat(w2[1]), w2v = splat(w2[2]), w3 = splat(w2[3]);
            for (int i = 0; i < R; i++) {
                const vf av = act[i * D + uu];
                acc[i][0] += w0 * av; acc[i][1] += w1 * av; acc[i][2] += w2v * av; acc[i][3] += w3 * av;
            }
        }
        for (int i = 0; i < R; i++)
            for (int t = 0; t < 4; t++) lg[i * H + h + t] = acc[i][t];
    }
    for (; h < H; h++)
        for (int i = 0; i < R; i++) {
            vf acc = splat(a->b2[h]) + s[i * H + h] + (residual ? bb[i * H + h] : splat(0.0f));
            for (int64_t uu = 0; uu < D; uu++) acc += splat(a->w2t[uu * H + h]) * act[i * D + uu];
            lg[i * H + h] = acc;
        }
    for (int i = 0; i < R; i++)
        if (nvis[i] < LANES) {
            const vi keep = first_lanes(nvis[i]);
            for (int64_t hh = 0; hh < H; hh++) lg[i * H + hh] = sel(keep, lg[i * H + hh], splat(-INFINITY));
        }
}

/* dst[e * d + c] += sum_{p < np} w[p * ws][e] src[row(p) * d + c] for keys e < keys, c < d, where
 * row(p) = min(r_first + p, r_last): one key chunk's gradient rows summed over a tile's stashed query
 * rows (dk from scale * ds and q, dv from p and dout), 4 keys x 2 vectors of accumulators. */
static void keys_add(float *dst, const vf *w, int64_t ws, const float *src, int64_t r_first, int64_t r_last,
                     int64_t np, int64_t keys, int64_t d) {
    int64_t e = 0;
    for (; e + 4 <= keys; e += 4) {
        int64_t c = 0;
        for (; c + 2 * LANES <= d; c += 2 * LANES) {
            vf acc[4][2];
            for (int t = 0; t < 4; t++) { acc[t][0] = load(dst + (e + t) * d + c); acc[t][1] = load(dst + (e + t) * d + c + LANES); }
            for (int64_t p = 0; p < np; p++) {
                const float *row = src + min64(r_first + p, r_last) * d + c;
                const vf x0 = load(row), x1 = load(row + LANES);
                const vf wp = w[p * ws];
                for (int t = 0; t < 4; t++) {
                    const vf wt = splat(wp[e + t]);
                    acc[t][0] += wt * x0;
                    acc[t][1] += wt * x1;
                }
            }
            for (int t = 0; t < 4; t++) { store(dst + (e + t) * d + c, acc[t][0]); store(dst + (e + t) * d + c + LANES, acc[t][1]); }
        }
        for (; c + LANES <= d; c += LANES) {
            vf acc[4];
            for (int t = 0; t < 4; t++) acc[t] = load(dst + (e + t) * d + c);
            for (int64_t p = 0; p < np; p++) {
                const vf x0 = load(src + min64(r_first + p, r_last) * d + c);
                for (int t = 0; t < 4; t++) acc[t] += splat(w[p * ws][e + t]) * x0;
            }
            for (int t = 0; t < 4; t++) store(dst + (e + t) * d + c, acc[t]);
        }
        for (; c < d; c++)
            for (int t = 0; t < 4; t++) {
                float acc = dst[(e + t) * d + c];
                for (int64_t p = 0; p < np; p++) acc += w[p * ws][e + t] * src[min64(r_first + p, r_last) * d + c];
                dst[(e + t) * d + c] = acc;
            }
    }
    for (; e < keys; e++)
        for (int64_t c = 0; c < d; c++) {
            float acc = dst[e * d + c];
            for (int64_t p = 0; p < np; p++) acc += w[p * ws][e] * src[min64(r_first + p, r_last) * d + c];
            dst[e * d + c] = acc;
        }
}

/* g[u * C + c] += sum_{p < np} A[p * D + u] X[p * C + c], c < Cx: a weight gradient over np stashed
 * rows (vectors of LANES keys), 4 x 4 accumulators so g is read and written once per call. */
static void rank_update(vf *g, const vf *A, const vf *X, int64_t np, int64_t D, int64_t C, int64_t Cx) {
    int64_t u0 = 0;
    for (; u0 + 4 <= D; u0 += 4) {
        int64_t c0 = 0;
        for (; c0 + 4 <= Cx; c0 += 4) {
            vf acc[4][4];
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++) acc[i][j] = g[(u0 + i) * C + c0 + j];
            for (int64_t p = 0; p < np; p++) {
                const vf *xp = X + p * C + c0, *ap = A + p * D + u0;
                const vf x0 = xp[0], x1 = xp[1], x2 = xp[2], x3 = xp[3];
                for (int i = 0; i < 4; i++) {
                    const vf av = ap[i];
                    acc[i][0] += av * x0; acc[i][1] += av * x1; acc[i][2] += av * x2; acc[i][3] += av * x3;
                }
            }
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++) g[(u0 + i) * C + c0 + j] = acc[i][j];
        }
        for (; c0 < Cx; c0++)
            for (int64_t i = u0; i < u0 + 4; i++)
                for (int64_t p = 0; p < np; p++) g[i * C + c0] += A[p * D + i] * X[p * C + c0];
    }
    for (; u0 < D; u0++)
        for (int64_t c = 0; c < Cx; c++)
            for (int64_t p = 0; p < np; p++) g[u0 * C + c] += A[p * D + u0] * X[p * C + c];
}

/* 1 when the sizes cannot describe inputs this kernel reads: queries first .. first + Nq - 1 must be
 * keys, Kp a whole number of key blocks covering Nk (the Python wrapper checks the tensors first). */
static int bad_arguments(const Args *a) {
    if (a->B < 1 || a->H < 1 || a->Nq < 1 || a->Nk < 1 || a->d < 1 || a->D < 1) return 1;
    if (a->variant < CONCAT_RESIDUAL || a->variant > ADD_RESIDUAL) return 1;
    if (a->first < 0 || a->first + a->Nq > a->Nk) return 1;
    return a->Kp < a->Nk || a->Kp % KB;
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

/* out [B, H, Nq, d], lse [B, H, Nq]. Returns 0, -1 when out of memory, or -2 for impossible sizes. */
int dape_forward(const float *q, const float *kT, const float *v, const float *bias, const float *w1,
                 const float *b1, const float *w2t, const float *b2, float *out, float *lse, const int64_t *dims,
                 float scale, float slope, int64_t threads) {
    Args a = {q, kT, NULL, NULL, v, bias, w1, b1, w2t, b2, 0};
    unpack(&a, dims, scale, slope);
    if (bad_arguments(&a)) return -2;
    const int64_t H = a.H, d = a.d, D = a.D, C = a.C, tiles = (a.Nq + TQ - 1) / TQ;
    int failed = 0;
    float *zb = bias_units(&a, &failed);
    if (failed) return -1;
#ifdef _OPENMP
#pragma omp parallel num_threads(dape_threads(threads))
#endif
    {
        vf *s = vec_alloc(sizeof(vf) * (size_t)(R * (4 * H + C + 2 * D)));
        float *m = malloc(sizeof(float) * (size_t)(TQ * H * (d + 2) + d));
        if (!s || !m) {
            failed = 1;
        } else {
            vf *bb = s + R * H, *lg = bb + R * H, *p = lg + R * H, *x = p + R * H, *z = x + R * C, *act = z + R * D;
            float *l = m + TQ * H, *o = l + TQ * H, *junk = o + TQ * H * d;
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
                        const int64_t kvalid = min64(LANES, a.Nk - j0);
                        for (int64_t r = r0; r < r1; r += R) {
                            int64_t rows[R], nvis[R];
                            if (!group(&a, r, r1, j0, rows, nvis)) continue;
                            chunk_logits(&a, b, rows, j0, kvalid, nvis, s, bb, x, z, act, lg);
                            for (int64_t h = 0; h < H; h++) {
                                float *dst[R];
                                for (int i = 0; i < R; i++) {
                                    if (nvis[i] == 0) { p[i * H + h] = splat(0.0f); dst[i] = junk; continue; }
                                    const int64_t at = (r + i - r0) * H + h;
                                    float *oh = o + at * d;
                                    const vf li = lg[i * H + h];
                                    const float mx = hmax(li);
                                    if (mx > m[at]) { /* online softmax: rescale what the row has summed */
                                        const float alpha = expf(m[at] - mx);
                                        l[at] *= alpha;
                                        for (int64_t c = 0; c < d; c++) oh[c] *= alpha;
                                        m[at] = mx;
                                    }
                                    const vf pv = vexp(li - splat(m[at]));
                                    l[at] += hsum(pv);
                                    p[i * H + h] = pv;
                                    dst[i] = oh;
                                }
                                rows_add(dst, p + h, H, nvis, a.v + ((b * H + h) * a.Nk + j0) * d, d);
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
    free(zb);
    (void)threads;
    return failed ? -1 : 0;
}

/* Gradients. Shared (unique writes): dq [B, H, Nq, d]; with dbias_ts == 0 also dbias (full form).
 * Per thread (thread strides *_ts): dk, dv [B, H, Nk, d]; dw1 [D, C]; db1 [D]; dw2t [D, H]; db2 [H];
 * dbias (Toeplitz form, indexed like the bias). All must be zeroed by the caller. Items go to threads
 * round robin (static schedule, chunk 1): fixed per thread, so the per-thread sums and the caller's sum
 * over threads repeat bit for bit, and long and short causal tiles alternate between threads. */
int dape_backward(const float *q, const float *kT, const float *k, const float *vT, const float *bias,
                  const float *w1, const float *b1, const float *w2t, const float *b2, const float *dout,
                  const float *lse, const float *delta, float *dq, float *dk, float *dv, float *dw1, float *db1,
                  float *dw2t, float *db2, float *dbias, const int64_t *strides, const int64_t *dims, float scale,
                  float slope, int64_t threads) {
    Args a = {q, kT, k, vT, NULL, bias, w1, b1, w2t, b2, 0};
    unpack(&a, dims, scale, slope);
    if (bad_arguments(&a)) return -2;
    const int64_t H = a.H, d = a.d, D = a.D, C = a.C, tiles = (a.Nq + TQ - 1) / TQ;
    const int64_t kv_ts = strides[0], dbias_ts = strides[1];
    /* a shared (full) dbias needs each query row in one item: batch rows inside; else one item per (tile, b) */
    const int64_t per_item = dbias_ts == 0 ? 1 : a.B, items = tiles * per_item;
    int failed = 0;
    float *zb = bias_units(&a, &failed);
    if (failed) return -1;
    const int64_t Cx = a.Cx, sh = a.sh;
#ifdef _OPENMP
#pragma omp parallel num_threads(dape_threads(threads))
#endif
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        /* per group: s, bb, lg, dx; weight gradients; per tile row (stash): x, dz, act, dl, p, scale ds */
        const size_t nvec = (size_t)(R * (3 * H + C) + D * C + D * H + D + H + TQ * (C + 2 * D + 3 * H));
        vf *s = vec_alloc(sizeof(vf) * nvec);
        float *junk = malloc(sizeof(float) * (size_t)d);
        /* with zb: per distance and unit, the sum of dz over the pairs at that distance */
        float *gz = zb ? calloc((size_t)(D * sh), sizeof(float)) : NULL;
        if (!s || !junk || (zb && !gz)) {
            failed = 1;
        } else {
            memset(s, 0, sizeof(vf) * nvec);
            vf *bb = s + R * H, *lg = bb + R * H, *dx = lg + R * H, *gw1 = dx + R * C, *gw2 = gw1 + D * C;
            vf *gb1 = gw2 + D * H, *gb2 = gb1 + D;
            vf *sx = gb2 + H, *sdz = sx + TQ * C, *sact = sdz + TQ * D, *sdl = sact + TQ * D, *sp = sdl + TQ * H;
            vf *sg = sp + TQ * H;
            float *tdk = dk + tid * kv_ts, *tdv = dv + tid * kv_ts, *tdb = dbias + tid * dbias_ts;
#ifdef _OPENMP
#pragma omp for schedule(static, 1)
#endif
            for (int64_t item = 0; item < items; item++) {
                const int64_t t = item / per_item;
                const int64_t r0 = (tiles - 1 - t) * TQ, r1 = r0 + TQ < a.Nq ? r0 + TQ : a.Nq;
                const int64_t kend = key_end(&a, r1);
                const int64_t b_end = per_item == 1 ? a.B : item % per_item + 1;
                for (int64_t b = per_item == 1 ? 0 : item % per_item; b < b_end; b++) {
                    for (int64_t j0 = 0; j0 < kend; j0 += LANES) {
                        const int64_t kvalid = min64(LANES, a.Nk - j0);
                        int64_t lo = -1, hi = 0; /* stash rows lo .. hi - 1 hold this chunk's groups */
                        for (int64_t r = r0; r < r1; r += R) {
                            int64_t rows[R], nvis[R];
                            if (!group(&a, r, r1, j0, rows, nvis)) continue;
                            const int64_t at = r - r0;
                            if (lo < 0) lo = at;
                            hi = at + R;
                            vf *x = sx + at * C, *dz = sdz + at * D, *act = sact + at * D, *dl = sdl + at * H;
                            vf *p = sp + at * H, *g = sg + at * H;
                            chunk_logits(&a, b, rows, j0, kvalid, nvis, s, bb, x, dz, act, lg);
                            vi keep[R];
                            for (int i = 0; i < R; i++) keep[i] = first_lanes(nvis[i]);
                            for (int64_t h = 0; h < H; h++) { /* p = exp(l - lse), dl = p (do . v - Delta) */
                                const float *dor[R];
                                for (int i = 0; i < R; i++) dor[i] = dout + ((b * H + h) * a.Nq + rows[i]) * d;
                                vf dp[R];
                                rows_dot(dp, dor, key_block(&a, a.vT, b * H + h, j0), d);
                                for (int i = 0; i < R; i++) {
                                    const int64_t row = (b * H + h) * a.Nq + rows[i];
                                    const vf pv = sel(keep[i], vexp(lg[i * H + h] - splat(lse[row])), splat(0.0f));
                                    const vf gl = sel(keep[i], pv * (dp[i] - splat(delta[row])), splat(0.0f));
                                    p[i * H + h] = pv;
                                    dl[i * H + h] = gl;
                                    gb2[h] += gl;
                                }
                            }
                            int64_t u = 0;
                            for (; u + 4 <= D; u += 4) { /* dz = LeakyReLU'(z) W2^T dl (over z, in place) */
                                vf acc[R][4];
                                for (int i = 0; i < R; i++)
                                    for (int tt = 0; tt < 4; tt++) acc[i][tt] = splat(0.0f);
                                for (int64_t h = 0; h < H; h++) {
                                    const float *w2 = a.w2t + u * H + h;
                                    const vf w0 = splat(w2[0]), w1v = splat(w2[H]), w2v = splat(w2[2 * H]);
                                    const vf w3 = splat(w2[3 * H]);
                                    for (int i = 0; i < R; i++) {
                                        const vf gl = dl[i * H + h];
                                        acc[i][0] += w0 * gl; acc[i][1] += w1v * gl; acc[i][2] += w2v * gl;
                                        acc[i][3] += w3 * gl;
                                    }
                                }
                                for (int i = 0; i < R; i++)
                                    for (int tt = 0; tt < 4; tt++) {
                                        const vf zz = dz[i * D + u + tt], da = acc[i][tt];
                                        dz[i * D + u + tt] = sel(zz > 0, da, da * slope);
                                        gb1[u + tt] += dz[i * D + u + tt];
                                    }
                            }
                            for (; u < D; u++)
                                for (int i = 0; i < R; i++) {
                                    vf da = splat(0.0f);
                                    for (int64_t h = 0; h < H; h++) da += splat(a.w2t[u * H + h]) * dl[i * H + h];
                                    const vf zz = dz[i * D + u];
                                    dz[i * D + u] = sel(zz > 0, da, da * slope);
                                    gb1[u] += dz[i * D + u];
                                }
                            int64_t c = 0;
                            for (; c + 4 <= Cx; c += 4) { /* dx = W1^T dz (the s part only with zb) */
                                vf acc[R][4];
                                for (int i = 0; i < R; i++)
                                    for (int tt = 0; tt < 4; tt++) acc[i][tt] = splat(0.0f);
                                for (int64_t uu = 0; uu < D; uu++) {
                                    const float *w = a.w1 + uu * C + c;
                                    const vf w0 = splat(w[0]), w1v = splat(w[1]), w2v = splat(w[2]), w3 = splat(w[3]);
                                    for (int i = 0; i < R; i++) {
                                        const vf dzu = dz[i * D + uu];
                                        acc[i][0] += w0 * dzu; acc[i][1] += w1v * dzu; acc[i][2] += w2v * dzu;
                                        acc[i][3] += w3 * dzu;
                                    }
                                }
                                for (int i = 0; i < R; i++)
                                    for (int tt = 0; tt < 4; tt++) dx[i * C + c + tt] = acc[i][tt];
                            }
                            for (; c < Cx; c++)
                                for (int i = 0; i < R; i++) {
                                    vf acc = splat(0.0f);
                                    for (int64_t uu = 0; uu < D; uu++) acc += splat(a.w1[uu * C + c]) * dz[i * D + uu];
                                    dx[i * C + c] = acc;
                                }
                            for (int i = 0; i < R; i++) { /* ds = dl + dx_s; dB = dl [residual] + dx_b */
                                for (int64_t h = 0; h < H; h++) {
                                    const vf gl = dl[i * H + h];
                                    g[i * H + h] = (gl + dx[i * C + h]) * scale;
                                    if (nvis[i] == 0) continue;
                                    const vf dxb = zb ? splat(0.0f) : dx[i * C + H + h]; /* zb: added below */
                                    const vf dbb = a.variant == ADD_RESIDUAL ? gl + dx[i * C + h]
                                                   : a.variant == CONCAT  ? dxb
                                                                          : gl + dxb;
                                    if (zb && a.variant == CONCAT) continue;
                                    float *db = tdb + h * a.sh + rows[i] * a.si + j0;
                                    if (kvalid == LANES) {
                                        store(db, load(db) + dbb);
                                    } else {
                                        for (int64_t e = 0; e < kvalid; e++) db[e] += dbb[e];
                                    }
                                }
                            }
                            for (int i = 0; zb && i < R; i++) { /* gz(i - j) += dz_ij */
                                if (nvis[i] == 0) continue;
                                for (int64_t uu = 0; uu < D; uu++) {
                                    float *gp = gz + a.off + uu * sh + rows[i] * a.si + j0;
                                    const vf dzu = dz[i * D + uu];
                                    if (kvalid == LANES) {
                                        store(gp, load(gp) + dzu);
                                    } else {
                                        for (int64_t e = 0; e < kvalid; e++) gp[e] += dzu[e];
                                    }
                                }
                            }
                            for (int64_t h = 0; h < H; h++) { /* dq_i += sum_j scale ds_ij k_j */
                                float *dst[R];
                                for (int i = 0; i < R; i++)
                                    dst[i] = nvis[i] ? dq + ((b * H + h) * a.Nq + rows[i]) * d : junk;
                                rows_add(dst, g + h, H, nvis, a.k + ((b * H + h) * a.Nk + j0) * d, d);
                            }
                        }
                        if (lo < 0) continue;
                        /* dk_j += sum_i scale ds_ij q_i, dv_j += sum_i p_ij do_i over the stashed rows; lanes a
                         * row does not see hold p = ds = 0 */
                        const int64_t np = hi - lo;
                        for (int64_t h = 0; h < H; h++) {
                            const int64_t base = (b * H + h) * a.Nq * d, kv = ((b * H + h) * a.Nk + j0) * d;
                            keys_add(tdk + kv, sg + lo * H + h, H, a.q + base, r0 + lo, r1 - 1, np, kvalid, d);
                            keys_add(tdv + kv, sp + lo * H + h, H, dout + base, r0 + lo, r1 - 1, np, kvalid, d);
                        }
                        rank_update(gw1, sdz + lo * D, sx + lo * C, np, D, C, a.Cx); /* dW1 += dz x^T (s part with zb) */
                        rank_update(gw2, sact + lo * D, sdl + lo * H, np, D, H, H); /* dW2^T += a dl^T */
                    }
                }
            }
            float *tw1 = dw1 + tid * D * C, *tb1 = db1 + tid * D, *tw2 = dw2t + tid * D * H, *tb2 = db2 + tid * H;
            for (int64_t i = 0; i < D * C; i++) tw1[i] += hsum(gw1[i]);
            for (int64_t i = 0; i < D * H; i++) tw2[i] += hsum(gw2[i]);
            for (int64_t i = 0; i < D; i++) tb1[i] += hsum(gb1[i]);
            for (int64_t i = 0; i < H; i++) tb2[i] += hsum(gb2[i]);
            if (zb) { /* dB_h(t) += sum_u W1[u, H + h] gz_u(t);  dW1[u, H + h] += sum_t gz_u(t) B_h(t) */
                const float *row = a.bias - a.off;
                float *dbrow = tdb - a.off;
                for (int64_t u = 0; u < D; u++) {
                    const float *gu = gz + u * sh;
                    for (int64_t h = 0; h < H; h++) {
                        const float w = a.w1[u * C + H + h], *bh = row + h * sh;
                        float *dh = dbrow + h * sh;
                        double acc = 0.0;
                        for (int64_t col = 0; col < sh; col++) {
                            dh[col] += w * gu[col];
                            acc += gu[col] * bh[col];
                        }
                        tw1[u * C + H + h] += (float)acc;
                    }
                }
            }
        }
        free(s);
        free(junk);
        free(gz);
    }
    free(zb);
    (void)threads;
    return failed ? -1 : 0;
}
