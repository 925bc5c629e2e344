//! Anti-aliased downscaling of a whole frame to the model's input size (the `antialias`
//! resize filter): `fast_image_resize`'s SIMD convolution with the bilinear (triangle)
//! kernel, the same filter as Pillow's `Image.resize(..., BILINEAR)` and torchvision's
//! `antialias=True`, so the model sees what it saw in training. Planes are resized
//! straight out of the mapped frame (strides honoured) into buffers allocated per caps.

use fast_image_resize as fr;
use fr::images::Image;
use fr::pixels::{InnerPixel, U8, U8x2, U8x3, U8x4};
use fr::{FilterType, ImageView, PixelType, ResizeAlg, ResizeOptions, Resizer};

use crate::unetmask::frame::{Frame, PixelFormat, chroma_size};

/// A borrowed plane with a row stride, as `fast_image_resize` source.
struct Strided<'a, P> {
    data: &'a [u8],
    stride: usize,
    width: u32,
    height: u32,
    _pixel: std::marker::PhantomData<P>,
}

// SAFETY: every row handed out holds exactly `width` pixels inside `data` (checked in `new`),
// and the pixel types are `repr(C)` arrays of `u8` (alignment 1).
unsafe impl<P: InnerPixel> ImageView for Strided<'_, P> {
    type Pixel = P;

    fn width(&self) -> u32 {
        self.width
    }

    fn height(&self) -> u32 {
        self.height
    }

    fn iter_rows(&self, start_row: u32) -> impl Iterator<Item = &[P]> {
        let row_bytes = self.width as usize * size_of::<P>();
        (start_row..self.height).map(move |y| {
            let row = &self.data[y as usize * self.stride..][..row_bytes];
            // SAFETY: see the impl comment.
            unsafe { std::slice::from_raw_parts(row.as_ptr().cast::<P>(), self.width as usize) }
        })
    }
}

impl<'a, P: InnerPixel> Strided<'a, P> {
    fn new(data: &'a [u8], stride: usize, width: usize, height: usize) -> Self {
        assert!(
            height == 0 || data.len() >= (height - 1) * stride + width * size_of::<P>(),
            "plane too small"
        );
        Self {
            data,
            stride,
            width: width as u32,
            height: height as u32,
            _pixel: std::marker::PhantomData,
        }
    }
}

/// Resizes frames of one format and size to the tensor size, keeping the format.
pub struct Downscaler {
    format: PixelFormat,
    size: (usize, usize),
    resizer: Resizer,
    options: ResizeOptions,
    planes: Vec<Image<'static>>,
}

impl Downscaler {
    pub fn new(format: PixelFormat, size: (usize, usize)) -> Self {
        let (tw, th) = size;
        let (cw, ch) = chroma_size(tw, th);
        let img = |w: usize, h: usize, t| Image::new(w as u32, h as u32, t);
        let planes = match format {
            PixelFormat::Rgba | PixelFormat::Bgra | PixelFormat::Rgbx | PixelFormat::Bgrx => {
                vec![img(tw, th, PixelType::U8x4)]
            }
            PixelFormat::Rgb | PixelFormat::Bgr => vec![img(tw, th, PixelType::U8x3)],
            PixelFormat::Nv12 => vec![img(tw, th, PixelType::U8), img(cw, ch, PixelType::U8x2)],
            PixelFormat::I420 => vec![
                img(tw, th, PixelType::U8),
                img(cw, ch, PixelType::U8),
                img(cw, ch, PixelType::U8),
            ],
        };
        Self {
            format,
            size,
            resizer: Resizer::new(),
            // No alpha premultiplication: the 4th byte of RGBx/BGRx is padding.
            options: ResizeOptions::new()
                .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
                .use_alpha(false),
            planes,
        }
    }

    fn resize_plane<P: fr::PixelTrait>(
        resizer: &mut Resizer,
        options: &ResizeOptions,
        src: Strided<'_, P>,
        dst: &mut Image<'static>,
    ) {
        let mut view = dst.typed_image_mut::<P>().expect("pixel type matches");
        resizer
            .resize_typed(&src, &mut view, options)
            .expect("sizes are non-zero");
    }

    /// Resizes `frame` and returns the small frame (same format, tensor size).
    pub fn run(&mut self, frame: &Frame<'_>) -> Frame<'_> {
        let (w, h) = (frame.width, frame.height);
        let (cw, ch) = chroma_size(w, h);
        let (r, o) = (&mut self.resizer, &self.options);
        let p = frame.planes;
        let s = frame.strides;
        match self.format {
            PixelFormat::Rgba | PixelFormat::Bgra | PixelFormat::Rgbx | PixelFormat::Bgrx => {
                Self::resize_plane(r, o, Strided::<U8x4>::new(p[0], s[0], w, h), &mut self.planes[0])
            }
            PixelFormat::Rgb | PixelFormat::Bgr => {
                Self::resize_plane(r, o, Strided::<U8x3>::new(p[0], s[0], w, h), &mut self.planes[0])
            }
            PixelFormat::Nv12 => {
                Self::resize_plane(r, o, Strided::<U8>::new(p[0], s[0], w, h), &mut self.planes[0]);
                Self::resize_plane(
                    r,
                    o,
                    Strided::<U8x2>::new(p[1], s[1], cw, ch),
                    &mut self.planes[1],
                );
            }
            PixelFormat::I420 => {
                Self::resize_plane(r, o, Strided::<U8>::new(p[0], s[0], w, h), &mut self.planes[0]);
                Self::resize_plane(r, o, Strided::<U8>::new(p[1], s[1], cw, ch), &mut self.planes[1]);
                Self::resize_plane(r, o, Strided::<U8>::new(p[2], s[2], cw, ch), &mut self.planes[2]);
            }
        }
        let mut planes: [&[u8]; 3] = [&[]; 3];
        let mut strides = [0usize; 3];
        for (i, img) in self.planes.iter().enumerate() {
            planes[i] = img.buffer();
            strides[i] = img.width() as usize * img.pixel_type().size();
        }
        Frame {
            format: self.format,
            width: self.size.0,
            height: self.size.1,
            planes,
            strides,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triangle_filter_matches_pillow_with_padded_stride() {
        // 4x2 RGB with a padded stride, halved. Pillow's BILINEAR (a triangle filter whose
        // support grows with the reduction) gives [114, 186] for this input.
        let stride = 4 * 3 + 4;
        let mut data = vec![0u8; stride * 2];
        for y in 0..2 {
            for x in 0..4 {
                data[y * stride + x * 3] = if x < 2 { 100 } else { 200 };
            }
        }
        let frame = Frame {
            format: PixelFormat::Rgb,
            width: 4,
            height: 2,
            planes: [&data, &[], &[]],
            strides: [stride, 0, 0],
        };
        let mut d = Downscaler::new(PixelFormat::Rgb, (2, 1));
        let small = d.run(&frame);
        assert_eq!((small.width, small.height, small.strides[0]), (2, 1, 6));
        assert_eq!((small.planes[0][0], small.planes[0][3]), (114, 186));
    }

    #[test]
    fn i420_planes_keep_their_geometry() {
        let (w, h) = (9, 7);
        let (cw, ch) = chroma_size(w, h);
        let (y, u, v) = (vec![50u8; w * h], vec![90u8; cw * ch], vec![160u8; cw * ch]);
        let frame = Frame {
            format: PixelFormat::I420,
            width: w,
            height: h,
            planes: [&y, &u, &v],
            strides: [w, cw, cw],
        };
        let mut d = Downscaler::new(PixelFormat::I420, (5, 3));
        let small = d.run(&frame);
        assert_eq!(small.strides, [5, 3, 3]);
        assert!(small.planes[0].iter().all(|&p| p == 50));
        assert!(small.planes[2].iter().all(|&p| p == 160));
    }
}
