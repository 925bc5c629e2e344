// SPDX-License-Identifier: MPL-2.0
//
// Frame -> model input tensor on the GPU: the same arithmetic as the CPU path
// (preprocess.rs) and as its CPU mirror `gpu_pre::reference`, one thread per tensor pixel.
// Bilinear sampling with half-pixel centres and clamped edges, YUV -> RGB for NV12/I420,
// channel order, scale, mean/std and the tensor layout folded in. Compiled at run time by
// NVRTC; `PreParams` must stay identical to `gpu_pre::PreParams` (repr(C), 4-byte fields).

struct PreParams {
    int kind;          // 0: packed RGB(x), 1: NV12, 2: I420
    int bpp;           // bytes per pixel (packed formats)
    int offsets[3];    // byte offset in a pixel of the value for model channel k (packed)
    int width;
    int height;
    int strides[3];    // row strides of the planes, bytes
    int tensor_w;
    int tensor_h;
    int nhwc;          // 1: NHWC, 0: NCHW
    int rgb_index[3];  // model channel k takes RGB channel rgb_index[k] (YUV formats)
    float mul[3];      // tensor = value * mul[k] + add[k]
    float add[3];
    float yuv[6];      // y_mul, y_off, r_v, g_u, g_v, b_u
};

struct Tap {
    int i0;
    int i1;
    float f;
};

// The source position is rounded step by step (`_rn`: never fused into a multiply-add), so
// that every build picks the CPU path's source pixels and weights. Fused, the position is
// rounded once instead of twice; just below a power of two that moves a weight by up to
// half an ulp of the position (6e-5 at 1080p), which across a sharp edge is 3e-4 in the
// tensor, a hundred times what the rest of the kernel's arithmetic can move it.
__device__ __forceinline__ Tap tap(int o, int src, int dst) {
    float scale = (float)src / (float)dst;
    float s = __fsub_rn(__fmul_rn((float)o + 0.5f, scale), 0.5f);
    s = fminf(fmaxf(s, 0.0f), (float)(src - 1));
    Tap t;
    t.i0 = (int)floorf(s);
    t.i1 = min(t.i0 + 1, src - 1);
    t.f = s - (float)t.i0;
    return t;
}

__device__ __forceinline__ float lerp2(const unsigned char* r0, const unsigned char* r1,
                                       int i0, int i1, float fx, float fy) {
    float a = (float)r0[i0], b = (float)r0[i1];
    float c = (float)r1[i0], d = (float)r1[i1];
    float top = a + (b - a) * fx;
    return top + (c + (d - c) * fx - top) * fy;
}

extern "C" __global__ void edgemask_preprocess(PreParams p, const unsigned char* p0,
                                               const unsigned char* p1, const unsigned char* p2,
                                               float* out) {
    int ox = blockIdx.x * blockDim.x + threadIdx.x;
    int oy = blockIdx.y * blockDim.y + threadIdx.y;
    if (ox >= p.tensor_w || oy >= p.tensor_h) {
        return;
    }
    float v[3];
    Tap tx = tap(ox, p.width, p.tensor_w);
    Tap ty = tap(oy, p.height, p.tensor_h);
    const unsigned char* y0 = p0 + (size_t)ty.i0 * p.strides[0];
    const unsigned char* y1 = p0 + (size_t)ty.i1 * p.strides[0];
    if (p.kind == 0) {
        for (int k = 0; k < 3; k++) {
            int o = p.offsets[k];
            float x = lerp2(y0, y1, tx.i0 * p.bpp + o, tx.i1 * p.bpp + o, tx.f, ty.f);
            v[k] = x * p.mul[k] + p.add[k];
        }
    } else {
        int cw = (p.width + 1) / 2;
        int ch = (p.height + 1) / 2;
        Tap txc = tap(ox, cw, p.tensor_w);
        Tap tyc = tap(oy, ch, p.tensor_h);
        float y = lerp2(y0, y1, tx.i0, tx.i1, tx.f, ty.f);
        float u, w;
        const unsigned char* u0 = p1 + (size_t)tyc.i0 * p.strides[1];
        const unsigned char* u1 = p1 + (size_t)tyc.i1 * p.strides[1];
        if (p.kind == 1) {
            u = lerp2(u0, u1, txc.i0 * 2, txc.i1 * 2, txc.f, tyc.f);
            w = lerp2(u0, u1, txc.i0 * 2 + 1, txc.i1 * 2 + 1, txc.f, tyc.f);
        } else {
            const unsigned char* v0 = p2 + (size_t)tyc.i0 * p.strides[2];
            const unsigned char* v1 = p2 + (size_t)tyc.i1 * p.strides[2];
            u = lerp2(u0, u1, txc.i0, txc.i1, txc.f, tyc.f);
            w = lerp2(v0, v1, txc.i0, txc.i1, txc.f, tyc.f);
        }
        float yy = y * p.yuv[0] + p.yuv[1];
        u -= 128.0f;
        w -= 128.0f;
        float rgb[3];
        rgb[0] = fminf(fmaxf(yy + p.yuv[2] * w, 0.0f), 255.0f);
        rgb[1] = fminf(fmaxf(yy + p.yuv[3] * u + p.yuv[4] * w, 0.0f), 255.0f);
        rgb[2] = fminf(fmaxf(yy + p.yuv[5] * u, 0.0f), 255.0f);
        for (int k = 0; k < 3; k++) {
            v[k] = rgb[p.rgb_index[k]] * p.mul[k] + p.add[k];
        }
    }
    size_t px = (size_t)oy * p.tensor_w + ox;
    if (p.nhwc) {
        for (int k = 0; k < 3; k++) {
            out[px * 3 + k] = v[k];
        }
    } else {
        size_t plane = (size_t)p.tensor_w * p.tensor_h;
        for (int k = 0; k < 3; k++) {
            out[k * plane + px] = v[k];
        }
    }
}
