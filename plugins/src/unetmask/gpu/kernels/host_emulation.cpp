// SPDX-License-Identifier: MPL-2.0
//
// The GPU kernels' own CUDA C source, executed on the CPU: the test suite compiles this file
// with the system's C++ compiler and runs every kernel, one (block, thread) after another,
// over the same inputs as the real launches, against the kernels' Rust mirrors
// (`gpu_emulation.rs`). What it checks on machines without a GPU: the kernels' indexing,
// bounds, arithmetic and argument order as written in the .cu files, not only their
// mirrors. Not part of the plugin.
//
// The CUDA built-ins the kernels use are given their documented meaning here: thread and
// block indices, `atomicAdd` (sequential execution makes it a plain add), the
// round-to-nearest intrinsics (each rounded on its own and never fused into a
// multiply-add, as on the GPU, even in the build that fuses the rest the way NVRTC does),
// `__int_as_float`, and integer `min`/`max`. No kernel uses shared memory or barriers, so
// running the threads one after another is a valid schedule.

#include <math.h>
#include <stddef.h>
#include <string.h>

struct EmuDim {
    unsigned int x, y, z;
};
// Per thread of the test process: tests run kernels concurrently.
static thread_local EmuDim blockIdx, threadIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __forceinline__ inline

// The empty asm takes the rounded result in an SSE register, which the compiler cannot see
// through, so it cannot contract the operation with its neighbours.
static inline float rounded(float r) {
    __asm__("" : "+x"(r));
    return r;
}
static inline float __fadd_rn(float a, float b) { return rounded(a + b); }
static inline float __fsub_rn(float a, float b) { return rounded(a - b); }
static inline float __fmul_rn(float a, float b) { return rounded(a * b); }
static inline float __fdiv_rn(float a, float b) { return rounded(a / b); }
static inline float __int_as_float(int i) {
    float f;
    memcpy(&f, &i, sizeof f);
    return f;
}
static inline unsigned int atomicAdd(unsigned int* a, unsigned int v) {
    unsigned int old = *a;
    *a = old + v;
    return old;
}
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }

namespace pre {
#include "preprocess.cu"
}
namespace post {
#include "postprocess.cu"
}
namespace comp {
#include "composite.cu"
#include "blur.cu"
}

// A launch: grid and block sizes (2-D; z is 1).
struct Launch {
    unsigned int gx, gy, bx, by;
};

template <class F>
static void run(Launch l, F kernel) {
    gridDim = {l.gx, l.gy, 1};
    blockDim = {l.bx, l.by, 1};
    for (unsigned int by = 0; by < l.gy; by++) {
        for (unsigned int bx = 0; bx < l.gx; bx++) {
            blockIdx = {bx, by, 0};
            for (unsigned int ty = 0; ty < l.by; ty++) {
                for (unsigned int tx = 0; tx < l.bx; tx++) {
                    threadIdx = {tx, ty, 0};
                    kernel();
                }
            }
        }
    }
}

extern "C" {

void emu_preprocess(Launch l, pre::PreParams p, const unsigned char* p0, const unsigned char* p1,
                    const unsigned char* p2, float* out) {
    run(l, [&] { pre::edgemask_preprocess(p, p0, p1, p2, out); });
}

void emu_postprocess(Launch l, post::PostParams p, const float* out, float* state,
                     unsigned char* mask, unsigned int* counts) {
    run(l, [&] { post::edgemask_postprocess(p, out, state, mask, counts); });
}

void emu_mix(Launch l, comp::MixParams p, const unsigned char* mask, const unsigned int* xt,
             const unsigned int* yt, unsigned char* plane, const unsigned char* target) {
    run(l, [&] { comp::edgemask_mix(p, mask, xt, yt, plane, target); });
}

void emu_mask(Launch l, comp::MixParams p, const unsigned char* mask, const unsigned int* xt,
              const unsigned int* yt, unsigned char* out) {
    run(l, [&] { comp::edgemask_mask(p, mask, xt, yt, out); });
}

void emu_alpha(Launch l, comp::AlphaParams p, const unsigned char* mask, const unsigned int* xt,
               const unsigned int* yt, const unsigned char* p0, const unsigned char* p1,
               const unsigned char* p2, unsigned char* out) {
    run(l, [&] { comp::edgemask_alpha(p, mask, xt, yt, p0, p1, p2, out); });
}

void emu_blur_grid(Launch l, comp::BlurParams p, const unsigned char* mask, const unsigned int* xt,
                   const unsigned int* yt, const unsigned char* plane, float* acc, float* wsum) {
    run(l, [&] { comp::edgemask_blur_grid(p, mask, xt, yt, plane, acc, wsum); });
}

void emu_box_rows(Launch l, comp::BoxParams b, const float* src, float* dst) {
    run(l, [&] { comp::edgemask_box_rows(b, src, dst); });
}

void emu_box_cols(Launch l, comp::BoxParams b, const float* src, float* dst) {
    run(l, [&] { comp::edgemask_box_cols(b, src, dst); });
}

void emu_blur_rows(Launch l, comp::BlurParams p, const float* acc, const float* wsum,
                   const unsigned int* gx, unsigned short* hrows) {
    run(l, [&] { comp::edgemask_blur_rows(p, acc, wsum, gx, hrows); });
}

void emu_blur_mix(Launch l, comp::MixParams m, const unsigned char* mask, const unsigned int* xt,
                  const unsigned int* yt, const unsigned int* gy, const unsigned short* hrows,
                  unsigned char* plane) {
    run(l, [&] { comp::edgemask_blur_mix(m, mask, xt, yt, gy, hrows, plane); });
}
}
