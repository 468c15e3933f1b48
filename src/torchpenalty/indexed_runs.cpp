// Kernels for irregular groups (torchpenalty/group_kernels.py's `Indexed`) of float32 or
// float64 weights: the flat tensor is cut into runs of WIDTH consecutive weights (one weight for
// scattered groups), and group_of[r] names run r's group. Compiled by torchpenalty/short_rows.py
// after group_factors.h, with WIDTH and SCALAR defined.
//
// Two passes, the floor of any group penalty: each thread sums the squares of its runs into its
// own per-group accumulator (float64, so no float32 square underflows or overflows; groups are
// few next to weights, so the accumulators stay in cache and need no atomics), the accumulators
// are added in thread order (the same norms on every call), then one pass scales each run by its
// group's factor, multiplied in float64 and rounded once. The compiled alternative materializes
// a float64 square per weight, scatters it with index_add and gathers a factor per weight. Loss
// mode keeps the groups' norms from its forward (8 bytes a group), so its backward is the
// scaling pass alone.
//
// float64 squares can underflow or overflow: where a group's plain sum may have lost precision
// (below kPlainSquares, or infinite, and not a group of exact zeros), every group of the tensor
// is summed again scaled by its largest magnitude (two passes more: rare weights only).
#include <algorithm>

namespace {

// a weight below this magnitude (and not 0) has a square below kPlainSquares
constexpr double kTiny = 0x1p-450;

// each group's largest magnitude (1 where that is 0 or not finite) into scale, then its norm,
// with squares scaled by it, into n: exact for float64 groups of tiny and huge weights
void scaled_norms(const SCALAR* w, const int32_t* group_of, int64_t runs, int64_t groups,
                  std::vector<double>& acc, double* scale, double* n) {
  int threads = omp_get_max_threads();
  std::fill(acc.begin(), acc.end(), 0.0);
#pragma omp parallel
  {
    double* mine = acc.data() + static_cast<size_t>(omp_get_thread_num()) * groups;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < runs; ++r)
      for (int j = 0; j < WIDTH; ++j) {
        double a = std::fabs(static_cast<double>(w[r * WIDTH + j]));
        double& m = mine[group_of[r]];
        m = a > m || a != a ? a : m;  // NaN wins, as in torch's amax
      }
#pragma omp for schedule(static)
    for (int64_t q = 0; q < groups; ++q) {
      double a = 0;
      for (int t = 0; t < threads; ++t) {
        double m = acc[static_cast<size_t>(t) * groups + q];
        a = m > a || m != m ? m : a;
      }
      scale[q] = (a > 0 && a <= DBL_MAX) ? a : 1.0;
    }
  }
  std::fill(acc.begin(), acc.end(), 0.0);
#pragma omp parallel
  {
    double* mine = acc.data() + static_cast<size_t>(omp_get_thread_num()) * groups;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < runs; ++r) {
      // divided, not multiplied by 1 / scale: that reciprocal overflows for a subnormal scale
      double sc = scale[group_of[r]], s = 0;
      for (int j = 0; j < WIDTH; ++j) {
        double x = static_cast<double>(w[r * WIDTH + j]) / sc;
        s += x * x;
      }
      mine[group_of[r]] += s;
    }
#pragma omp for schedule(static)
    for (int64_t q = 0; q < groups; ++q) {
      double s = 0;
      for (int t = 0; t < threads; ++t) s += acc[static_cast<size_t>(t) * groups + q];
      n[q] = scale[q] * std::sqrt(s);
    }
  }
}

// With an L1 term (L1, coefficient l1 = shared[3]: scale, lr or step times l1): the gradient
// adds l1 * sign(w), decay subtracts it, prox shrinks the groups of u = soft(w, l1), and the
// value also returns sum |w| (value[1]).
template <int64_t MODE, bool L1>
void run(SCALAR* __restrict__ w, SCALAR* __restrict__ g, const int32_t* __restrict__ group_of,
         const double* c, int64_t c_step, const double* shared, double k, double* value,
         double* norms, int64_t keep, int64_t runs, int64_t groups) {
  int threads = omp_get_max_threads();
  bool sums = keep != kReadNorms;
  const double l1 = shared[3];
  const SCALAR t = static_cast<SCALAR>(l1);
  constexpr bool kSoft = L1 && MODE == kProx;  // the weights read are soft(w, t)
  bool softened = false;  // soft(w, t) already written into w (a float64 rescan needed it)
  // the threads' accumulators; the first row becomes the groups' norms, then their factors
  std::vector<double> acc(static_cast<size_t>(sums ? threads : 1) * groups, 0.0);
  double* n = acc.data();
  if (sums) {
    bool tiny = false;  // a float64 weight whose square may have underflowed
    double abs_sum = 0;
#pragma omp parallel reduction(|| : tiny) reduction(+ : abs_sum)
    {
      double* mine = acc.data() + static_cast<size_t>(omp_get_thread_num()) * groups;
#pragma omp for schedule(static)
      for (int64_t r = 0; r < runs; ++r) {
        const SCALAR* x = w + r * WIDTH;
        double s = 0;
        for (int j = 0; j < WIDTH; ++j) {
          double v = static_cast<double>(kSoft ? soft(x[j], t) : x[j]);
          s += v * v;
          if constexpr (L1 && MODE == kValue) abs_sum += std::fabs(v);
          if constexpr (std::is_same_v<SCALAR, double>) tiny |= (v != 0) & (std::fabs(v) < kTiny);
        }
        mine[group_of[r]] += s;
      }
    }
    if constexpr (L1 && MODE == kValue) value[1] = abs_sum;
    bool rescan = false;
#pragma omp parallel for schedule(static) reduction(|| : rescan)
    for (int64_t q = 0; q < groups; ++q) {
      double s = 0;
      for (int t = 0; t < threads; ++t) s += acc[static_cast<size_t>(t) * groups + q];
      if constexpr (std::is_same_v<SCALAR, double>)
        rescan = rescan || (!(s >= kPlainSquares && s <= DBL_MAX) && !(s == 0 && !tiny));
      n[q] = std::sqrt(s);
    }
    if (rescan) {
      if constexpr (kSoft) {  // the rescan reads w: it must hold u
#pragma omp parallel for schedule(static)
        for (int64_t e = 0; e < runs * WIDTH; ++e) w[e] = soft(w[e], t);
        softened = true;
      }
      std::vector<double> scale(groups), exact(groups);
      scaled_norms(w, group_of, runs, groups, acc, scale.data(), exact.data());
      std::copy(exact.begin(), exact.end(), n);
    }
    if (keep == kWriteNorms) std::copy(n, n + groups, norms);
  } else {
    std::copy(norms, norms + groups, n);
  }
  if constexpr (MODE == kValue) {
    // summed per thread, then in thread order: the same value on every call
    std::vector<double> parts(threads, 0.0);
#pragma omp parallel
    {
      double part = 0;
#pragma omp for schedule(static)
      for (int64_t q = 0; q < groups; ++q) part += c[q * c_step] * n[q];
      parts[omp_get_thread_num()] = part;
    }
    double total = 0;
    for (int t = 0; t < threads; ++t) total += parts[t];
    value[0] = total;
  } else {
    const bool soft_here = kSoft && !softened;
#pragma omp parallel
    {
#pragma omp for schedule(static)
      for (int64_t q = 0; q < groups; ++q) n[q] = factor<MODE>(n[q], k * c[q * c_step], shared);
#pragma omp for schedule(static)
      for (int64_t r = 0; r < runs; ++r) {
        double fr = n[group_of[r]];
        for (int j = 0; j < WIDTH; ++j) {
          int64_t e = r * WIDTH + j;
          SCALAR v = soft_here ? soft(w[e], t) : w[e];
          store<MODE>(w, g, e, updated<MODE, L1>(fr, v, l1));
        }
      }
    }
  }
}

}  // namespace

// w, g: the weights and (gradient modes) their gradient; group_of: each run's group; c: each
// group's c_g (c_step 1), or one c_g for all (c_step 0); shared: lo, hi, rate (project), then
// the L1 term's coefficient (0: none; value: any non-zero); k: params[0], the mode's k or t
// before c_g; value: sum_g c_g ||w_g||, then sum |w| (value mode, with L1); norms, keep: the
// groups' norms, kept or given.
extern "C" void kernel(SCALAR* w, SCALAR* g, const int32_t* group_of, const double* c,
                       int64_t c_step, const double* shared, const double* params, double* value,
                       double* norms, int64_t keep, int64_t runs, int64_t groups, int64_t mode) {
  dispatch(mode, [&](auto m) {
    with_l1(shared, [&](auto l1) {
      run<m(), l1()>(w, g, group_of, c, c_step, shared, params[0], value, norms, keep, runs,
                     groups);
    });
  });
}
