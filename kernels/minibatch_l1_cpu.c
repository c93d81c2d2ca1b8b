/* minibatch_l1 on CPU, forward and first-order backward, fused (see minibatch_l1.py for the math
 * and _cpu.py for how this file is compiled and called).
 *
 * Layout: x is (B, C, N) contiguous, so that for one (b, c) the N values are one vector over j.
 * Each pair (i, j > i) is visited once: K is symmetric and sign(d) antisymmetric, so one K_ij
 * serves row i and row j. Per row i the work is a few passes over arrays of length N - i - 1
 * (distances, then K, then one pass per channel), each a plain loop the compiler vectorizes;
 * the only scratch is two such arrays per call. The forward may also store K's upper triangle
 * (B x N(N-1)/2 values, row i of kernel b at b*P + i*N - i*(i+1)/2) for the backward to reuse;
 * given NULL instead, the backward recomputes K.
 *
 * A call handles the kernels b0 <= b < b1, so the caller can split B across threads.
 */
#include <math.h>
#include <stdlib.h>

#if defined(__x86_64__) && defined(__GLIBC__) && defined(MINIBATCH_L1_LIBMVEC)
/* glibc's libmvec has vector variants of exp/expf; math.h announces them only under -ffast-math,
 * whose -shared link would also switch the whole process to flush-to-zero. Announce them here. */
__attribute__((simd("notinbranch"))) float expf(float);
__attribute__((simd("notinbranch"))) double exp(double);
#endif

#define DEFINE_MINIBATCH_L1(T, SUFFIX, EXP, FABS)                                                 \
                                                                                                  \
    /* dist[j] = sum_c |x[c, i] - x[c, j]| and K, for j in (i, N). */                             \
    static void pair_row_##SUFFIX(const T *x, long N, long C, long i, T *dist, T *k)              \
    {                                                                                             \
        long n = N - i - 1;                                                                       \
        const T *row = x + i + 1;                                                                 \
        for (long j = 0; j < n; j++) dist[j] = 0;                                                 \
        for (long c = 0; c < C; c++) {                                                            \
            const T xi = x[c * N + i];                                                            \
            const T *xc = row + c * N;                                                            \
            for (long j = 0; j < n; j++) dist[j] += FABS(xi - xc[j]);                             \
        }                                                                                         \
        for (long j = 0; j < n; j++) k[j] = EXP(-dist[j]);                                        \
    }                                                                                             \
                                                                                                  \
    /* o: (B, N). */                                                                              \
    int minibatch_l1_fwd_##SUFFIX(const T *x, T *o, T *kept, long B, long N, long C,             \
                                  int exclude_self, long b0, long b1)                             \
    {                                                                                             \
        T *dist = malloc(2 * (size_t)(N > 0 ? N : 1) * sizeof(T));                                \
        if (!dist) return 1;                                                                      \
        const long P = N * (N - 1) / 2;                                                           \
        for (long b = b0; b < b1; b++) {                                                          \
            const T *xb = x + b * C * N;                                                          \
            T *ob = o + b * N;                                                                    \
            for (long i = 0; i < N; i++) ob[i] = exclude_self ? 0 : 1; /* K_ii = exp(0) */         \
            for (long i = 0; i < N; i++) {                                                        \
                long n = N - i - 1;                                                               \
                T *k = kept ? kept + b * P + i * N - i * (i + 1) / 2 : dist + N;                  \
                pair_row_##SUFFIX(xb, N, C, i, dist, k);                                          \
                T *oj = ob + i + 1;                                                               \
                T acc = 0;                                                                        \
                for (long j = 0; j < n; j++) {                                                    \
                    acc += k[j];                                                                  \
                    oj[j] += k[j];                                                                \
                }                                                                                 \
                ob[i] += acc;                                                                     \
            }                                                                                     \
        }                                                                                         \
        free(dist);                                                                               \
        return 0;                                                                                 \
    }                                                                                             \
                                                                                                  \
    /* w[j] = (g_i + g_j) K_ij for j in (i, N), K from the forward's triangle kb or recomputed. */\
    static void weights_##SUFFIX(const T *xb, const T *gb, const T *kb, long N, long C, long i,\
                                 T *dist, T *w)                                               \
    {                                                                                         \
        long n = N - i - 1;                                                                   \
        if (kb) {                                                                             \
            const T *k = kb + i * N - i * (i + 1) / 2;                                        \
            for (long j = 0; j < n; j++) w[j] = k[j];                                         \
        } else {                                                                              \
            pair_row_##SUFFIX(xb, N, C, i, dist, w);                                          \
        }                                                                                     \
        const T gi = gb[i];                                                                   \
        const T *gj = gb + i + 1;                                                             \
        for (long j = 0; j < n; j++) w[j] *= gi + gj[j];                                      \
    }                                                                                         \
                                                                                              \
    /* g: (B, N) upstream gradient on o; kept: the forward's K or NULL; dx: (B, C, N), set to \
       dx[b, c, i] = -sum_j (g_i + g_j) K_ij sign(x_i - x_j). The diagonal has sign 0. Rows go\
       two at a time: each x[c, j] loaded and each dx[c, j] updated once for both. */         \
    int minibatch_l1_bwd_##SUFFIX(const T *x, const T *g, const T *kept, T *dx, long B, long N,\
                                  long C, long b0, long b1)                                   \
    {                                                                                         \
        T *dist = malloc(3 * (size_t)(N > 0 ? N : 1) * sizeof(T));                            \
        if (!dist) return 1;                                                                  \
        T *w0 = dist + N, *w1 = dist + 2 * N;                                                 \
        const long P = N * (N - 1) / 2;                                                       \
        for (long b = b0; b < b1; b++) {                                                      \
            const T *xb = x + b * C * N;                                                      \
            const T *gb = g + b * N;                                                          \
            const T *kb = kept ? kept + b * P : NULL;                                         \
            T *dxb = dx + b * C * N;                                                          \
            for (long e = 0; e < C * N; e++) dxb[e] = 0;                                      \
            for (long i = 0; i + 1 < N; i += 2) { /* the last row's pairs all came before */  \
                weights_##SUFFIX(xb, gb, kb, N, C, i, dist, w0);     /* j = i+1 ... */        \
                weights_##SUFFIX(xb, gb, kb, N, C, i + 1, dist, w1); /* j = i+2 ... */        \
                const long n = N - i - 2;                                                     \
                for (long c = 0; c < C; c++) {                                                \
                    const T x0 = xb[c * N + i], x1 = xb[c * N + i + 1];                       \
                    const T *xc = xb + c * N + i + 2;                                         \
                    T *dxc = dxb + c * N + i + 2;                                             \
                    const T t01 = w0[0] * (T)((x0 > x1) - (x0 < x1));                         \
                    T acc0 = t01, acc1 = -t01;                                                \
                    for (long j = 0; j < n; j++) {                                            \
                        const T t0 = w0[j + 1] * (T)((x0 > xc[j]) - (x0 < xc[j]));            \
                        const T t1 = w1[j] * (T)((x1 > xc[j]) - (x1 < xc[j]));                \
                        acc0 += t0;                                                           \
                        acc1 += t1;                                                           \
                        dxc[j] += t0 + t1; /* sign(x_j - x_i) = -sign(x_i - x_j) */           \
                    }                                                                         \
                    dxb[c * N + i] -= acc0;                                                   \
                    dxb[c * N + i + 1] -= acc1;                                               \
                }                                                                             \
            }                                                                                 \
        }                                                                                     \
        free(dist);                                                                           \
        return 0;                                                                             \
    }

DEFINE_MINIBATCH_L1(float, f32, expf, fabsf)
DEFINE_MINIBATCH_L1(double, f64, exp, fabs)
