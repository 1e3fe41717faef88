// Host emulation of CUDA kernels for scripts/cuda_emu/run.sh (see there).
// Host emulation of the CUDA kernels: one std::thread per CUDA thread, blocks one after another.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <barrier>
#include <mutex>
#include <vector>
#include <functional>
#include <memory>
struct dim3_ { unsigned x = 1, y = 1, z = 1; };
thread_local dim3_ threadIdx, blockIdx;
dim3_ blockDim, gridDim;
struct Warp { std::unique_ptr<std::barrier<>> bar; float v[32]; double dv[32]; };
thread_local Warp *myWarp;
thread_local int myLane;
std::barrier<> *blockBar;
std::mutex atomMu;
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __syncthreads() blockBar->arrive_and_wait()
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
inline float atomicAdd(float *p, float v) { std::lock_guard<std::mutex> g(atomMu); float o = *p; *p = o + v; return o; }
inline double atomicAdd(double *p, double v) { std::lock_guard<std::mutex> g(atomMu); double o = *p; *p = o + v; return o; }
inline float __shfl_xor_sync(unsigned, float v, int o) {
    myWarp->v[myLane] = v; myWarp->bar->arrive_and_wait();
    float r = myWarp->v[myLane ^ o]; myWarp->bar->arrive_and_wait(); return r;
}
inline double __shfl_xor_sync(unsigned, double v, int o) {
    myWarp->dv[myLane] = v; myWarp->bar->arrive_and_wait();
    double r = myWarp->dv[myLane ^ o]; myWarp->bar->arrive_and_wait(); return r;
}
template <class F> void launch(dim3_ g, dim3_ b, F f) {
    gridDim = g; blockDim = b;
    int nt = b.x * b.y * b.z;
    for (unsigned z = 0; z < g.z; z++) for (unsigned y = 0; y < g.y; y++) for (unsigned x = 0; x < g.x; x++) {
        std::barrier<> bar(nt); blockBar = &bar;
        int nw = (nt + 31) / 32;
        std::vector<Warp> warps(nw);
        for (int w = 0; w < nw; w++) warps[w].bar = std::make_unique<std::barrier<>>(std::min(32, nt - 32 * w));
        std::vector<std::thread> ts;
        for (int t = 0; t < nt; t++) ts.emplace_back([&, t] {
            threadIdx = {unsigned(t % b.x), unsigned((t / b.x) % b.y), unsigned(t / (b.x * b.y))};
            blockIdx = {x, y, z};
            myWarp = &warps[t / 32]; myLane = t % 32;
            f();
        });
        for (auto &th : ts) th.join();
    }
}
#define asm(...) ((void)0)
