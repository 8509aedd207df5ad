// Selective scan (Mamba S6) on the CPU: forward and adjoint (backward) passes, one channel d at a time.
//
// Built on first use by ssmad/ssm/cpu_kernel.py (a plain shared library called through ctypes: no Python or
// torch headers, so it compiles in about a second). The whole scan is here, with its elementwise parts fused into
// the recurrence's loop over time (each of them a full pass over B×D×L in PyTorch, together about as long as the
// recurrence itself): Δ = softplus(δ + bias), y = C·h + D·u, out = y·silu(z), and all their gradients.
//
// Layouts (all contiguous, row-major):
//   u, delta, z, out, gout, gu, gdelta, gz : B×D×L     delta = δ before bias and softplus
//   A                                      : D×N
//   Bt, Ct                                 : B×L×N     (B and C transposed so the N numbers of a step are adjacent)
//   Dv, bias, gD, gbias                    : D         (null when absent; gD, gbias written by the owner of d)
//   last, glast                            : B×D×N
//   gA                                     : D×N       (row d written only by the call that owns channel d)
//   gB, gC                                 : B×L×N     (accumulated over d: each channel range gets its own pair)
// Work is split into ranges of channels run in parallel (see the entry points at the end).
//
// Per channel the N states live in a small array, so the inner loops run over N contiguous numbers and
// vectorise. exp is computed as 2^(x·log2 e) by a polynomial (below) that vectorises; for double precision (used
// by the tests' gradient checks) it is std::exp. No exponent is ever negated: the recurrence is evaluated as
// written, h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t, so nothing overflows where the recurrence does not.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// 2^v for float, about 1e-7 relative error, in plain arithmetic that the compiler vectorises: v = k + f with k
// the nearest integer (by the 1.5·2^23 rounding trick: std::floor does not vectorise without -ffast-math) and
// |f| <= 1/2, 2^f by a degree-6 polynomial fitted in relative error on [-1/2, 1/2], 2^k written into the
// exponent bits. Below 2^-126 the result is 0 (no subnormals), above 2^127 it is +inf; NaN stays NaN (every
// comparison with NaN is false, so it passes the clamps and poisons the polynomial).
inline float exp2_poly(float v) {
    const float lo = -126.0f, hi = 127.0f, round = 12582912.0f;
    float vc = v < lo ? lo : v;
    vc = vc > hi ? hi : vc;
    const float k = (vc + round) - round;
    const float f = vc - k;
    float p = 1.534581180e-04f;
    p = p * f + 1.339993122e-03f;
    p = p * f + 9.618488958e-03f;
    p = p * f + 5.550328777e-02f;
    p = p * f + 2.402264689e-01f;
    p = p * f + 6.931472057e-01f;
    p = p * f + 1.000000001e+00f;
    const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    float r = p * scale;
    r = v < lo ? 0.0f : r;
    return v > hi ? INFINITY : r;
}

inline float exp_(float x) { return exp2_poly(x * 1.4426950408889634f); }
inline double exp_(double x) { return std::exp(x); }

// The elementwise parts run in loops over t of their own, before and after the recurrence, where they vectorise
// (for float: exp by the polynomial above, log1p by the series below); the recurrence then reads Δ_t from scratch.

// log1p(e) for e in [0, 1] as 2·atanh(s), s = e / (2 + e) <= 1/3, by its series to s^13 (relative error below
// 2e-8, exact relative precision for tiny e since 1 + e is never formed)
inline float log1p_unit(float e) {
    const float s = e / (2.0f + e), s2 = s * s;
    float p = 1.0f / 13.0f;
    p = p * s2 + 1.0f / 11.0f;
    p = p * s2 + 1.0f / 9.0f;
    p = p * s2 + 1.0f / 7.0f;
    p = p * s2 + 1.0f / 5.0f;
    p = p * s2 + 1.0f / 3.0f;
    p = p * s2 + 1.0f;
    return 2.0f * s * p;
}

// softplus as torch computes it (above 20 the identity), as max(x, 0) + log1p(exp(-|x|)), which never overflows
inline float softplus_(float x) {
    const float ax = x < 0.0f ? -x : x;
    const float r = (x > 0.0f ? x : 0.0f) + log1p_unit(exp_(-ax));
    return x > 20.0f ? x : r;
}
inline double softplus_(double x) { return x > 20.0 ? x : std::log1p(std::exp(x)); }

template <typename T>
inline T sigmoid_(T x) { return T(1) / (T(1) + exp_(-x)); }     // exp_(-x) = +inf for x << 0: gives 0

// Δ_t = softplus(δ_t + bias) (or δ_t + bias) of one row, into dts
template <typename T>
inline void deltas(const T* __restrict delta, T bd, bool softplus, int64_t L, T* __restrict dts) {
    if (softplus) {
#pragma omp simd
        for (int64_t t = 0; t < L; ++t) dts[t] = softplus_(delta[t] + bd);
    } else {
#pragma omp simd
        for (int64_t t = 0; t < L; ++t) dts[t] = delta[t] + bd;
    }
}

struct Options {
    bool softplus;
};

template <typename T>
void forward(const T* __restrict u, const T* __restrict delta, const T* __restrict bias, const T* __restrict Dv,
             const T* __restrict z, const T* __restrict A, const T* __restrict Bt, const T* __restrict Ct,
             T* __restrict out, T* __restrict last, Options opt,
             int64_t nb, int64_t nd, int64_t L, int64_t N, int64_t d0, int64_t d1) {
    std::vector<T> hv(N), dv(L), yv(L);
    T* __restrict h = hv.data();
    T* __restrict dts = dv.data();
    T* __restrict ys = yv.data();
    for (int64_t d = d0; d < d1; ++d) {
        const T* Ad = A + d * N;
        const T bd = bias ? bias[d] : T(0), Dd = Dv ? Dv[d] : T(0);
        for (int64_t b = 0; b < nb; ++b) {
            const int64_t row = (b * nd + d) * L;
            const T* ur = u + row;
            const T* Bb = Bt + b * L * N;
            const T* Cb = Ct + b * L * N;
            deltas(delta + row, bd, opt.softplus, L, dts);
            for (int64_t n = 0; n < N; ++n) h[n] = T(0);
            for (int64_t t = 0; t < L; ++t) {
                const T dt = dts[t], x = dt * ur[t];
                const T* Bs = Bb + t * N;
                const T* Cs = Cb + t * N;
                T acc = T(0);
#pragma omp simd reduction(+ : acc)
                for (int64_t n = 0; n < N; ++n) {
                    h[n] = exp_(dt * Ad[n]) * h[n] + x * Bs[n];
                    acc += Cs[n] * h[n];
                }
                ys[t] = acc;
            }
            T* o = out + row;
            if (z) {
                const T* zr = z + row;
#pragma omp simd
                for (int64_t t = 0; t < L; ++t) o[t] = (ys[t] + Dd * ur[t]) * zr[t] * sigmoid_(zr[t]);
            } else {
#pragma omp simd
                for (int64_t t = 0; t < L; ++t) o[t] = ys[t] + Dd * ur[t];
            }
            if (last)
                for (int64_t n = 0; n < N; ++n) last[(b * nd + d) * N + n] = h[n];
        }
    }
}

// The adjoint pass. Per (b, d): Δ_t, the states h_0..h_{L-1}, the decays a_t and the outputs C_t·h_t are
// recomputed into scratch (L·N numbers, small enough to stay in cache), then, from t = L-1 down to 0, with
// g_t = ∂loss/∂y_t (y = C·h + D·u, through the gate) and λ_t = ∂loss/∂h_t = a_{t+1} λ_{t+1} + C_t g_t:
//   ∂/∂(Δu)_t = Σ_n λ_t B_t,   ∂/∂B_t += λ_t Δ_t u_t,   ∂/∂C_t += g_t h_t,
//   g_a = λ_t a_t h_{t-1} (= ∂/∂(Δ_t A)),   ∂/∂Δ_t = Σ_n g_a A + u_t ∂/∂(Δu)_t,   ∂/∂A += g_a Δ_t,
//   ∂/∂u_t = Δ_t ∂/∂(Δu)_t + D g_t,   ∂/∂D += g_t u_t,   ∂/∂δ_t = ∂/∂Δ_t · σ(δ_t + bias) (softplus),
//   ∂/∂bias += ∂/∂δ_t,   ∂/∂z_t = ∂loss/∂out_t · y_t σ(z_t)(1 + z_t(1 - σ(z_t))).
template <typename T>
void backward(const T* __restrict u, const T* __restrict delta, const T* __restrict bias, const T* __restrict Dv,
              const T* __restrict z, const T* __restrict A, const T* __restrict Bt, const T* __restrict Ct,
              const T* __restrict gout, const T* __restrict glast, T* __restrict gu, T* __restrict gdelta,
              T* __restrict gz, T* __restrict gA, T* __restrict gB, T* __restrict gC, T* __restrict gD,
              T* __restrict gbias, Options opt, int64_t nb, int64_t nd, int64_t L, int64_t N, int64_t d0,
              int64_t d1) {
    std::vector<T> H((L + 1) * N), Aexp(L * N), lamv(N), gAv(N), dv(L), yv(L), gv(L), duv(L), dcv(L);
    T* __restrict lam = lamv.data();
    T* __restrict gAd = gAv.data();
    T* __restrict dts = dv.data();
    T* __restrict ys = yv.data();
    T* __restrict gs = gv.data();
    T* __restrict sdu = duv.data();
    T* __restrict sdc = dcv.data();
    for (int64_t n = 0; n < N; ++n) H[n] = T(0);                 // row 0: the zero state before step 0
    for (int64_t d = d0; d < d1; ++d) {
        const T* Ad = A + d * N;
        const T bd = bias ? bias[d] : T(0), Dd = Dv ? Dv[d] : T(0);
        T gDd = T(0), gbd = T(0);
        for (int64_t n = 0; n < N; ++n) gAd[n] = T(0);
        for (int64_t b = 0; b < nb; ++b) {
            const int64_t row = (b * nd + d) * L;
            const T* ur = u + row;
            const T* go = gout + row;
            const T* Bb = Bt + b * L * N;
            const T* Cb = Ct + b * L * N;
            T* gBb = gB + b * L * N;
            T* gCb = gC + b * L * N;
            deltas(delta + row, bd, opt.softplus, L, dts);
            for (int64_t t = 0; t < L; ++t) {
                const T dt = dts[t], x = dt * ur[t];
                const T* Bs = Bb + t * N;
                const T* Cs = Cb + t * N;
                T* as = Aexp.data() + t * N;
                const T* hp = H.data() + t * N;
                T* hs = H.data() + (t + 1) * N;
                T acc = T(0);
#pragma omp simd reduction(+ : acc)
                for (int64_t n = 0; n < N; ++n) {
                    as[n] = exp_(dt * Ad[n]);
                    hs[n] = as[n] * hp[n] + x * Bs[n];
                    acc += Cs[n] * hs[n];
                }
                ys[t] = acc;
            }
            if (z) {                                                   // the gate's backward, and g
                const T* zr = z + row;
                T* gzr = gz + row;
#pragma omp simd
                for (int64_t t = 0; t < L; ++t) {
                    const T zt = zr[t], sz = sigmoid_(zt);
                    gs[t] = go[t] * zt * sz;
                    gzr[t] = go[t] * (ys[t] + Dd * ur[t]) * sz * (T(1) + zt * (T(1) - sz));
                }
            } else {
                for (int64_t t = 0; t < L; ++t) gs[t] = go[t];
            }
            for (int64_t n = 0; n < N; ++n) lam[n] = glast ? glast[(b * nd + d) * N + n] : T(0);
            for (int64_t t = L - 1; t >= 0; --t) {
                const T g = gs[t], dt = dts[t], x = dt * ur[t];
                const T* Bs = Bb + t * N;
                const T* Cs = Cb + t * N;
                T* gBs = gBb + t * N;
                T* gCs = gCb + t * N;
                const T* as = Aexp.data() + t * N;
                const T* hp = H.data() + t * N;
                const T* hs = H.data() + (t + 1) * N;
                T s_du = T(0), s_dec = T(0);
#pragma omp simd reduction(+ : s_du, s_dec)
                for (int64_t n = 0; n < N; ++n) {
                    const T l = lam[n] + Cs[n] * g;
                    gCs[n] += g * hs[n];
                    gBs[n] += l * x;
                    s_du += l * Bs[n];
                    const T ga = l * as[n] * hp[n];
                    s_dec += ga * Ad[n];
                    gAd[n] += ga * dt;
                    lam[n] = l * as[n];
                }
                sdu[t] = s_du;
                sdc[t] = s_dec;
            }
            T* gur = gu + row;
            T* gdr = gdelta + row;
            const T* dr = delta + row;
            T gD_row = T(0), gb_row = T(0);
#pragma omp simd reduction(+ : gD_row, gb_row)
            for (int64_t t = 0; t < L; ++t) {
                gur[t] = sdu[t] * dts[t] + gs[t] * Dd;
                T gdt = sdc[t] + sdu[t] * ur[t];
                gdt = opt.softplus ? gdt * sigmoid_(dr[t] + bd) : gdt;       // softplus' = σ
                gdr[t] = gdt;
                gD_row += gs[t] * ur[t];
                gb_row += gdt;
            }
            gDd += gD_row;
            gbd += gb_row;
        }
        for (int64_t n = 0; n < N; ++n) gA[d * N + n] += gAd[n];
        if (gD) gD[d] = gDd;
        if (gbias) gbias[d] = gbd;
    }
}

}  // namespace

// The exported entry points run the channel ranges k0..k1-1 of a split into ``parts`` ranges (range k: channels
// [nd·k/parts, nd·(k+1)/parts)); range k of the backward accumulates into gB + k·B·L·N and gC + k·B·L·N. Built
// with OpenMP, one call runs its ranges on that many threads: in a process that has loaded PyTorch this is
// PyTorch's own OpenMP runtime (same soname), whose worker threads are already there. Built without it, the
// caller runs one range per call on threads of its own.
extern "C" {

int ssmad_scan_abi_version() { return 4; }

int ssmad_scan_openmp() {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

// Each entry point returns how many of its ranges failed (0: all done); a range fails only when its scratch memory
// cannot be allocated, and no C++ exception may cross into the caller (it would abort the Python process).
// ``softplus``: 0 or 1. Absent optional tensors (bias, D, z, last, glast, gz, gD, gbias) are null pointers.
#define SSMAD_EXPORT(T, suffix)                                                                                   \
    int ssmad_scan_forward_##suffix(const T* u, const T* delta, const T* bias, const T* Dv, const T* z,          \
                                    const T* A, const T* Bt, const T* Ct, T* out, T* last, int64_t softplus,     \
                                    int64_t nb, int64_t nd, int64_t L, int64_t N, int64_t parts, int64_t k0,     \
                                    int64_t k1) {                                                                 \
        int failed = 0;                                                                                           \
        const Options opt{softplus != 0};                                                                         \
        _Pragma("omp parallel for num_threads(k1 - k0) schedule(static, 1) if (k1 - k0 > 1) reduction(+ : failed)") \
        for (int64_t k = k0; k < k1; ++k) {                                                                       \
            try {                                                                                                 \
                forward<T>(u, delta, bias, Dv, z, A, Bt, Ct, out, last, opt, nb, nd, L, N, nd * k / parts,        \
                           nd * (k + 1) / parts);                                                                 \
            } catch (...) {                                                                                       \
                failed += 1;                                                                                      \
            }                                                                                                     \
        }                                                                                                         \
        return failed;                                                                                            \
    }                                                                                                             \
    int ssmad_scan_backward_##suffix(const T* u, const T* delta, const T* bias, const T* Dv, const T* z,         \
                                     const T* A, const T* Bt, const T* Ct, const T* gout, const T* glast, T* gu, \
                                     T* gdelta, T* gz, T* gA, T* gB, T* gC, T* gD, T* gbias, int64_t softplus,   \
                                     int64_t nb, int64_t nd, int64_t L, int64_t N, int64_t parts, int64_t k0,    \
                                     int64_t k1) {                                                                \
        int failed = 0;                                                                                           \
        const Options opt{softplus != 0};                                                                         \
        _Pragma("omp parallel for num_threads(k1 - k0) schedule(static, 1) if (k1 - k0 > 1) reduction(+ : failed)") \
        for (int64_t k = k0; k < k1; ++k) {                                                                       \
            try {                                                                                                 \
                backward<T>(u, delta, bias, Dv, z, A, Bt, Ct, gout, glast, gu, gdelta, gz, gA,                    \
                            gB + k * nb * L * N, gC + k * nb * L * N, gD, gbias, opt, nb, nd, L, N,               \
                            nd * k / parts, nd * (k + 1) / parts);                                                \
            } catch (...) {                                                                                       \
                failed += 1;                                                                                      \
            }                                                                                                     \
        }                                                                                                         \
        return failed;                                                                                            \
    }

SSMAD_EXPORT(float, f32)
SSMAD_EXPORT(double, f64)

}  // extern "C"
