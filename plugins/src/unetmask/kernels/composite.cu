// SPDX-License-Identifier: MPL-2.0
//
// Compositing on the GPU, one thread per pixel of one plane: the model-resolution mask
// upscaled bilinearly (fixed-point taps from the host, 1/256 steps), mapped to a weight
// (soft or hard mask, inverted for the background, scaled by an opacity) and the plane's
// colour bytes mixed towards a colour or another picture — the CPU path's integer
// arithmetic (composite.rs) exactly, mirrored on the CPU by `gpu_composite::reference_*`.
// Compiled at run time by NVRTC; `MixParams` must stay identical to
// `gpu_composite::MixParams`.

struct MixParams {
    int model_w;
    int model_h;
    int width;          // plane size, pixels
    int height;
    int stride;         // plane row stride, bytes
    int pstride;        // bytes per pixel in the plane
    int nchans;         // colour bytes per pixel (the rest, alpha or padding, is kept)
    int chans[4];       // their offsets in a pixel
    int cut;            // hard mask: m > cut is 255, else 0; -1: soft mask
    int invert;         // 1: weight = 255 - m (the background's)
    int scale;          // weight * scale / 255 (opacity); 255: as it is
    int target_plane;   // 1: mix towards `target` (same geometry), 0: towards `color`
    int target_stride;
    int color[4];       // the colour, one value per colour byte
};

// The upscaled mask at (x, y): taps are (i0, i1, f) triples, f in 1/256.
__device__ __forceinline__ unsigned int upscaled(const MixParams& p, const unsigned char* mask,
                                                 const unsigned int* xt, const unsigned int* yt,
                                                 int x, int y) {
    unsigned int x0 = xt[3 * x], x1 = xt[3 * x + 1], fx = xt[3 * x + 2];
    unsigned int y0 = yt[3 * y], y1 = yt[3 * y + 1], fy = yt[3 * y + 2];
    const unsigned char* r0 = mask + (size_t)y0 * p.model_w;
    const unsigned char* r1 = mask + (size_t)y1 * p.model_w;
    unsigned int h0 = r0[x0] * (256u - fx) + r0[x1] * fx;
    unsigned int h1 = r1[x0] * (256u - fx) + r1[x1] * fx;
    return (h0 * (256u - fy) + h1 * fy + 32768u) >> 16;
}

__device__ __forceinline__ unsigned int weight(const MixParams& p, unsigned int m) {
    if (p.cut >= 0) {
        m = m > (unsigned int)p.cut ? 255u : 0u;
    }
    if (p.invert) {
        m = 255u - m;
    }
    if (p.scale != 255) {
        unsigned int t = m * (unsigned int)p.scale + 128u;
        m = (t + (t >> 8)) >> 8;
    }
    return m;
}

__device__ __forceinline__ unsigned char mix(unsigned int x, unsigned int o, unsigned int w) {
    unsigned int t = x * (255u - w) + o * w + 128u;
    return (unsigned char)((t + (t >> 8)) >> 8);
}

extern "C" __global__ void edgemask_mix(MixParams p, const unsigned char* mask,
                                        const unsigned int* xtaps, const unsigned int* ytaps,
                                        unsigned char* plane, const unsigned char* target) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= p.width || y >= p.height) {
        return;
    }
    unsigned int w = weight(p, upscaled(p, mask, xtaps, ytaps, x, y));
    if (w == 0u) {
        return;
    }
    unsigned char* px = plane + (size_t)y * p.stride + (size_t)x * p.pstride;
    const unsigned char* tp = target + (size_t)y * p.target_stride + (size_t)x * p.pstride;
    for (int k = 0; k < p.nchans; k++) {
        int c = p.chans[k];
        unsigned int o = p.target_plane ? tp[c] : (unsigned int)p.color[k];
        px[c] = mix(px[c], o, w);
    }
}

// `mask` output mode: the weight of every pixel as GRAY8.
extern "C" __global__ void edgemask_mask(MixParams p, const unsigned char* mask,
                                         const unsigned int* xtaps, const unsigned int* ytaps,
                                         unsigned char* out) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= p.width || y >= p.height) {
        return;
    }
    out[(size_t)y * p.stride + x] = (unsigned char)weight(p, upscaled(p, mask, xtaps, ytaps, x, y));
}
