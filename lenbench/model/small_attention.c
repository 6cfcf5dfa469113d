/* Softmax attention for short sequences and small heads on CPU (lenbench, issue 9).
 *
 * Forward, per (batch b, head h) with a float bias B_h broadcast over the batch:
 *   s_ij = scale * q_i . k_j + B_hij,   p_ij = exp(s_ij - lse_i),   lse_i = log sum_j exp(s_ij),
 *   o_i  = sum_j p_ij v_j.
 * Backward (p recomputed from lse):
 *   D_i = do_i . o_i,   ds_ij = p_ij (do_i . v_j - D_i),   dB_hij = sum_b ds_ij,
 *   dq_i = scale sum_j ds_ij k_j,   dk_j = scale sum_i ds_ij q_i,   dv_j = sum_i p_ij do_i.
 *
 * Each (b, h) pair is one work item; threads split the items. Scores are built a query row at a
 * time with 16 keys per vector (the softmax needs two horizontal reductions per row), and every
 * product over a sequence axis is a "broadcast a score times a D-wide row" loop over several rows
 * at once, so no horizontal reduction runs per output element. Vectors are GCC/Clang vector
 * extensions: the compiler maps them to the machine's SIMD width.
 *
 * Views: q, o, do, dq are [B, H, Tq, D]; k, v, dk, dv are [B, H, Tk, D], each given by three
 * element strides (batch, head, time) with the last axis contiguous. The bias is [H or 1, Tq, Kp]
 * contiguous, Kp = Tk rounded up to 16, with -inf in the padding columns (it also masks the padding
 * keys; head stride 0 shares one bias across heads); dbias is [H, Tq, Kp]; lse is [B * H, Tq].
 * D must be a multiple of 8, at most 64. Entry points return 0, -1 (out of memory) or -2 (sizes or
 * strides no tensor can have: checked before any memory is read; the Python wrapper checks the
 * tensors themselves against these sizes first).
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_THREADS 64
#define LANES 16
#define MAX_CHUNKS 8 /* D <= 64 */

typedef float vf __attribute__((vector_size(4 * LANES)));
typedef int32_t vi __attribute__((vector_size(4 * LANES)));
typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));

static inline vf splat(float x) { return (vf){0} + x; }

static inline vf vmax(vf a, vf b) {
    vi m = a > b;
    return (vf)((m & (vi)a) | (~m & (vi)b));
}

static inline float hsum(vf v) {
    v8 lo, hi;
    memcpy(&lo, &v, sizeof lo);
    memcpy(&hi, (char *)&v + sizeof lo, sizeof hi);
    v8 a = lo + hi;
    v4 c, d;
    memcpy(&c, &a, sizeof c);
    memcpy(&d, (char *)&a + sizeof c, sizeof d);
    v4 e = c + d;
    return (e[0] + e[2]) + (e[1] + e[3]);
}

static inline float hmax(vf v) {
    float m = v[0];
    for (int l = 1; l < LANES; l++) m = v[l] > m ? v[l] : m;
    return m;
}

/* exp(x): 2^n e^r, n = round(x log2 e), r = x - n ln 2 split in two parts, degree-6 polynomial
 * (relative error ~2e-7); x < -87 (and -inf) gives 0, x > 88 is clamped, NaN gives NaN. */
static inline vf vexp(vf x) {
    const vf lo = splat(-87.0f), hi = splat(88.0f), shift = splat(12582912.0f); /* 1.5 * 2^23 */
    vi under = x < lo;
    vf xc = vmax(x, lo);
    xc = (vf)(((vi)(xc > hi) & (vi)hi) | (~(vi)(xc > hi) & (vi)xc));
    vf n = (xc * 1.44269504088896341f + shift) - shift;
    vf r = xc - n * 0.693145751953125f;
    r = r - n * 1.428606765330187045e-06f;
    vf p = splat(1.0f / 720.0f);
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
    vi nan = x != x; /* NaN stays NaN: a NaN score must reach the loss, never become 0 */
    vf y = (vf)(~under & (vi)(p * (vf)bits));
    return (vf)((nan & (vi)x) | (~nan & (vi)y));
}

typedef struct { const float *base; int64_t sb, sh, st; } View;
typedef struct { float *base; int64_t sb, sh, st; } OutView;

typedef struct {
    View q, k, v, o, dout;
    OutView out, dq, dk, dv;
    const float *bias;
    float *lse, *dbias;
    int64_t bias_sh, B, H, Tq, Tk, D, first, last;
    float scale;
    int failed;
} Job;

static inline const float *at(const View *v, int64_t b, int64_t h, int64_t t) {
    return v->base + b * v->sb + h * v->sh + t * v->st;
}
static inline float *oat(const OutView *v, int64_t b, int64_t h, int64_t t) {
    return v->base + b * v->sb + h * v->sh + t * v->st;
}

/* acc[r] += sum_c A[r * ars + c * acs] * X[c, :] for r < nr: one X row load serves nr FMAs. */
static inline __attribute__((always_inline)) void accumulate(
    v8 acc[][MAX_CHUNKS], const float *restrict A, int64_t ars, int64_t acs, const float *restrict X, int64_t xs,
    int64_t inner, const int64_t nr, const int64_t D) {
    for (int64_t c = 0; c < inner; c++) {
        const float *xc = X + c * xs;
        for (int64_t u = 0; u < D / 8; u++) {
            v8 x;
            memcpy(&x, xc + 8 * u, sizeof x);
            for (int64_t r = 0; r < nr; r++) acc[r][u] += A[r * ars + c * acs] * x;
        }
    }
}

/* C[r, :] = sum_c A[r * ars + c * acs] * X[c, :] for r < rows, c < inner; X rows of D floats at
 * stride xs, C rows at stride cs. ROWS independent accumulator rows hide the FMA latency. */
static inline __attribute__((always_inline)) void contract(
    float *restrict C, int64_t cs, const float *restrict A, int64_t ars, int64_t acs,
    const float *restrict X, int64_t xs, int64_t rows, int64_t inner, const int64_t D) {
    enum { ROWS = 4 };
    const int64_t chunks = D / 8;
    for (int64_t r0 = 0; r0 < rows; r0 += ROWS) {
        const int64_t nr = rows - r0 < ROWS ? rows - r0 : ROWS;
        v8 acc[ROWS][MAX_CHUNKS];
        for (int64_t r = 0; r < ROWS; r++)
            for (int64_t c = 0; c < chunks; c++) acc[r][c] = (v8){0};
        if (nr == ROWS) /* a constant row count: the compiler keeps the accumulators in registers */
            accumulate(acc, A + r0 * ars, ars, acs, X, xs, inner, ROWS, D);
        else
            accumulate(acc, A + r0 * ars, ars, acs, X, xs, inner, nr, D);
        for (int64_t r = 0; r < nr; r++)
            for (int64_t u = 0; u < chunks; u++) memcpy(C + (r0 + r) * cs + 8 * u, &acc[r][u], sizeof(v8));
    }
}

typedef struct { float *mem; vf *kT, *vT, *p, *ds; int64_t kc; } Scratch;

/* kT, vT: [D][kc] vectors of 16 keys (padding keys are zero); p, ds: [Tq][kc] vectors. */
static int scratch_init(Scratch *s, int64_t Tq, int64_t Tk, int64_t D) {
    s->kc = (Tk + LANES - 1) / LANES;
    const size_t vecs = (size_t)(2 * D * s->kc + 2 * Tq * s->kc);
    s->mem = aligned_alloc(64, vecs * sizeof(vf));
    if (!s->mem) return -1;
    vf *m = (vf *)s->mem;
    s->kT = m;
    s->vT = m + D * s->kc;
    s->p = s->vT + D * s->kc;
    s->ds = s->p + Tq * s->kc;
    return 0;
}

static void load_transposed(vf *restrict dst, const View *src, int64_t b, int64_t h, int64_t Tk, int64_t kc,
                            int64_t D) {
    float *f = (float *)dst;
    memset(f, 0, sizeof(vf) * (size_t)(D * kc));
    for (int64_t j = 0; j < Tk; j++) {
        const float *row = at(src, b, h, j);
        for (int64_t d = 0; d < D; d++) f[d * kc * LANES + j] = row[d];
    }
}

/* Chunk c (16 keys) of query row i's scores: bias + sum_d (scale q_i[d]) k[., d]; the bias row is
 * padded to whole chunks with -inf, which also masks the padding keys. */
static inline __attribute__((always_inline)) vf score_chunk(
    const vf *restrict qs, const vf *restrict kT, const float *restrict brow, int64_t c, int64_t kc,
    const int64_t D) {
    vf acc;
    memcpy(&acc, brow + c * LANES, sizeof acc);
    for (int64_t d = 0; d < D; d++) acc += qs[d] * kT[d * kc + c];
    return acc;
}

static inline __attribute__((always_inline)) void splat_row(vf *restrict qs, const float *restrict x, float scale,
                                                            const int64_t D) {
    for (int64_t d = 0; d < D; d++) qs[d] = splat(scale * x[d]);
}

static inline __attribute__((always_inline)) void forward_items(Job *job, const int64_t D) {
    const int64_t H = job->H, Tq = job->Tq, Tk = job->Tk;
    Scratch sc;
    if (scratch_init(&sc, Tq, Tk, D)) {
        job->failed = 1;
        return;
    }
    const int64_t kc = sc.kc;
    for (int64_t item = job->first; item < job->last; item++) {
        const int64_t b = item / H, h = item % H;
        load_transposed(sc.kT, &job->k, b, h, Tk, kc, D);
        for (int64_t i = 0; i < Tq; i++) {
            vf *restrict s = sc.p + i * kc, qs[D];
            const float *brow = job->bias + h * job->bias_sh + i * kc * LANES;
            splat_row(qs, at(&job->q, b, h, i), job->scale, D);
            vf mv = splat(-INFINITY);
            for (int64_t c = 0; c < kc; c++) {
                s[c] = score_chunk(qs, sc.kT, brow, c, kc, D);
                mv = vmax(mv, s[c]);
            }
            const float m = hmax(mv);
            vf lv = (vf){0};
            for (int64_t c = 0; c < kc; c++) {
                s[c] = vexp(s[c] - m);
                lv += s[c];
            }
            const float l = hsum(lv);
            const vf inv = splat(1.0f / l);
            for (int64_t c = 0; c < kc; c++) s[c] *= inv;
            job->lse[item * Tq + i] = m + logf(l);
        }
        const View *v = &job->v;
        const OutView *o = &job->out;
        contract(oat(o, b, h, 0), o->st, (const float *)sc.p, kc * LANES, 1, at(v, b, h, 0), v->st, Tq, Tk, D);
    }
    free(sc.mem);
}

static inline __attribute__((always_inline)) void backward_items(Job *job, const int64_t D) {
    const int64_t H = job->H, Tq = job->Tq, Tk = job->Tk;
    Scratch sc;
    if (scratch_init(&sc, Tq, Tk, D)) {
        job->failed = 1;
        return;
    }
    const int64_t kc = sc.kc, ps = kc * LANES;
    for (int64_t item = job->first; item < job->last; item++) {
        const int64_t b = item / H, h = item % H;
        float *dbias = job->dbias ? job->dbias + h * Tq * kc * LANES : NULL;
        load_transposed(sc.kT, &job->k, b, h, Tk, kc, D);
        load_transposed(sc.vT, &job->v, b, h, Tk, kc, D);
        for (int64_t i = 0; i < Tq; i++) {
            const float *doi = at(&job->dout, b, h, i), *oi = at(&job->o, b, h, i);
            const float *brow = job->bias + h * job->bias_sh + i * kc * LANES;
            float di = 0.0f;
            for (int64_t d = 0; d < D; d++) di += doi[d] * oi[d];
            vf qs[D], dos[D];
            splat_row(qs, at(&job->q, b, h, i), job->scale, D);
            splat_row(dos, doi, 1.0f, D);
            const vf lse = splat(job->lse[item * Tq + i]), div = splat(di), scale = splat(job->scale);
            vf *restrict p = sc.p + i * kc, *restrict ds = sc.ds + i * kc;
            float *restrict dbrow = dbias ? dbias + i * kc * LANES : NULL;
            for (int64_t c = 0; c < kc; c++) {
                const vf pc = vexp(score_chunk(qs, sc.kT, brow, c, kc, D) - lse);
                vf dp = (vf){0};
                for (int64_t d = 0; d < D; d++) dp += dos[d] * sc.vT[d * kc + c];
                const vf g = pc * (dp - div);
                if (dbrow) {
                    vf acc;
                    memcpy(&acc, dbrow + c * LANES, sizeof acc);
                    acc += g;
                    memcpy(dbrow + c * LANES, &acc, sizeof acc);
                }
                p[c] = pc;
                ds[c] = g * scale;
            }
        }
        const float *P = (const float *)sc.p, *S = (const float *)sc.ds;
        const View *q = &job->q, *k = &job->k, *dout = &job->dout;
        const OutView *dq = &job->dq, *dk = &job->dk, *dv = &job->dv;
        contract(oat(dv, b, h, 0), dv->st, P, 1, ps, at(dout, b, h, 0), dout->st, Tk, Tq, D);
        contract(oat(dk, b, h, 0), dk->st, S, 1, ps, at(q, b, h, 0), q->st, Tk, Tq, D);
        contract(oat(dq, b, h, 0), dq->st, S, ps, 1, at(k, b, h, 0), k->st, Tq, Tk, D);
    }
    free(sc.mem);
}

#define DISPATCH(CALL)        \
    switch (job->D) {         \
    case 8: CALL(8); break;   \
    case 16: CALL(16); break; \
    case 32: CALL(32); break; \
    default: CALL(job->D); break; \
    }

static void *forward_thread(void *arg) {
    Job *job = arg;
#define FWD(d) forward_items(job, d)
    DISPATCH(FWD)
    return NULL;
}

static void *backward_thread(void *arg) {
    Job *job = arg;
#define BWD(d) backward_items(job, d)
    DISPATCH(BWD)
    return NULL;
}

/* Runs fn on each job: on the OpenMP runtime's threads when built with -fopenmp (in a process that
 * already loaded PyTorch's libgomp, that is the same pool as PyTorch's, so no threads spin against
 * each other), else on pthreads. */
static void run_jobs(Job *jobs, int64_t threads, void *(*fn)(void *)) {
    const int64_t items = jobs[0].B * jobs[0].H;
    for (int64_t t = 0; t < threads; t++) {
        jobs[t].first = items * t / threads;
        jobs[t].last = items * (t + 1) / threads;
    }
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static, 1)
    for (int64_t t = 0; t < threads; t++) fn(&jobs[t]);
#else
    pthread_t ids[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int64_t t = 1; t < threads; t++) started[t] = pthread_create(&ids[t], NULL, fn, &jobs[t]) == 0;
    fn(&jobs[0]);
    for (int64_t t = 1; t < threads; t++) {
        if (started[t]) pthread_join(ids[t], NULL);
        else fn(&jobs[t]);
    }
#endif
}

static int any_failed(const Job *jobs, int64_t threads) {
    for (int64_t t = 0; t < threads; t++)
        if (jobs[t].failed) return -1;
    return 0;
}

static View view(const float *base, const int64_t *s) { return (View){base, s[0], s[1], s[2]}; }
static OutView oview(float *base, const int64_t *s) { return (OutView){base, s[0], s[1], s[2]}; }

static int64_t clamp_threads(int64_t threads, int64_t items) {
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > items) threads = items;
    return threads < 1 ? 1 : threads;
}

/* 1 when dims or the first 3 * views strides cannot describe tensors this kernel reads. */
static int bad_arguments(const int64_t *dims, const int64_t *strides, int views) {
    if (dims[0] < 1 || dims[1] < 1 || dims[2] < 1 || dims[3] < 1) return 1;
    if (dims[4] < 8 || dims[4] % 8 || dims[4] > 8 * MAX_CHUNKS) return 1;
    const int64_t kp = (dims[3] + LANES - 1) / LANES * LANES;
    if (dims[5] != 0 && dims[5] < dims[2] * kp) return 1; /* heads of the bias would overlap */
    for (int i = 0; i < 3 * views; i++)
        if (strides[i] < 0) return 1;
    return 0;
}

/* dims = {B, H, Tq, Tk, D, bias head stride}; strides = 3 per view: q, k, v, out. */
int small_attention_forward(const float *q, const float *k, const float *v, const float *bias, float *out,
                            float *lse, const int64_t *dims, const int64_t *strides, float scale,
                            int64_t threads) {
    if (bad_arguments(dims, strides, 4)) return -2;
    Job jobs[MAX_THREADS];
    threads = clamp_threads(threads, dims[0] * dims[1]);
    for (int64_t t = 0; t < threads; t++)
        jobs[t] = (Job){.q = view(q, strides), .k = view(k, strides + 3), .v = view(v, strides + 6),
                        .out = oview(out, strides + 9), .bias = bias, .lse = lse,
                        .B = dims[0], .H = dims[1], .Tq = dims[2], .Tk = dims[3], .D = dims[4], .bias_sh = dims[5], .scale = scale};
    run_jobs(jobs, threads, forward_thread);
    return any_failed(jobs, threads);
}

/* strides = 3 per view: q, k, v, o, dout, dq, dk, dv. dbias: NULL or zeroed [H, Tq, Kp]. */
int small_attention_backward(const float *q, const float *k, const float *v, const float *o, const float *dout,
                             const float *bias, const float *lse, float *dq, float *dk, float *dv, float *dbias,
                             const int64_t *dims, const int64_t *strides, float scale, int64_t threads) {
    if (bad_arguments(dims, strides, 8)) return -2;
    Job jobs[MAX_THREADS];
    threads = clamp_threads(threads, dims[0] * dims[1]);
    const size_t nb = (size_t)(dims[1] * dims[2] * ((dims[3] + LANES - 1) / LANES * LANES));
    float *priv = NULL;
    if (dbias && threads > 1) {
        priv = calloc(nb * (size_t)(threads - 1), sizeof(float));
        if (!priv) threads = 1;
    }
    for (int64_t t = 0; t < threads; t++)
        jobs[t] = (Job){.q = view(q, strides), .k = view(k, strides + 3), .v = view(v, strides + 6),
                        .o = view(o, strides + 9), .dout = view(dout, strides + 12),
                        .dq = oview(dq, strides + 15), .dk = oview(dk, strides + 18), .dv = oview(dv, strides + 21),
                        .bias = bias, .lse = (float *)lse,
                        .dbias = dbias ? (t == 0 ? dbias : priv + nb * (size_t)(t - 1)) : NULL,
                        .B = dims[0], .H = dims[1], .Tq = dims[2], .Tk = dims[3], .D = dims[4], .bias_sh = dims[5], .scale = scale};
    run_jobs(jobs, threads, backward_thread);
    if (priv) {
        for (int64_t t = 1; t < threads; t++)
            for (size_t e = 0; e < nb; e++) dbias[e] += priv[nb * (size_t)(t - 1) + e];
        free(priv);
    }
    return any_failed(jobs, threads);
}
