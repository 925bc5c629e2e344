//! Raw video frames as plain slices: the pixel formats the element accepts, their plane
//! geometry and the YUV <-> RGB arithmetic. No GStreamer types here, so the pixel code
//! built on it is unit-tested on hand-made frames.

/// The raw formats `unetmask` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    Rgba,
    Bgra,
    Rgbx,
    Bgrx,
    Rgb,
    Bgr,
    Nv12,
    I420,
}

impl PixelFormat {
    /// Byte offsets of R, G and B inside one pixel and the pixel size, for packed formats.
    pub fn packed_rgb(self) -> Option<([usize; 3], usize)> {
        match self {
            Self::Rgba | Self::Rgbx => Some(([0, 1, 2], 4)),
            Self::Bgra | Self::Bgrx => Some(([2, 1, 0], 4)),
            Self::Rgb => Some(([0, 1, 2], 3)),
            Self::Bgr => Some(([2, 1, 0], 3)),
            Self::Nv12 | Self::I420 => None,
        }
    }

    pub fn is_yuv(self) -> bool {
        self.packed_rgb().is_none()
    }
}

/// One frame's planes, borrowed. `width`/`height` are the frame's size in pixels.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    pub format: PixelFormat,
    pub width: usize,
    pub height: usize,
    pub planes: [&'a [u8]; 3],
    pub strides: [usize; 3],
}

/// What a negotiated stream's frames are: pixel format, size and YUV matrix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameSpec {
    pub format: PixelFormat,
    pub width: usize,
    pub height: usize,
    pub matrix: YuvMatrix,
}

/// Where output sample `o` of `dst` falls among `src` samples, for bilinear sampling with
/// half-pixel centres and clamped edges: the two source samples and the weight of the
/// second. The CPU path's tap tables all come from here (the GPU kernel computes the same
/// in `f32`, mirrored by `gpu::mirror::pre`).
pub fn half_pixel_tap(o: usize, src: usize, dst: usize) -> (usize, usize, f64) {
    let scale = src as f64 / dst as f64;
    let s = ((o as f64 + 0.5) * scale - 0.5).clamp(0.0, (src - 1) as f64);
    let i0 = s.floor() as usize;
    (i0, (i0 + 1).min(src - 1), s - i0 as f64)
}

/// Size of the chroma planes of a 4:2:0 frame (rounded up for odd sizes).
pub fn chroma_size(width: usize, height: usize) -> (usize, usize) {
    (width.div_ceil(2), height.div_ceil(2))
}

/// The bytes of each plane of `frame` that hold its rows (`rows x stride`, or less where the
/// plane's memory ends after the last row's pixels), 0 for planes the format lacks: what a
/// copy of the frame into other memory (the GPU's) has to carry.
pub fn plane_bytes(frame: &Frame<'_>) -> [usize; 3] {
    let full = rows_bytes((frame.width, frame.height), frame.strides);
    std::array::from_fn(|i| frame.planes[i].len().min(full[i]))
}

/// `rows x stride` of each plane of a `width` x `height` frame with `strides` (0 for a
/// plane the format lacks): room for any frame of those caps.
pub fn rows_bytes((width, height): (usize, usize), strides: [usize; 3]) -> [usize; 3] {
    let (_, ch) = chroma_size(width, height);
    let rows = [height, ch, ch];
    std::array::from_fn(|i| rows[i] * strides[i])
}

/// YUV <-> RGB conversion for 8-bit video (BT.601 / BT.709 / BT.2020 coefficients,
/// limited or full range), as the stream's colorimetry says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct YuvMatrix {
    pub kr: f32,
    pub kb: f32,
    pub full_range: bool,
}

impl YuvMatrix {
    pub const BT601: YuvMatrix = YuvMatrix {
        kr: 0.299,
        kb: 0.114,
        full_range: false,
    };
    pub const BT709: YuvMatrix = YuvMatrix {
        kr: 0.2126,
        kb: 0.0722,
        full_range: false,
    };
    pub const BT2020: YuvMatrix = YuvMatrix {
        kr: 0.2627,
        kb: 0.0593,
        full_range: false,
    };

    /// Coefficients of `R = a_y*Y + a_v*V + off`, ... in the form used by the pixel loops.
    pub fn to_rgb_coeffs(&self) -> YuvToRgb {
        let kg = 1.0 - self.kr - self.kb;
        let (ys, yo, cs) = if self.full_range {
            (1.0, 0.0, 1.0)
        } else {
            (255.0 / 219.0, 16.0, 255.0 / 224.0)
        };
        YuvToRgb {
            y_mul: ys,
            y_off: -yo * ys,
            r_v: 2.0 * (1.0 - self.kr) * cs,
            g_u: -2.0 * self.kb * (1.0 - self.kb) / kg * cs,
            g_v: -2.0 * self.kr * (1.0 - self.kr) / kg * cs,
            b_u: 2.0 * (1.0 - self.kb) * cs,
        }
    }

    /// Converts one RGB colour to this matrix's Y, U, V (rounded, clamped).
    pub fn rgb_to_yuv(&self, rgb: [u8; 3]) -> [u8; 3] {
        let [r, g, b] = rgb.map(f32::from);
        let kg = 1.0 - self.kr - self.kb;
        let y = self.kr * r + kg * g + self.kb * b;
        let u = (b - y) / (2.0 * (1.0 - self.kb));
        let v = (r - y) / (2.0 * (1.0 - self.kr));
        let (ys, yo, cs) = if self.full_range {
            (1.0, 0.0, 1.0)
        } else {
            (219.0 / 255.0, 16.0, 224.0 / 255.0)
        };
        let q = |x: f32| x.round().clamp(0.0, 255.0) as u8;
        [q(y * ys + yo), q(u * cs + 128.0), q(v * cs + 128.0)]
    }
}

/// Precomputed YUV -> RGB coefficients (inputs are raw 8-bit Y, U, V).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct YuvToRgb {
    pub y_mul: f32,
    pub y_off: f32,
    pub r_v: f32,
    pub g_u: f32,
    pub g_v: f32,
    pub b_u: f32,
}

impl YuvToRgb {
    /// RGB in 0..=255 (unclamped floats) from raw Y, U, V.
    #[inline(always)]
    pub fn rgb(&self, y: f32, u: f32, v: f32) -> [f32; 3] {
        let yy = y * self.y_mul + self.y_off;
        let (u, v) = (u - 128.0, v - 128.0);
        [
            yy + self.r_v * v,
            yy + self.g_u * u + self.g_v * v,
            yy + self.b_u * u,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuv_round_trip() {
        for m in [
            YuvMatrix::BT601,
            YuvMatrix::BT709,
            YuvMatrix {
                full_range: true,
                ..YuvMatrix::BT601
            },
        ] {
            let c = m.to_rgb_coeffs();
            for rgb in [
                [0u8, 0, 0],
                [255, 255, 255],
                [255, 220, 0],
                [12, 200, 90],
                [128, 128, 128],
            ] {
                let [y, u, v] = m.rgb_to_yuv(rgb).map(f32::from);
                let back = c.rgb(y, u, v);
                for k in 0..3 {
                    assert!(
                        (back[k].clamp(0.0, 255.0) - rgb[k] as f32).abs() <= 2.5,
                        "{m:?} {rgb:?} {back:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn limited_range_black_and_white() {
        assert_eq!(YuvMatrix::BT601.rgb_to_yuv([0, 0, 0]), [16, 128, 128]);
        assert_eq!(YuvMatrix::BT709.rgb_to_yuv([255, 255, 255]), [235, 128, 128]);
        assert_eq!(chroma_size(401, 601), (201, 301));
    }

    #[test]
    fn plane_bytes_cover_the_rows_of_each_plane() {
        fn frame<'a>(format: PixelFormat, planes: [&'a [u8]; 3], strides: [usize; 3]) -> Frame<'a> {
            let (width, height) = (5, 3);
            Frame {
                format,
                width,
                height,
                planes,
                strides,
            }
        }
        let m = [0u8; 72];
        // Rows padded by 4 (RGBA), 2 (NV12) and 0 (I420) bytes.
        assert_eq!(
            plane_bytes(&frame(PixelFormat::Rgba, [&m, &[], &[]], [24, 0, 0])),
            [72, 0, 0]
        );
        let nv12 = [&m[..21], &m[..16], &[]];
        assert_eq!(
            plane_bytes(&frame(PixelFormat::Nv12, nv12, [7, 8, 0])),
            [21, 16, 0]
        );
        let i420 = [&m[..15], &m[..6], &m[..6]];
        assert_eq!(
            plane_bytes(&frame(PixelFormat::I420, i420, [5, 3, 3])),
            [15, 6, 6]
        );
        // Memory that ends after the last row's pixels (no padding after it).
        assert_eq!(
            plane_bytes(&frame(PixelFormat::Rgba, [&m[..68], &[], &[]], [24, 0, 0])),
            [68, 0, 0]
        );
    }
}
