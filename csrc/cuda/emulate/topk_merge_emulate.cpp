// Runs the CUDA topk_merge kernel (../topk_merge.cu) on the CPU, one std::thread per CUDA
// thread with a std::barrier for __syncthreads, and compares it with a sort of the union.
// Used by tests/ops/test_topk_merge_cuda.py so the kernel's logic (bitonic networks,
// candidate buffer, flushes, shared-memory races between barriers) is checked on machines
// without a GPU. Build: g++ -std=c++20 -O1 -pthread topk_merge_emulate.cpp
// Usage: topk_merge_emulate [threads_per_block=256]; prints "ok N" or the first mismatch.
#define PYDIFFGEN_CUDA_EMULATE 1

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <limits>
#include <random>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static
#define CUDART_INF_F std::numeric_limits<float>::infinity()
#define CUDART_INF std::numeric_limits<double>::infinity()

struct Dim3 {
  unsigned int x = 0;
};
thread_local Dim3 threadIdx;
Dim3 blockIdx, blockDim, gridDim;  // one block runs at a time
static std::barrier<>* g_barrier = nullptr;
static std::vector<unsigned char> g_smem;
inline void __syncthreads() { g_barrier->arrive_and_wait(); }
inline int atomicAdd(int* p, int v) { return std::atomic_ref<int>(*p).fetch_add(v); }
inline unsigned char* dynamic_smem() { return g_smem.data(); }

#include "../topk_merge.cu"

using pydiffgen::cuda::buffer_half;
using pydiffgen::cuda::topk_merge_kernel;

template <typename scalar_t, bool LARGEST>
void run_kernel(const std::vector<scalar_t>& v, const std::vector<int64_t>& id,
                const std::vector<scalar_t>& tile, std::vector<scalar_t>& ov,
                std::vector<int64_t>& oi, int64_t M, int k, int64_t T, int64_t offset,
                unsigned threads, unsigned grid) {
  const int S = buffer_half(k);
  g_smem.assign(2 * static_cast<size_t>(S) * (sizeof(int64_t) + sizeof(scalar_t)), 0xAB);
  blockDim.x = threads;
  gridDim.x = grid;
  for (unsigned b = 0; b < grid; ++b) {
    blockIdx.x = b;
    std::barrier<> bar(threads);
    g_barrier = &bar;
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        threadIdx.x = t;
        topk_merge_kernel<scalar_t, LARGEST>(v.data(), id.data(), tile.data(), ov.data(),
                                             oi.data(), M, k, T, offset, S);
      });
    }
    for (auto& th : pool) th.join();
  }
}

template <typename scalar_t>
bool better(bool largest, scalar_t va, int64_t ia, scalar_t vb, int64_t ib) {
  if (largest ? va > vb : va < vb) return true;
  return va == vb && ia < ib;
}

template <typename scalar_t>
int check(std::mt19937_64& rng, int64_t M, int k, int64_t T, bool largest, bool ties,
          int64_t n_seen, int64_t offset, unsigned threads, unsigned grid) {
  const scalar_t inf = std::numeric_limits<scalar_t>::infinity();
  std::normal_distribution<double> normal;
  std::uniform_int_distribution<int> small(0, 3);
  auto draw = [&] { return static_cast<scalar_t>(ties ? small(rng) : normal(rng)); };
  // a valid running list: the best k of n_seen scores of keys 0..n_seen-1, empty slots
  std::vector<scalar_t> v(M * k), tile(M * T), want_v(M * k), ov(M * k);
  std::vector<int64_t> id(M * k), want_i(M * k), oi(M * k);
  for (int64_t r = 0; r < M; ++r) {
    std::vector<std::pair<scalar_t, int64_t>> seen;
    for (int64_t j = 0; j < n_seen; ++j) seen.push_back({draw(), j});
    while (static_cast<int64_t>(seen.size()) < k) seen.push_back({largest ? -inf : inf, -1});
    auto cmp = [&](auto& a, auto& b) { return better(largest, a.first, a.second, b.first, b.second); };
    std::sort(seen.begin(), seen.end(), cmp);
    for (int j = 0; j < k; ++j) {
      v[r * k + j] = seen[j].first;
      id[r * k + j] = seen[j].second;
    }
    std::vector<std::pair<scalar_t, int64_t>> all(seen.begin(), seen.begin() + k);
    for (int64_t j = 0; j < T; ++j) {
      tile[r * T + j] = (j % 97 == 5) ? (largest ? -inf : inf) : draw();
      all.push_back({tile[r * T + j], offset + j});
    }
    std::sort(all.begin(), all.end(), cmp);
    for (int j = 0; j < k; ++j) {
      want_v[r * k + j] = all[j].first;
      want_i[r * k + j] = all[j].second;
    }
  }
  if (largest) {
    run_kernel<scalar_t, true>(v, id, tile, ov, oi, M, k, T, offset, threads, grid);
  } else {
    run_kernel<scalar_t, false>(v, id, tile, ov, oi, M, k, T, offset, threads, grid);
  }
  for (int64_t n = 0; n < M * k; ++n) {
    if (oi[n] != want_i[n] || !(ov[n] == want_v[n])) {
      std::printf("MISMATCH M=%lld k=%d T=%lld largest=%d ties=%d at row %lld slot %lld: "
                  "got (%g, %lld) want (%g, %lld)\n",
                  (long long)M, k, (long long)T, (int)largest, (int)ties, (long long)(n / k),
                  (long long)(n % k), (double)ov[n], (long long)oi[n], (double)want_v[n],
                  (long long)want_i[n]);
      return 1;
    }
  }
  return 0;
}

int main(int argc, char** argv) {
  const unsigned threads = argc > 1 ? static_cast<unsigned>(std::atoi(argv[1])) : 256;
  std::mt19937_64 rng(1234);
  struct Case {
    int64_t M;
    int k;
    int64_t T;
    int64_t n_seen;
    int64_t offset;
  };
  // odd shapes; n_seen < k leaves empty slots; offset < n_seen puts tile keys first
  const Case cases[] = {{1, 1, 1, 0, 0},       {3, 5, 33, 2, 2},     {2, 64, 1025, 100, 100},
                        {2, 1, 700, 10, 10},    {1, 300, 777, 1000, 1000}, {1, 1024, 1500, 0, 0},
                        {2, 7, 0, 3, 3},        {2, 17, 600, 40, -600}, {1, 257, 2049, 300, 300}};
  int n = 0, bad = 0;
  for (const auto& c : cases) {
    for (int largest = 0; largest < 2; ++largest) {
      for (int ties = 0; ties < 2; ++ties) {
        const unsigned grid = c.M > 1 ? 2 : 1;  // grid-stride over rows when M > grid
        bad += check<float>(rng, c.M, c.k, c.T, largest, ties, c.n_seen, c.offset, threads, grid);
        bad += check<double>(rng, c.M, c.k, c.T, largest, ties, c.n_seen, c.offset, threads, 1);
        n += 2;
        if (bad) return 1;
      }
    }
  }
  std::printf("ok %d\n", n);
  return 0;
}
