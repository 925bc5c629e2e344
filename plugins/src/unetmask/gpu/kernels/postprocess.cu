// SPDX-License-Identifier: MPL-2.0
//
// Network output -> person mask at the model's resolution on the GPU: the same steps as the
// CPU path (postprocess.rs) and as its CPU mirror `gpu_post::reference`, one thread per
// model pixel: activation and person channel, temporal smoothing against the previous
// frame, 8-bit quantisation, and the coverage / uncertainty counts. Compiled at run time by
// NVRTC; `PostParams` must stay identical to `gpu_post::PostParams`.

struct PostParams {
    int pixels;
    int channels;
    int person;
    int channels_last;  // 1: [.., H, W, C], 0: [.., C, H, W]
    int activation;     // 0: none (probabilities), 1: sigmoid, 2: softmax
    int has_state;      // 1: `state` holds the previous frame's smoothed map
    float smoothing;    // weight of the previous frame; 0 = off
    float threshold;    // coverage counts p > threshold
    float band_lo;      // uncertainty counts band_lo <= p <= band_hi
    float band_hi;
};

__device__ __forceinline__ float at(const PostParams& p, const float* out, int i, int k) {
    return p.channels_last ? out[(size_t)i * p.channels + k] : out[(size_t)k * p.pixels + i];
}

__device__ __forceinline__ float sigmoid(float x) {
    return 1.0f / (1.0f + expf(-x));
}

extern "C" __global__ void edgemask_postprocess(PostParams p, const float* out, float* state,
                                                unsigned char* mask, unsigned int* counts) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= p.pixels) {
        return;
    }
    float prob;
    if (p.activation == 1) {
        prob = sigmoid(at(p, out, i, p.person));
    } else if (p.activation == 2 && p.channels == 2) {
        prob = sigmoid(at(p, out, i, p.person) - at(p, out, i, 1 - p.person));
    } else if (p.activation == 2) {
        float m = -__int_as_float(0x7f800000);  // -inf (NVRTC has no math.h)
        for (int k = 0; k < p.channels; k++) {
            m = fmaxf(m, at(p, out, i, k));
        }
        float sum = 0.0f;
        for (int k = 0; k < p.channels; k++) {
            sum += expf(at(p, out, i, k) - m);
        }
        prob = expf(at(p, out, i, p.person) - m) / sum;
    } else {
        prob = fminf(fmaxf(at(p, out, i, p.person), 0.0f), 1.0f);
    }
    if (p.smoothing > 0.0f) {
        if (p.has_state) {
            prob = p.smoothing * state[i] + (1.0f - p.smoothing) * prob;
        }
        state[i] = prob;
    }
    mask[i] = (unsigned char)(prob * 255.0f + 0.5f);
    if (prob > p.threshold) {
        atomicAdd(&counts[0], 1u);
    }
    if (prob >= p.band_lo && prob <= p.band_hi) {
        atomicAdd(&counts[1], 1u);
    }
}
