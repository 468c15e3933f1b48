// The factors of the group penalties' modes, shared by short_rows.cpp and indexed_runs.cpp
// (torchpenalty/short_rows.py puts it before either). As in torchpenalty/group_kernels.py: a
// divisor floored at the smallest normal number (CPU division treats subnormal divisors as 0);
// NaN propagates.
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>
#include <omp.h>

namespace {

constexpr int64_t kDecay = 0;    // w *= 1 - k / ||w_g||
constexpr int64_t kProx = 1;     // w *= max(0, 1 - t / ||w_g||), 0 where ||w_g|| <= t
constexpr int64_t kProject = 2;  // w *= target(||w_g||) / ||w_g||
constexpr int64_t kGrad = 3;     // g += k / ||w_g|| * w
constexpr int64_t kValue = 4;    // out = sum_g ||w_g||

inline double floored(double n) { return n < DBL_MIN ? DBL_MIN : n; }  // NaN stays NaN

// a float64 group's sum of squares at least this large lost nothing to underflow that matters
// (a square that underflowed is below 2**-122 of it), and one at most DBL_MAX had no square
// overflow; any other group (tiny, huge, zero, NaN) is summed again, scaled by its largest
// magnitude
constexpr double kPlainSquares = 0x1p-900;

// the two-pass kernels' `keep`: what happens to the groups' norms: computed only, also written
// to `norms` (loss mode's forward), or read from `norms` instead of computed (loss mode's
// backward: one pass less)
constexpr int64_t kComputeNorms = 0;
constexpr int64_t kWriteNorms = 1;
constexpr int64_t kReadNorms = 2;

// sign(x) as torch.sign: -1, 0 or 1 (0 for NaN, whose group is NaN through its norm already)
template <typename F, typename T>
inline F sign_of(T x) {
  return static_cast<F>((x > 0) - (x < 0));
}

// one weight x updated with its group's factor f, in type F: the gradient's term f * x (added
// to the gradient), decay's and the other modes' new weight f * x; with an L1 term (L1, its
// coefficient l1), the gradient adds l1 * sign(x) and decay subtracts it (prox passes x
// soft-thresholded already)
template <int64_t MODE, bool L1, typename F, typename T>
inline F updated(F f, T x, F l1) {
  F d = f * x;
  if constexpr (L1 && MODE == kGrad) d += l1 * sign_of<F>(x);
  if constexpr (L1 && MODE == kDecay) d -= l1 * sign_of<F>(x);
  return d;
}

// where a mode's per-weight result d goes, rounded once to the weights' type T: added to the
// gradient (g) in gradient mode, else written over the weight (w)
template <int64_t MODE, typename T>
inline void store(T* w, T* g, int64_t e, double d) {
  if constexpr (MODE == kGrad) {
    g[e] += static_cast<T>(d);
  } else {
    w[e] = static_cast<T>(d);
  }
}

// the soft threshold x - clamp(x, -t, t), as torchpenalty.group_kernels._soft: exactly 0 for
// |x| <= t
template <typename T>
inline T soft(T x, T t) {
  // two selects the compiler emits as max / min instructions: no branch on the weight's sign
  T c = x < -t ? -t : x;
  c = c > t ? t : c;
  return x - c;
}

// every division is unconditional (its divisor is floored, never 0) and every choice a select:
// loops over these factors vectorize, where a division inside a branch keeps them scalar
template <int64_t MODE>
inline double factor(double n, double k, const double* shared) {
  if constexpr (MODE == kDecay) {
    double q = k / floored(n);
    return 1.0 - (n == 0 ? 0.0 : q);
  } else if constexpr (MODE == kProx) {
    double f = 1.0 - k / floored(n);
    f = f < 0 ? 0.0 : f;
    return n <= k ? 0.0 : f;
  } else if constexpr (MODE == kProject) {
    double lo = shared[0], hi = shared[1], rate = shared[2];
    double clipped = n < lo ? lo : n;
    clipped = clipped > hi ? hi : clipped;
    double q = (rate * clipped + (1 - rate) * n) / floored(n);
    return n == 0 ? 1.0 : q;
  } else {
    double q = k / floored(n);
    return n == 0 ? 0.0 : q;
  }
}

// calls f with whether the penalty has an L1 term (its coefficient, shared[3], is not 0) as a
// compile-time constant (std::true_type or std::false_type)
template <typename F>
inline void with_l1(const double* shared, F&& f) {
  if (shared[3] != 0) return f(std::true_type{});
  return f(std::false_type{});
}

// calls f with the mode as a compile-time constant (std::integral_constant)
template <typename F>
inline void dispatch(int64_t mode, F&& f) {
  switch (mode) {
    case kDecay: return f(std::integral_constant<int64_t, kDecay>{});
    case kProx: return f(std::integral_constant<int64_t, kProx>{});
    case kProject: return f(std::integral_constant<int64_t, kProject>{});
    case kGrad: return f(std::integral_constant<int64_t, kGrad>{});
    case kValue: return f(std::integral_constant<int64_t, kValue>{});
  }
}

}  // namespace
