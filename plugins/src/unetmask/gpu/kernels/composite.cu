// SPDX-License-Identifier: MPL-2.0
//
// Compositing on the GPU, one thread per pixel of one plane: the model-resolution mask
// upscaled bilinearly (fixed-point taps from the host, 1/256 steps), mapped to a weight
// (soft or hard mask, inverted for the background, scaled by an opacity) and the plane's
// colour bytes mixed towards a colour or another picture, or the frame written as RGBA with
// the weight as alpha — the CPU path's integer arithmetic (composite.rs) exactly, mirrored
// on the CPU by `gpu_composite::reference_*`.
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

// `alpha` output mode: the frame as RGBA with the weight as alpha. Packed RGB(x) frames
// copy their colour bytes; 4:2:0 frames convert in the CPU path's fixed point (12
// fractional bits, coefficients from the host). `mask` holds the frame size and the
// weights; its stride and channel fields are unused.
struct AlphaParams {
    MixParams mask;
    int kind;           // 0: packed RGB(x), 1: NV12, 2: I420
    int bpp;            // packed: bytes per pixel
    int offs[3];        // packed: offsets of R, G, B in a pixel
    int strides[3];     // input plane strides, bytes
    int out_stride;     // RGBA output stride, bytes
    int yuv[6];         // y_mul, y_off (with the rounding half), r_v, g_u, g_v, b_u
};

__device__ __forceinline__ unsigned char clamp_byte(int v) {
    return (unsigned char)(v < 0 ? 0 : (v > 255 ? 255 : v));
}

extern "C" __global__ void edgemask_alpha(AlphaParams p, const unsigned char* mask,
                                          const unsigned int* xtaps, const unsigned int* ytaps,
                                          const unsigned char* p0, const unsigned char* p1,
                                          const unsigned char* p2, unsigned char* out) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= p.mask.width || y >= p.mask.height) {
        return;
    }
    unsigned char* o = out + (size_t)y * p.out_stride + (size_t)x * 4;
    if (p.kind == 0) {
        const unsigned char* s = p0 + (size_t)y * p.strides[0] + (size_t)x * p.bpp;
        o[0] = s[p.offs[0]];
        o[1] = s[p.offs[1]];
        o[2] = s[p.offs[2]];
    } else {
        int cx = x / 2, cy = y / 2;
        int u, v;
        if (p.kind == 1) {
            const unsigned char* c = p1 + (size_t)cy * p.strides[1] + (size_t)cx * 2;
            u = c[0];
            v = c[1];
        } else {
            u = p1[(size_t)cy * p.strides[1] + cx];
            v = p2[(size_t)cy * p.strides[2] + cx];
        }
        u -= 128;
        v -= 128;
        int yy = (int)p0[(size_t)y * p.strides[0] + x] * p.yuv[0] + p.yuv[1];
        o[0] = clamp_byte((yy + p.yuv[2] * v) >> 12);
        o[1] = clamp_byte((yy + p.yuv[3] * u + p.yuv[4] * v) >> 12);
        o[2] = clamp_byte((yy + p.yuv[5] * u) >> 12);
    }
    o[3] = (unsigned char)weight(p.mask, upscaled(p.mask, mask, xtaps, ytaps, x, y));
}
