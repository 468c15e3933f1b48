// Kernels for groups of column blocks (torchpenalty/group_kernels.py's `Layout` with cols) of
// float32 weights: the tensor viewed as (rows, cols), whose cols / width blocks of `width`
// consecutive columns are each one group across all rows (groups="cols": a conv's input
// channel, a Linear's input feature). Compiled by torchpenalty/short_rows.py after
// group_factors.h, with SCALAR defined.
//
// Two passes at memory speed: each thread sums the squares of its rows into its own float64
// accumulator per column (a contiguous vector add per row, where reducing each column down the
// rows would read strided), the columns' sums are added in thread order and then per block (the
// same norms on every call), and one pass scales each row by its columns' factors, multiplied
// in float64 and rounded once. Loss mode keeps the groups' norms from its forward, so its
// backward is the scaling pass alone.
#include <algorithm>

namespace {

// With an L1 term (L1, coefficient l1 = shared[3]: scale, lr or step times l1): the gradient
// adds l1 * sign(w), decay subtracts it, prox shrinks the groups of u = soft(w, l1), and the
// value also returns sum |w| (value[1]).
template <int64_t MODE, bool L1>
void run(SCALAR* __restrict__ w, SCALAR* __restrict__ g, const double* shared, double k,
         double* value, double* norms, int64_t keep, int64_t rows, int64_t cols, int64_t width) {
  const int64_t groups = cols / width;
  const int threads = omp_get_max_threads();
  const double l1 = shared[3];
  const SCALAR t = static_cast<SCALAR>(l1);
  constexpr bool kSoft = L1 && MODE == kProx;  // the weights read are soft(w, t)
  std::vector<double> n(groups);
  if (keep != kReadNorms) {
    std::vector<double> acc(static_cast<size_t>(threads) * cols, 0.0);
    double abs_sum = 0;
#pragma omp parallel reduction(+ : abs_sum)
    {
      double* __restrict__ mine = acc.data() + static_cast<size_t>(omp_get_thread_num()) * cols;
#pragma omp for schedule(static)
      for (int64_t r = 0; r < rows; ++r) {
        const SCALAR* __restrict__ x = w + r * cols;
        double a = 0;
#pragma omp simd reduction(+ : a)
        for (int64_t j = 0; j < cols; ++j) {
          double v = static_cast<double>(kSoft ? soft(x[j], t) : x[j]);
          mine[j] += v * v;
          if constexpr (L1 && MODE == kValue) a += std::fabs(v);
        }
        abs_sum += a;
      }
    }
    if constexpr (L1 && MODE == kValue) value[1] = abs_sum;
    for (int64_t q = 0; q < groups; ++q) {
      double s = 0;
      for (int64_t j = q * width; j < (q + 1) * width; ++j)
        for (int u = 0; u < threads; ++u) s += acc[static_cast<size_t>(u) * cols + j];
      n[q] = std::sqrt(s);
    }
    if (keep == kWriteNorms) std::copy(n.begin(), n.end(), norms);
  } else {
    std::copy(norms, norms + groups, n.begin());
  }
  if constexpr (MODE == kValue) {
    double total = 0;
    for (int64_t q = 0; q < groups; ++q) total += n[q];
    value[0] = total;
  } else {
    std::vector<double> f(cols);  // each column's group factor
    for (int64_t q = 0; q < groups; ++q) {
      double fq = factor<MODE>(n[q], k, shared);
      for (int64_t j = q * width; j < (q + 1) * width; ++j) f[j] = fq;
    }
    const double* __restrict__ fc = f.data();
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      SCALAR* __restrict__ x = w + r * cols;
      SCALAR* __restrict__ y = g + r * cols;
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) {
        SCALAR v = kSoft ? soft(x[j], t) : x[j];
        store<MODE>(x, y, j, updated<MODE, L1>(fc[j], v, l1));
      }
    }
  }
}

}  // namespace

// w, g: the weights (rows, cols) and (gradient modes) their gradient; shared: lo, hi, rate
// (project), then the L1 term's coefficient (0: none; value: any non-zero); params[0]: the
// mode's k or t with c_g; value: sum_g ||w_g||, then sum |w| (value mode, with L1); norms,
// keep: the groups' norms, kept or given; width: columns per group.
extern "C" void kernel(SCALAR* w, SCALAR* g, const double* shared, const double* params,
                       double* value, double* norms, int64_t keep, int64_t rows, int64_t cols,
                       int64_t width, int64_t mode) {
  dispatch(mode, [&](auto m) {
    with_l1(shared, [&](auto l1) {
      run<m(), l1()>(w, g, shared, params[0], value, norms, keep, rows, cols, width);
    });
  });
}
