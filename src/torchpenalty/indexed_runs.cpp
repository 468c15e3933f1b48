// Kernels for irregular groups of float32 weights (torchpenalty/group_kernels.py's `Indexed`):
// the flat tensor is cut into runs of WIDTH consecutive weights (one weight for scattered
// groups), and group_of[r] names run r's group. Compiled by torchpenalty/short_rows.py after
// group_factors.h, with WIDTH defined.
//
// Two passes, the floor of any group penalty: each thread sums the squares of its runs into its
// own per-group accumulator (float64: no square underflows or overflows; groups are few next to
// weights, so the accumulators stay in cache and need no atomics), the accumulators are added
// in thread order (the same norms on every call), then one pass scales each run by its group's
// factor, multiplied in float64 and rounded once. The compiled alternative materializes a
// float64 square per weight, scatters it with index_add and gathers a factor per weight. Loss
// mode keeps the groups' norms from its forward (8 bytes a group), so its backward is the
// scaling pass alone.
namespace {

// what happens to the groups' norms: computed only, also written to `norms` (loss mode's
// forward), or read from `norms` instead of computed (loss mode's backward: one pass less)
constexpr int64_t kComputeNorms = 0;
constexpr int64_t kWriteNorms = 1;
constexpr int64_t kReadNorms = 2;

template <int64_t MODE>
void run(float* __restrict__ w, float* __restrict__ g, const int32_t* __restrict__ group_of,
         const double* c, const double* shared, double k, double* value, double* norms,
         int64_t keep, int64_t runs, int64_t groups) {
  int threads = omp_get_max_threads();
  bool sums = keep != kReadNorms;
  std::vector<double> acc(static_cast<size_t>(sums ? threads : 1) * groups, 0.0);
  std::vector<double> parts(threads, 0.0);
#pragma omp parallel
  {
    int tid = omp_get_thread_num();
    if (sums) {
      double* mine = acc.data() + static_cast<size_t>(tid) * groups;
#pragma omp for schedule(static)
      for (int64_t r = 0; r < runs; ++r) {
        const float* x = w + r * WIDTH;
        double s = 0;
        for (int j = 0; j < WIDTH; ++j) s += static_cast<double>(x[j]) * x[j];
        mine[group_of[r]] += s;
      }
    }
    // acc's first row becomes the groups' norms (value) or factors (the other modes)
    double part = 0;
#pragma omp for schedule(static)
    for (int64_t q = 0; q < groups; ++q) {
      double n;
      if (sums) {
        double s = 0;
        for (int t = 0; t < threads; ++t) s += acc[static_cast<size_t>(t) * groups + q];
        n = std::sqrt(s);
        if (keep == kWriteNorms) norms[q] = n;
      } else {
        n = norms[q];
      }
      if constexpr (MODE == kValue) {
        part += c[q] * n;
      } else {
        acc[q] = factor<MODE>(n, k * c[q], shared);
      }
    }
    parts[tid] = part;
    if constexpr (MODE != kValue) {
      const double* f = acc.data();
#pragma omp for schedule(static)
      for (int64_t r = 0; r < runs; ++r) {
        double fr = f[group_of[r]];
        for (int j = 0; j < WIDTH; ++j) {
          int64_t e = r * WIDTH + j;
          if constexpr (MODE == kGrad) {
            g[e] += static_cast<float>(fr * w[e]);
          } else {
            w[e] = static_cast<float>(fr * w[e]);
          }
        }
      }
    }
  }
  if constexpr (MODE == kValue) {
    double total = 0;
    for (int t = 0; t < threads; ++t) total += parts[t];
    *value = total;
  }
}

}  // namespace

// w, g: the weights and (gradient modes) their gradient; group_of: each run's group; c: each
// group's c_g; shared: lo, hi, rate (project); k: params[0], the mode's k or t before c_g;
// value: sum_g c_g ||w_g|| (value mode); norms, keep: the groups' norms, kept or given.
extern "C" void kernel(float* w, float* g, const int32_t* group_of, const double* c,
                       const double* shared, const double* params, double* value, double* norms,
                       int64_t keep, int64_t runs, int64_t groups, int64_t mode) {
  dispatch(mode, [&](auto m) {
    run<m()>(w, g, group_of, c, shared, params[0], value, norms, keep, runs, groups);
  });
}
