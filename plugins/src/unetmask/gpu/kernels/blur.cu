// SPDX-License-Identifier: MPL-2.0
//
// The `blur` mode on the GPU: the background of one plane blurred without the person (a
// normalised convolution on a grid reduced by `factor`, as `composite::BlurPlane` does on
// the CPU), then the plane mixed towards it. Five steps, each one thread per cell, row,
// column or pixel, in the CPU path's order of floating-point operations (explicit `_rn`
// intrinsics: no fused multiply-adds), so that the result is the CPU path's byte for byte;
// mirrored on the CPU by `gpu_blur::reference`. Compiled at run time by NVRTC; the structs
// must stay identical to `gpu_blur::BlurParams` / `BoxParams`. The mask helpers are
// composite.cu's (the host compiles the two sources together).

struct BlurParams {
    MixParams bg;       // the plane, the model mask and the background's weights
    int factor;         // grid cell size, pixels
    int step;           // sampling step inside a cell
    int sw;             // grid size, cells
    int sh;
};

struct BoxParams {
    int w;              // grid size
    int h;
    int c;              // values per cell
    int r;              // radius, cells
    float norm;         // 1 / (2r + 1), as the host computed it
};

// Step 1, one thread per cell: weighted sums of the sampled pixels of the cell, in the CPU's
// order (rows, then columns); weights are the background's plus a token 0.01.
extern "C" __global__ void edgemask_blur_grid(BlurParams p, const unsigned char* mask,
                                              const unsigned int* xtaps, const unsigned int* ytaps,
                                              const unsigned char* plane, float* acc, float* wsum) {
    int cx = blockIdx.x * blockDim.x + threadIdx.x;
    int cy = blockIdx.y * blockDim.y + threadIdx.y;
    if (cx >= p.sw || cy >= p.sh) {
        return;
    }
    const MixParams& g = p.bg;
    int cell = cy * p.sw + cx;
    float a[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    float ws = 0.0f;
    // The sampled rows and columns are the multiples of `step` inside the cell.
    int y0 = (cy * p.factor + p.step - 1) / p.step * p.step;
    int x0 = (cx * p.factor + p.step - 1) / p.step * p.step;
    for (int y = y0; y < (cy + 1) * p.factor && y < g.height; y += p.step) {
        const unsigned char* row = plane + (size_t)y * g.stride;
        for (int x = x0; x < (cx + 1) * p.factor && x < g.width; x += p.step) {
            float w = __fadd_rn((float)weight(g, upscaled(g, mask, xtaps, ytaps, x, y)), 0.01f);
            ws = __fadd_rn(ws, w);
            for (int k = 0; k < g.nchans; k++) {
                a[k] = __fadd_rn(a[k], __fmul_rn(w, (float)row[x * g.pstride + g.chans[k]]));
            }
        }
    }
    wsum[cell] = ws;
    for (int k = 0; k < g.nchans; k++) {
        acc[cell * g.nchans + k] = a[k];
    }
}

// Steps 2 and 3, box blur with clamped edges: a running sum along a row (one thread per row
// and channel) or a column (one per column and channel).
__device__ __forceinline__ void box_line(const BoxParams& b, const float* src, float* dst,
                                         size_t base, size_t pitch, int n) {
    float sum = 0.0f;
    for (int i = -b.r; i <= b.r; i++) {
        int j = i < 0 ? 0 : (i > n - 1 ? n - 1 : i);
        sum = __fadd_rn(sum, src[base + (size_t)j * pitch]);
    }
    for (int i = 0; i < n; i++) {
        dst[base + (size_t)i * pitch] = __fmul_rn(sum, b.norm);
        int add = i + b.r + 1, sub = i - b.r;
        add = add > n - 1 ? n - 1 : add;
        sub = sub < 0 ? 0 : sub;
        sum = __fadd_rn(sum, __fsub_rn(src[base + (size_t)add * pitch], src[base + (size_t)sub * pitch]));
    }
}

extern "C" __global__ void edgemask_box_rows(BoxParams b, const float* src, float* dst) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= b.h * b.c) {
        return;
    }
    int y = t / b.c, k = t % b.c;
    box_line(b, src, dst, (size_t)y * b.w * b.c + k, (size_t)b.c, b.w);
}

extern "C" __global__ void edgemask_box_cols(BoxParams b, const float* src, float* dst) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= b.w * b.c) {
        return;
    }
    int x = t / b.c, k = t % b.c;
    box_line(b, src, dst, (size_t)x * b.c + k, (size_t)b.w * b.c, b.h);
}

// Step 4, one thread per plane column and grid row: the blurred background (sums over
// weights) upscaled horizontally to the plane's width in 1/256 steps, in the plane's pixel
// layout (`hrows`: sh rows of width * pstride values; bytes that are not colour stay 0).
extern "C" __global__ void edgemask_blur_rows(BlurParams p, const float* acc, const float* wsum,
                                              const unsigned int* gxtaps, unsigned short* hrows) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int i = blockIdx.y * blockDim.y + threadIdx.y;
    const MixParams& g = p.bg;
    if (x >= g.width || i >= p.sh) {
        return;
    }
    unsigned int x0 = gxtaps[3 * x], x1 = gxtaps[3 * x + 1], fx = gxtaps[3 * x + 2];
    int c0 = i * p.sw + (int)x0, c1 = i * p.sw + (int)x1;
    unsigned short* px = hrows + ((size_t)i * g.width + x) * g.pstride;
    for (int k = 0; k < g.nchans; k++) {
        float a = __fdiv_rn(acc[c0 * g.nchans + k], wsum[c0]);
        float b = __fdiv_rn(acc[c1 * g.nchans + k], wsum[c1]);
        unsigned int ia = (unsigned int)__fadd_rn(a, 0.5f), ib = (unsigned int)__fadd_rn(b, 0.5f);
        px[g.chans[k]] = (unsigned short)(ia * (256u - fx) + ib * fx);
    }
}

// Step 5, one thread per pixel: the background row blended vertically from two grid rows,
// and the plane's colour bytes mixed towards it with the mix weight (`m`: the user's mask,
// inverted: the background's).
extern "C" __global__ void edgemask_blur_mix(MixParams m, const unsigned char* mask,
                                             const unsigned int* xtaps, const unsigned int* ytaps,
                                             const unsigned int* gytaps, const unsigned short* hrows,
                                             unsigned char* plane) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= m.width || y >= m.height) {
        return;
    }
    unsigned int w = weight(m, upscaled(m, mask, xtaps, ytaps, x, y));
    if (w == 0u) {
        return;
    }
    unsigned int y0 = gytaps[3 * y], y1 = gytaps[3 * y + 1], fy = gytaps[3 * y + 2];
    size_t rb = (size_t)m.width * m.pstride;
    const unsigned short* h0 = hrows + y0 * rb + (size_t)x * m.pstride;
    const unsigned short* h1 = hrows + y1 * rb + (size_t)x * m.pstride;
    unsigned char* px = plane + (size_t)y * m.stride + (size_t)x * m.pstride;
    for (int k = 0; k < m.nchans; k++) {
        int c = m.chans[k];
        unsigned int o = ((unsigned int)h0[c] * (256u - fy) + (unsigned int)h1[c] * fy + 32768u) >> 16;
        px[c] = mix(px[c], o, w);
    }
}
