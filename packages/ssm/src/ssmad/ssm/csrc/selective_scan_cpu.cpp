// Selective scan (Mamba S6) on the CPU: forward and adjoint (backward) passes, one channel d at a time.
//
// Built on first use by ssmad/ssm/cpu_kernel.py (a plain shared library called through ctypes: no Python or
// torch headers, so it compiles in about a second). Everything that is not the recurrence (Δ bias and softplus,
// the D·u skip, the silu gate and their gradients) stays in PyTorch; this file does the O(B·D·L·N) part.
//
// Layouts (all contiguous, row-major):
//   u, dl, y, gy, gdu, gdec : B×D×L      dl = Δ after bias and softplus
//   A                       : D×N
//   Bt, Ct                  : B×L×N      (B and C transposed so that the N numbers of one step are adjacent)
//   last, glast             : B×D×N
//   gA                      : D×N        (row d written only by the call that owns channel d)
//   gB, gC                  : B×L×N      (accumulated over d: each channel range gets its own pair)
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

template <typename T>
void forward(const T* __restrict u, const T* __restrict dl, const T* __restrict A, const T* __restrict Bt,
             const T* __restrict Ct, T* __restrict y, T* __restrict last,
             int64_t nb, int64_t nd, int64_t L, int64_t N, int64_t d0, int64_t d1) {
    std::vector<T> hv(N), av(N);
    T* __restrict h = hv.data();
    T* __restrict a = av.data();
    for (int64_t d = d0; d < d1; ++d) {
        const T* Ad = A + d * N;
        for (int64_t b = 0; b < nb; ++b) {
            const int64_t row = (b * nd + d) * L;
            const T* Bb = Bt + b * L * N;
            const T* Cb = Ct + b * L * N;
            for (int64_t n = 0; n < N; ++n) h[n] = T(0);
            for (int64_t t = 0; t < L; ++t) {
                const T dt = dl[row + t], x = dt * u[row + t];
                const T* Bs = Bb + t * N;
                const T* Cs = Cb + t * N;
                for (int64_t n = 0; n < N; ++n) a[n] = exp_(dt * Ad[n]);
                T acc = T(0);
#pragma omp simd reduction(+ : acc)
                for (int64_t n = 0; n < N; ++n) {
                    h[n] = a[n] * h[n] + x * Bs[n];
                    acc += Cs[n] * h[n];
                }
                y[row + t] = acc;
            }
            if (last)
                for (int64_t n = 0; n < N; ++n) last[(b * nd + d) * N + n] = h[n];
        }
    }
}

// The adjoint pass. Per (b, d): the states h_0..h_{L-1} and decays a_t are recomputed into scratch (L·N each,
// small enough to stay in cache), then, from t = L-1 down to 0, with λ_t = ∂loss/∂h_t = a_{t+1} λ_{t+1} + C_t g_t:
//   ∂/∂(Δu)_t = Σ_n λ_t B_t,   ∂/∂B_t += λ_t Δ_t u_t,   ∂/∂C_t += g_t h_t,
//   g_a = λ_t a_t h_{t-1} (= ∂/∂(Δ_t A)),   ∂/∂Δ_t (through the decay) = Σ_n g_a A,   ∂/∂A += g_a Δ_t.
template <typename T>
void backward(const T* __restrict u, const T* __restrict dl, const T* __restrict A, const T* __restrict Bt,
              const T* __restrict Ct, const T* __restrict gy, const T* __restrict glast, T* __restrict gdu,
              T* __restrict gdec, T* __restrict gA, T* __restrict gB, T* __restrict gC,
              int64_t nb, int64_t nd, int64_t L, int64_t N, int64_t d0, int64_t d1) {
    std::vector<T> H((L + 1) * N), Aexp(L * N), lamv(N), gAv(N);
    T* __restrict lam = lamv.data();
    T* __restrict gAd = gAv.data();
    for (int64_t n = 0; n < N; ++n) H[n] = T(0);                 // row 0: the zero state before step 0
    for (int64_t d = d0; d < d1; ++d) {
        const T* Ad = A + d * N;
        for (int64_t n = 0; n < N; ++n) gAd[n] = T(0);
        for (int64_t b = 0; b < nb; ++b) {
            const int64_t row = (b * nd + d) * L;
            const T* Bb = Bt + b * L * N;
            const T* Cb = Ct + b * L * N;
            T* gBb = gB + b * L * N;
            T* gCb = gC + b * L * N;
            for (int64_t t = 0; t < L; ++t) {
                const T dt = dl[row + t], x = dt * u[row + t];
                const T* Bs = Bb + t * N;
                T* as = Aexp.data() + t * N;
                const T* hp = H.data() + t * N;
                T* hs = H.data() + (t + 1) * N;
                for (int64_t n = 0; n < N; ++n) as[n] = exp_(dt * Ad[n]);
                for (int64_t n = 0; n < N; ++n) hs[n] = as[n] * hp[n] + x * Bs[n];
            }
            for (int64_t n = 0; n < N; ++n) lam[n] = glast ? glast[(b * nd + d) * N + n] : T(0);
            for (int64_t t = L - 1; t >= 0; --t) {
                const T g = gy[row + t], dt = dl[row + t], x = dt * u[row + t];
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
                gdu[row + t] = s_du;
                gdec[row + t] = s_dec;
            }
        }
        for (int64_t n = 0; n < N; ++n) gA[d * N + n] += gAd[n];
    }
}

}  // namespace

// The exported entry points run the channel ranges k0..k1-1 of a split into ``parts`` ranges (range k: channels
// [nd·k/parts, nd·(k+1)/parts)); range k of the backward accumulates into gB + k·B·L·N and gC + k·B·L·N. Built
// with OpenMP, one call runs its ranges on that many threads: in a process that has loaded PyTorch this is
// PyTorch's own OpenMP runtime (same soname), whose worker threads are already there. Built without it, the
// caller runs one range per call on threads of its own.
extern "C" {

int ssmad_scan_abi_version() { return 3; }

int ssmad_scan_openmp() {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

// Each entry point returns how many of its ranges failed (0: all done); a range fails only when its scratch memory
// cannot be allocated, and no C++ exception may cross into the caller (it would abort the Python process).
#define SSMAD_EXPORT(T, suffix)                                                                                   \
    int ssmad_scan_forward_##suffix(const T* u, const T* dl, const T* A, const T* Bt, const T* Ct, T* y,         \
                                    T* last, int64_t nb, int64_t nd, int64_t L, int64_t N, int64_t parts,        \
                                    int64_t k0, int64_t k1) {                                                     \
        int failed = 0;                                                                                           \
        _Pragma("omp parallel for num_threads(k1 - k0) schedule(static, 1) if (k1 - k0 > 1) reduction(+ : failed)") \
        for (int64_t k = k0; k < k1; ++k) {                                                                       \
            try {                                                                                                 \
                forward<T>(u, dl, A, Bt, Ct, y, last, nb, nd, L, N, nd * k / parts, nd * (k + 1) / parts);        \
            } catch (...) {                                                                                       \
                failed += 1;                                                                                      \
            }                                                                                                     \
        }                                                                                                         \
        return failed;                                                                                            \
    }                                                                                                             \
    int ssmad_scan_backward_##suffix(const T* u, const T* dl, const T* A, const T* Bt, const T* Ct,              \
                                     const T* gy, const T* glast, T* gdu, T* gdec, T* gA, T* gB, T* gC,          \
                                     int64_t nb, int64_t nd, int64_t L, int64_t N, int64_t parts, int64_t k0,    \
                                     int64_t k1) {                                                                \
        int failed = 0;                                                                                           \
        _Pragma("omp parallel for num_threads(k1 - k0) schedule(static, 1) if (k1 - k0 > 1) reduction(+ : failed)") \
        for (int64_t k = k0; k < k1; ++k) {                                                                       \
            try {                                                                                                 \
                backward<T>(u, dl, A, Bt, Ct, gy, glast, gdu, gdec, gA, gB + k * nb * L * N, gC + k * nb * L * N, \
                            nb, nd, L, N, nd * k / parts, nd * (k + 1) / parts);                                  \
            } catch (...) {                                                                                       \
                failed += 1;                                                                                      \
            }                                                                                                     \
        }                                                                                                         \
        return failed;                                                                                            \
    }

SSMAD_EXPORT(float, f32)
SSMAD_EXPORT(double, f64)

}  // extern "C"
