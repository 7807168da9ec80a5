//! An INT8 stride-2 convolution over an image of few channels (the stem of MobileNet-style
//! networks) rewritten over 2×2 blocks: `SpaceToDepth` turns the `[N, C, H, W]` input into
//! `[N, 4C, H/2, W/2]`, and a stride-1 convolution with a `⌈k/2⌉` kernel, whose taps past the
//! original kernel are zero, computes the same sums.
//!
//! ONNX Runtime's integer convolution gathers one `C·k·k`-wide patch per output pixel, which is
//! slow when `C` is 3. Measured on the INT8 MobileNetV2 TFLite file (ONNX Runtime 1.32.0, one
//! thread, 2-vCPU VM, per-node profile of 200 runs): its stem took 240 µs as it was, 100 µs over
//! blocks plus 70 µs to move the input (Transpose, SpaceToDepth, Transpose); the whole model
//! went from 1.48 to 1.41 ms (p50 of 300 runs, four alternated rounds), outputs unchanged. Float
//! convolutions are left as they are: ONNX Runtime's float stem of the same model takes 121 µs.

use tract_onnx::pb::AttributeProto;

use super::onnx::ints;

/// At most this many input channels (an image: gray, RGB, RGBA).
const FEW_CHANNELS: i64 = 4;

/// How a convolution runs over 2×2 blocks.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Blocks {
    /// The original kernel `[kh, kw]` and input channels.
    kernel: [i64; 2],
    channels: i64,
    /// The kernel over blocks, and the block rows and columns padded at the end.
    block_kernel: [i64; 2],
    pads_end: [i64; 2],
}

impl Blocks {
    /// The rewrite of a convolution over the NHWC `input` with a `kernel` over `channels`,
    /// `[strides, dilations]` and SAME padding or none, when it applies: stride 2 and no dilation
    /// on both axes, few channels, an even height and width known before the run, and nothing
    /// padded before the first row or column (TFLite's SAME pads there only for kernels above 3).
    pub fn plan(
        input: &[i64],
        kernel: [i64; 2],
        channels: i64,
        [strides, dilations]: [[i32; 2]; 2],
        same: bool,
    ) -> Option<Self> {
        let [_, height, width, _] = <[i64; 4]>::try_from(input).ok()?;
        if strides != [2, 2] || dilations != [1, 1] || !(1..=FEW_CHANNELS).contains(&channels) {
            return None;
        }
        let mut block_kernel = [0; 2];
        let mut pads_end = [0; 2];
        for (axis, size) in [height, width].into_iter().enumerate() {
            let k = kernel[axis];
            if size <= 0 || size % 2 != 0 || !(1..=size).contains(&k) {
                return None;
            }
            let out = if same { (size + 1) / 2 } else { (size - k) / 2 + 1 };
            let padded = if same { ((out - 1) * 2 + k - size).max(0) } else { 0 };
            if padded / 2 > 0 {
                return None;
            }
            block_kernel[axis] = (k + 1) / 2;
            pads_end[axis] = out - (size / 2 - block_kernel[axis] + 1);
        }
        Some(Blocks { kernel, channels, block_kernel, pads_end })
    }

    /// The filter over blocks, `[outputs, 4·C, ⌈kh/2⌉, ⌈kw/2⌉]`.
    pub fn filter_dims(&self, outputs: i64) -> [i64; 4] {
        [outputs, 4 * self.channels, self.block_kernel[0], self.block_kernel[1]]
    }

    /// Element `p` of the filter over blocks as an element of the filter `[O, C, kh, kw]`;
    /// `None` for a tap past the kernel, which is zero.
    pub fn source(&self, p: usize) -> Option<usize> {
        let ([kh, kw], [bh, bw], c) = (self.kernel, self.block_kernel, self.channels);
        let p = p as i64;
        let (bx, by, j, o) = (p % bw, (p / bw) % bh, (p / (bw * bh)) % (4 * c), p / (bw * bh * 4 * c));
        // SpaceToDepth's channel j holds channel j % C at offset j / C in the block, row-major.
        let (offset, channel) = (j / c, j % c);
        let (y, x) = (2 * by + offset / 2, 2 * bx + offset % 2);
        (y < kh && x < kw).then_some((((o * c + channel) * kh + y) * kw + x) as usize)
    }

    /// The attributes of the convolution over blocks, all but `group`, which the caller adds.
    pub fn attributes(&self) -> Vec<AttributeProto> {
        vec![
            ints("strides", &[1, 1]),
            ints("pads", &[0, 0, self.pads_end[0], self.pads_end[1]]),
            ints("kernel_shape", &self.block_kernel),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain convolution, NCHW, filter `[O, C, kh, kw]`, stride `stride`, `pads` (top, left,
    /// bottom, right) of zeros: the reference both forms are checked against.
    fn convolve(
        x: &[f32],
        [c, h, w]: [i64; 3],
        filter: &[f32],
        [o, kh, kw]: [i64; 3],
        stride: i64,
        [top, left, bottom, right]: [i64; 4],
    ) -> Vec<f32> {
        let (oh, ow) = ((h + top + bottom - kh) / stride + 1, (w + left + right - kw) / stride + 1);
        let mut out = Vec::new();
        for m in 0..o {
            for r in 0..oh {
                for s in 0..ow {
                    let mut sum = 0.0;
                    for ch in 0..c {
                        for dy in 0..kh {
                            for dx in 0..kw {
                                let (y, x_) = (r * stride + dy - top, s * stride + dx - left);
                                if (0..h).contains(&y) && (0..w).contains(&x_) {
                                    sum += x[((ch * h + y) * w + x_) as usize]
                                        * filter[(((m * c + ch) * kh + dy) * kw + dx) as usize];
                                }
                            }
                        }
                    }
                    out.push(sum);
                }
            }
        }
        out
    }

    /// ONNX's SpaceToDepth with block 2 on `[C, H, W]`.
    fn space_to_depth(x: &[f32], [c, h, w]: [i64; 3]) -> Vec<f32> {
        let mut out = Vec::new();
        for j in 0..4 * c {
            let (offset, ch) = (j / c, j % c);
            for r in 0..h / 2 {
                for s in 0..w / 2 {
                    out.push(x[((ch * h + 2 * r + offset / 2) * w + 2 * s + offset % 2) as usize]);
                }
            }
        }
        out
    }

    fn values(n: i64, seed: u32) -> Vec<f32> {
        (0..n).map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 17).map(|v| v as f32 - 8.0).collect()
    }

    #[test]
    fn the_convolution_over_blocks_computes_the_same_sums() {
        // (input height, width, channels, kernel, SAME): the MobileNet stem, a 2×2 kernel,
        // unpadded (VALID) 3×3 and 5×5 kernels, one channel.
        let cases = [
            (8, 6, 3, [3, 3], true),
            (6, 8, 1, [2, 2], true),
            (8, 8, 4, [3, 3], false),
            (10, 6, 3, [5, 3], false),
        ];
        for (h, w, c, [kh, kw], same) in cases {
            let o = 5;
            let blocks = Blocks::plan(&[1, h, w, c], [kh, kw], c, [[2, 2], [1, 1]], same).expect("applies");
            let x = values(c * h * w, 7);
            let filter = values(o * c * kh * kw, 11);
            let (pad_h, pad_w) = if same { ((kh - 2).max(0), (kw - 2).max(0)) } else { (0, 0) };
            let expected = convolve(&x, [c, h, w], &filter, [o, kh, kw], 2, [0, 0, pad_h, pad_w]);

            let [_, bc, bh, bw] = blocks.filter_dims(o);
            let block_filter: Vec<f32> = (0..(o * bc * bh * bw) as usize)
                .map(|p| blocks.source(p).map_or(0.0, |s| filter[s]))
                .collect();
            let pads = [0, 0, blocks.pads_end[0], blocks.pads_end[1]];
            let got = convolve(
                &space_to_depth(&x, [c, h, w]),
                [bc, h / 2, w / 2],
                &block_filter,
                [o, bh, bw],
                1,
                pads,
            );
            assert_eq!(got, expected, "{h}×{w}×{c}, kernel {kh}×{kw}, same {same}");
        }
    }

    #[test]
    fn applies_only_where_it_computes_the_same() {
        let plan = |input: &[i64], kernel, channels, strides, same| {
            Blocks::plan(input, kernel, channels, [strides, [1, 1]], same)
        };
        assert!(plan(&[1, 224, 224, 3], [3, 3], 3, [2, 2], true).is_some());
        assert!(plan(&[-1, 224, 224, 3], [3, 3], 3, [2, 2], true).is_some(), "any batch");
        assert_eq!(plan(&[1, 224, 224, 3], [3, 3], 3, [1, 1], true), None, "stride 1");
        assert_eq!(plan(&[1, 224, 224, 32], [3, 3], 32, [2, 2], true), None, "many channels");
        assert_eq!(plan(&[1, 225, 224, 3], [3, 3], 3, [2, 2], true), None, "odd height");
        assert_eq!(plan(&[1, -1, -1, 3], [3, 3], 3, [2, 2], true), None, "size known at run time");
        assert_eq!(plan(&[1, 224, 224, 3], [7, 7], 3, [2, 2], true), None, "SAME pads the first rows");
        assert_eq!(plan(&[1, 224, 3], [3, 3], 3, [2, 2], true), None, "not an image");
        let dilated = Blocks::plan(&[1, 224, 224, 3], [3, 3], 3, [[2, 2], [2, 2]], true);
        assert_eq!(dilated, None, "dilated");
    }
}
