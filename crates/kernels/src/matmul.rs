//! The one safe entry to `gemm`: row-major matrices, transposes as views.

/// A row-major `[rows, cols]` matrix, or the transpose of one (no copy).
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: isize,
    col_stride: isize,
}

impl<'a> View<'a> {
    pub(crate) fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "matrix data does not match its shape");
        View { data, rows, cols, row_stride: cols as isize, col_stride: 1 }
    }

    /// `rows` rows of `cols` values, each `row_stride` apart in `data` (a
    /// column block of a wider row-major matrix, e.g. one attention head).
    pub(crate) fn strided(data: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        assert!(cols <= row_stride && (rows == 0 || (rows - 1) * row_stride + cols <= data.len()), "strided view out of bounds");
        View { data, rows, cols, row_stride: row_stride as isize, col_stride: 1 }
    }

    pub(crate) fn t(self) -> Self {
        View { rows: self.cols, cols: self.rows, row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }
}

/// `dst = a·b` for row-major `a` `[m, k]` and `b` `[k, n]`: the path every
/// matmul of the block takes, for benchmarks that measure its ceiling.
pub fn matmul_row_major(dst: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize) {
    matmul(dst, View::new(a, m, k), View::new(b, k, n), false);
}

/// Products below this many multiply-adds run on one thread (splitting them
/// costs more than it saves).
const PARALLEL_MACS: usize = 1 << 18;

/// `dst = a·b`, or `dst += a·b` when `accumulate`; `dst` is row-major
/// `[a.rows, b.cols]`. Large products use the rayon pool.
pub(crate) fn matmul(dst: &mut [f32], a: View, b: View, accumulate: bool) {
    assert_eq!(dst.len(), a.rows * b.cols, "output does not match the product's shape");
    let parallel = a.rows * b.cols * a.cols >= PARALLEL_MACS;
    matmul_strided(dst, b.cols, a, b, accumulate, parallel);
}

/// [`matmul`] into rows `dst_row_stride` apart (a column block of a wider
/// matrix), on this thread unless `parallel`.
pub(crate) fn matmul_strided(dst: &mut [f32], dst_row_stride: usize, a: View, b: View, accumulate: bool, parallel: bool) {
    assert_eq!(a.cols, b.rows, "inner dimensions differ");
    let (m, n, k) = (a.rows, b.cols, a.cols);
    if m == 0 || n == 0 {
        return;
    }
    assert!(n <= dst_row_stride && (m - 1) * dst_row_stride + n <= dst.len(), "output out of bounds");
    let parallelism = if parallel { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    // SAFETY: every view's strides address only its own slice (checked by
    // `View::new`/`View::strided`, preserved by `t`), `dst` is exclusively
    // borrowed and its m rows of n fit (checked above), and `f32` is a type
    // gemm dispatches on.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_row_stride as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride,
            a.row_stride,
            b.data.as_ptr(),
            b.col_stride,
            b.row_stride,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_with_transposed_views_match_the_definition() {
        let a: Vec<f32> = (0..6).map(|x| x as f32).collect(); // 2×3
        let b: Vec<f32> = (0..12).map(|x| (x as f32) * 0.5 - 2.0).collect(); // 3×4
        let mut c = vec![1.0; 8];
        matmul(&mut c, View::new(&a, 2, 3), View::new(&b, 3, 4), true);
        for i in 0..2 {
            for j in 0..4 {
                let want: f32 = 1.0 + (0..3).map(|p| a[i * 3 + p] * b[p * 4 + j]).sum::<f32>();
                assert_eq!(c[i * 4 + j], want);
            }
        }
        // (aᵀ)ᵀ·b through a view of the 3×2 transpose's transpose.
        let at: Vec<f32> = (0..3).flat_map(|p| (0..2).map(move |i| (i * 3 + p) as f32)).collect();
        let mut d = vec![0.0; 8];
        matmul(&mut d, View::new(&at, 3, 2).t(), View::new(&b, 3, 4), false);
        assert_eq!(c.iter().map(|x| x - 1.0).collect::<Vec<_>>(), d);
    }
}
