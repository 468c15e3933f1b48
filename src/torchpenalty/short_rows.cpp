// Single-pass kernels for groups of a few consecutive weights (rows of WIDTH, a 3x3 kernel
// window: 9), compiled by torchpenalty/short_rows.py after group_factors.h, with WIDTH and
// SCALAR defined.
//
// Each block of rows is read once while it is in cache: its norms, its factors, then its
// update, so a mode costs one pass over the weights (two over weights and gradients) instead of
// a norms pass plus an update pass. The arithmetic is the fused kernels'
// (torchpenalty/group_kernels.py): float32 squares summed in float64; float64 rows of tiny or
// huge entries scaled by their largest magnitude first; a divisor floored at the smallest
// normal number (CPU division treats subnormal divisors as 0); the factor rounded to the
// weights' dtype where it fits. NaN propagates as there.
namespace {

// rows per block: a block's square roots, factors and updates run as vectors across its rows
constexpr int kBlock = 16;

// a row's squares are summed in this many partial sums (a fixed tree the compiler runs as
// vector operations) where its width is a multiple of it
constexpr int kLanes = 8;

// sum of a row's squares in float64: in lanes for whole vectors, else in order (a tensor's
// rows after its last whole block)
template <typename T>
inline double row_squares(const T* x) {
  if constexpr (WIDTH % kLanes == 0) {
    double acc[kLanes] = {0};
    for (int j = 0; j < WIDTH; j += kLanes)
      for (int l = 0; l < kLanes; ++l) acc[l] += static_cast<double>(x[j + l]) * x[j + l];
    for (int half = kLanes / 2; half > 0; half /= 2)
      for (int l = 0; l < half; ++l) acc[l] += acc[l + half];
    return acc[0];
  }
  double s = 0;
  for (int j = 0; j < WIDTH; ++j) s += static_cast<double>(x[j]) * x[j];
  return s;
}

// ||x|| of a float64 row scaled by its largest magnitude first (1 where that is 0 or not
// finite), so that no square underflows or overflows
inline double scaled_norm(const double* x) {
  double a = 0;
  for (int j = 0; j < WIDTH; ++j) a = std::fabs(x[j]) > a ? std::fabs(x[j]) : a;
  double scale = (a > 0 && a <= DBL_MAX) ? a : 1.0, s = 0;
  // divided, not multiplied by 1 / scale: that reciprocal overflows for a subnormal scale
  for (int j = 0; j < WIDTH; ++j) s += (x[j] / scale) * (x[j] / scale);
  return scale * std::sqrt(s);
}

// n = sqrt(s), as vectors; float64 rows whose sum of squares `s` may have lost precision to
// underflow or overflowed: summed again scaled
template <typename T>
inline void finish_norms(const T* w, int count, const double* s, double* n) {
#pragma omp simd
  for (int b = 0; b < kBlock; ++b) n[b] = std::sqrt(s[b]);
  if constexpr (sizeof(T) == sizeof(double)) {
    for (int b = 0; b < count; ++b)
      if (!(s[b] >= kPlainSquares && s[b] <= DBL_MAX)) n[b] = scaled_norm(w + b * WIDTH);
  }
}

// ||row|| of each of `count` rows from w (count <= kBlock), into n. Float32 squares are
// summed in float64, where none underflows or overflows. Rows of whole vectors are summed row
// by row; shorter ones across the rows of a whole block (strided loads within a few cache
// lines) rather than in one horizontal reduction per row.
template <typename T>
inline void norms(const T* w, int count, double* n) {
  if constexpr (WIDTH % kLanes != 0) {
    if (count == kBlock) {
      double s[kBlock] = {0};  // its own array, kept in registers across the loop
      for (int j = 0; j < WIDTH; ++j) {
#pragma omp simd
        for (int b = 0; b < kBlock; ++b) {
          double v = w[b * WIDTH + j];
          s[b] += v * v;
        }
      }
      finish_norms(w, kBlock, s, n);
      return;
    }
  }
  double s[kBlock] = {0};
  for (int b = 0; b < count; ++b) s[b] = row_squares(w + b * WIDTH);
  finish_norms(w, count, s, n);
}

constexpr double kScalarMax = sizeof(SCALAR) == sizeof(float) ? FLT_MAX : DBL_MAX;

// w *= f or g += f * w over `count` rows, each row's factor spelled out per weight so that the
// update runs as whole vectors over the block; in type F, then rounded once to the weights'.
// With an L1 term (L1): g += f * w + l1 * sign(w) (l1 = scale * l1), w = f * w - l1 * sign(w)
// (decay: l1 = lr * l1); prox soft-thresholds the block before its norms instead.
template <int64_t MODE, bool L1, typename F, int COUNT>
inline void update(SCALAR* __restrict__ w, SCALAR* __restrict__ g, const double* f, int count,
                   double l1) {
  if constexpr (COUNT > 0) count = COUNT;  // a whole block: fixed trip counts
  F fe[kBlock * WIDTH];
  for (int b = 0; b < count; ++b)
    for (int j = 0; j < WIDTH; ++j) fe[b * WIDTH + j] = static_cast<F>(f[b]);
  const F l1f = static_cast<F>(l1);
  if constexpr (MODE == kGrad) {
#pragma omp simd
    for (int e = 0; e < count * WIDTH; ++e)
      g[e] += static_cast<SCALAR>(updated<MODE, L1>(fe[e], w[e], l1f));
  } else {
#pragma omp simd
    for (int e = 0; e < count * WIDTH; ++e)
      w[e] = static_cast<SCALAR>(updated<MODE, L1>(fe[e], w[e], l1f));
  }
}

// loss mode: the value that also keeps each row's norm (in `kept`, the weights' dtype), and
// the gradient that divides by it instead of norming the rows again; a float32 block with a
// kept norm outside float32's normal range (tiny or huge rows, NaN) is normed again
constexpr int64_t kValueKeep = 5;
constexpr int64_t kGradKept = 6;

// one block of `count` consecutive rows starting at row r0; with an L1 term, `l1` is its
// coefficient (scale, lr or step times l1) and `abs_lanes` (kBlock of them) gather sum |w|
// (value)
template <int64_t MODE, bool L1>
inline void block(SCALAR* __restrict__ w, SCALAR* __restrict__ g, SCALAR* __restrict__ kept,
                  int64_t r0, int count, double k, const double* shared, double l1, double& sum,
                  double* __restrict__ abs_lanes) {
  SCALAR* __restrict__ rows = w + r0 * WIDTH;
  double n[kBlock] = {0}, f[kBlock];
  constexpr int64_t kApplied = MODE == kGradKept ? kGrad : MODE;
  if constexpr (L1 && MODE == kProx) {  // u = soft(w, t_l1), then the group shrink of u
    const SCALAR t = static_cast<SCALAR>(l1);
#pragma omp simd
    for (int e = 0; e < count * WIDTH; ++e) rows[e] = soft(rows[e], t);
  }
  if constexpr (L1 && (MODE == kValue || MODE == kValueKeep)) {
    // |w| summed in kBlock float64 lanes (a whole block is WIDTH runs of kBlock weights): no
    // horizontal reduction per block; the lanes are summed once per tensor
    if (count == kBlock) {
      for (int j = 0; j < WIDTH; ++j)
#pragma omp simd
        for (int l = 0; l < kBlock; ++l) abs_lanes[l] += std::fabs(rows[j * kBlock + l]);
    } else {
      for (int e = 0; e < count * WIDTH; ++e) abs_lanes[0] += std::fabs(rows[e]);
    }
  }
  if constexpr (MODE == kGradKept) {
    bool again = false;
    for (int b = 0; b < count; ++b) {
      n[b] = kept[r0 + b];
      if constexpr (sizeof(SCALAR) == sizeof(float))
        again |= n[b] != 0 && !(n[b] >= FLT_MIN && n[b] <= FLT_MAX);
    }
    if (again) norms(rows, count, n);
  } else {
    norms(rows, count, n);
  }
  if constexpr (MODE == kValue || MODE == kValueKeep) {
    for (int b = 0; b < count; ++b) sum += n[b];
    if constexpr (MODE == kValueKeep)
      for (int b = 0; b < count; ++b) kept[r0 + b] = static_cast<SCALAR>(n[b]);
    return;
  }
#pragma omp simd
  for (int b = 0; b < kBlock; ++b) f[b] = factor<kApplied>(n[b], k, shared);
  bool narrow = true;  // every factor fits the weights' dtype
  for (int b = 0; b < count; ++b) narrow &= std::fabs(f[b]) <= kScalarMax;
  if (!narrow) {  // a row of subnormal weights: its 1 / ||w_g|| exceeds float32's range
    update<kApplied, L1, double, 0>(rows, g + r0 * WIDTH, f, count, l1);
  } else if (count == kBlock) {
    update<kApplied, L1, SCALAR, kBlock>(rows, g + r0 * WIDTH, f, count, l1);
  } else {
    update<kApplied, L1, SCALAR, 0>(rows, g + r0 * WIDTH, f, count, l1);
  }
}

// groups of one weight: ||w_g|| = |w| exactly (no square, no scaling), so elements [begin,
// end) run as one flat vector loop rather than blocks of 16 one-weight rows
template <int64_t MODE, bool L1>
inline void single_weights(SCALAR* __restrict__ w, SCALAR* __restrict__ g, int64_t begin,
                           int64_t end, double k, const double* shared, double l1, double& sum,
                           double* __restrict__ abs_lanes) {
  const SCALAR t = static_cast<SCALAR>(l1);
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t e = begin; e < end; ++e) {
    SCALAR x = w[e];
    if constexpr (L1 && MODE == kProx) x = soft(x, t);
    double n = std::fabs(static_cast<double>(x));
    if constexpr (MODE == kValue) {
      s += n;
    } else {
      store<MODE>(w, g, e, updated<MODE, L1>(factor<MODE>(n, k, shared), x, l1));
    }
  }
  sum += s;
  if constexpr (L1) abs_lanes[0] += s;  // the weights' |w| are their norms
}

// elements per chunk of the flat loop (`single_weights`)
constexpr int64_t kChunk = 4096;

template <int64_t MODE, bool L1>
void run(const int64_t* w_ptrs, const int64_t* g_ptrs, const int64_t* kept_ptrs,
         const int64_t* rows, const double* params, const double* shared, double* out,
         int64_t count) {
  constexpr bool kSums = MODE == kValue || MODE == kValueKeep;
  // per thread and tensor (sums of norms, then of |w|), summed in thread order afterwards:
  // the same totals on every call
  int threads = omp_get_max_threads();
  std::vector<double> partial(kSums ? 2 * count * threads : 0, 0.0);
  const double l1 = shared[3];
#pragma omp parallel
  {
    int tid = omp_get_thread_num();
    for (int64_t i = 0; i < count; ++i) {
      SCALAR* w = reinterpret_cast<SCALAR*>(w_ptrs[i]);
      SCALAR* g = reinterpret_cast<SCALAR*>(g_ptrs[i]);
      SCALAR* kept = reinterpret_cast<SCALAR*>(kept_ptrs[i]);
      double k = params[i], sum = 0, abs_lanes[kBlock] = {0};
      if constexpr (WIDTH == 1 && MODE != kValueKeep && MODE != kGradKept) {
        int64_t chunks = (rows[i] + kChunk - 1) / kChunk;
#pragma omp for schedule(static) nowait
        for (int64_t c = 0; c < chunks; ++c) {
          int64_t end = (c + 1) * kChunk < rows[i] ? (c + 1) * kChunk : rows[i];
          single_weights<MODE, L1>(w, g, c * kChunk, end, k, shared, l1, sum, abs_lanes);
        }
      } else {
        int64_t blocks = (rows[i] + kBlock - 1) / kBlock;
#pragma omp for schedule(static) nowait
        for (int64_t blk = 0; blk < blocks; ++blk) {
          int64_t r0 = blk * kBlock;
          int n = static_cast<int>(rows[i] - r0 < kBlock ? rows[i] - r0 : kBlock);
          block<MODE, L1>(w, g, kept, r0, n, k, shared, l1, sum, abs_lanes);
        }
      }
      if constexpr (kSums) {
        double abs_sum = 0;
        for (int l = 0; l < kBlock; ++l) abs_sum += abs_lanes[l];
        partial[(tid * count + i) * 2] = sum;
        partial[(tid * count + i) * 2 + 1] = abs_sum;
      }
    }
  }
  if constexpr (kSums) {
    for (int64_t i = 0; i < count; ++i) {
      double total = 0, abs_total = 0;
      for (int t = 0; t < threads; ++t) {
        total += partial[(t * count + i) * 2];
        abs_total += partial[(t * count + i) * 2 + 1];
      }
      out[i] = total;
      out[count + i] = abs_total;
    }
  }
}

}  // namespace

// w_ptrs, g_ptrs, kept_ptrs: each tensor's data, its gradient (gradient modes) and its rows'
// kept norms (loss mode); rows: its row count; params: its k (decay, gradient) or t (prox);
// shared: lo, hi, rate (project), then the L1 term's coefficient (0: none; value: any
// non-zero); out: each tensor's sum of norms, then each one's sum |w| (value, with L1).
extern "C" void kernel(const int64_t* w_ptrs, const int64_t* g_ptrs, const int64_t* kept_ptrs,
                       const int64_t* rows, const double* params, const double* shared,
                       double* out, int64_t count, int64_t mode) {
  auto call = [&](auto m) {
    with_l1(shared, [&](auto l1) {
      run<m(), l1()>(w_ptrs, g_ptrs, kept_ptrs, rows, params, shared, out, count);
    });
  };
  if (mode == kValueKeep) return call(std::integral_constant<int64_t, kValueKeep>{});
  if (mode == kGradKept) return call(std::integral_constant<int64_t, kGradKept>{});
  dispatch(mode, call);
}
