//! Cases of the ops that place tokens: RoPE over column views at positions past 0, KV writes
//! into rows of a cache, and attention with every mask and grouped-query ratio.

use super::build::CaseBuilder;
use super::tolerance::{DATA, F32_MATH};
use super::Case;
use crate::kv::KvView;
use crate::ops::{AttentionShape, Cols, Mask, Op, RopeShape, RopeStyle};

/// A RoPE case: `src` and `dst` are `(offset, stride)` of column views (`dst` `None`: in place).
#[allow(clippy::too_many_arguments)]
fn rope_case(
    style: RopeStyle,
    head_dim: usize,
    n_heads: usize,
    n_tokens: usize,
    pos0: usize,
    theta: f32,
    src: (usize, usize),
    dst: Option<(usize, usize)>,
) -> Case {
    let width = n_heads * head_dim;
    let shape = format!(
        "{style:?} hd={head_dim} heads={n_heads} n={n_tokens} pos0={pos0} src=({},{}) {}",
        src.0,
        src.1,
        match dst {
            Some((o, s)) => format!("dst=({o},{s})"),
            None => "in place".into(),
        }
    );
    let mut b = CaseBuilder::new("rope", shape, "f32", F32_MATH);
    let rows_len = |(off, stride): (usize, usize)| off + (n_tokens - 1) * stride + width;
    let x = b.input(rows_len(src));
    let x_cols = Cols::new(x, src.0, src.1);
    let out_cols = match dst {
        Some(d) => Cols::new(b.input(rows_len(d)), d.0, d.1),
        None => x_cols,
    };
    b.op(Op::Rope {
        x: x_cols,
        out: out_cols,
        shape: RopeShape {
            n_tokens,
            n_heads,
            head_dim,
            pos0,
            theta_bits: theta.to_bits(),
            style,
        },
    });
    // The whole destination buffer: columns outside the view must keep their values.
    b.check_all(out_cols.buf);
    b.finish()
}

pub(super) fn rope() -> Vec<Case> {
    use RopeStyle::{Adjacent, Halves};
    vec![
        // Queries of a fused q|k|v row (3 heads of 64, 2 kv heads) to a dense buffer.
        rope_case(Adjacent, 64, 3, 1, 17, 10_000.0, (0, 320), Some((0, 192))),
        // Keys in place inside the fused row.
        rope_case(Adjacent, 64, 1, 3, 5, 10_000.0, (192, 320), None),
        rope_case(Halves, 80, 2, 3, 5, 1_000_000.0, (80, 400), None),
        rope_case(Adjacent, 96, 1, 7, 0, 10_000.0, (0, 96), None),
        rope_case(Halves, 64, 4, 7, 100, 500_000.0, (0, 256), Some((32, 300))),
    ]
}

pub(super) fn kv_write() -> Vec<Case> {
    let mut v = Vec::new();
    for (n_kv, hd, q_dim, n, pos0, rows) in [(2, 64, 256, 3, 4, 9), (1, 80, 160, 1, 8, 9)] {
        let kv_dim = n_kv * hd;
        let row = q_dim + 2 * kv_dim;
        let shape = format!("kv_heads={n_kv} hd={hd} n={n} pos0={pos0} rows={rows} from q|k|v");
        let mut b = CaseBuilder::new("kv_write", shape, "f32", DATA);
        let qkv = b.input(n * row);
        // Rows already in the cache must stay as they are.
        let k = b.input(rows * kv_dim);
        let vv = b.input(rows * kv_dim);
        let kv = KvView::over(k, vv, n_kv, hd, rows);
        b.op(Op::KvWrite {
            k: Cols::new(qkv, q_dim, row),
            v: Cols::new(qkv, q_dim + kv_dim, row),
            kv,
            pos0,
            n_tokens: n,
        });
        b.check_all(k);
        b.check_all(vv);
        v.push(b.finish());
    }
    v
}

/// An attention case over an f32 view of `rows` rows (`kv_len` of them attended to).
#[allow(clippy::too_many_arguments)]
fn attention_case(
    n_tokens: usize,
    pos0: usize,
    kv_len: usize,
    rows: usize,
    n_heads: usize,
    n_kv: usize,
    hd: usize,
    mask: Mask,
) -> Case {
    let shape =
        format!("n={n_tokens} pos0={pos0} kv_len={kv_len} heads={n_heads}/{n_kv} hd={hd} {mask:?}");
    let mut b = CaseBuilder::new("attention", shape, "f32", F32_MATH);
    // Queries of a few units, so the softmax is neither flat nor one-hot.
    let qs = b.random(n_tokens * n_heads * hd, 3.0);
    let q = b.data(qs);
    let k = b.input(rows * n_kv * hd);
    let vv = b.input(rows * n_kv * hd);
    let out = b.zeros(n_tokens * n_heads * hd);
    b.op(Op::Attention {
        q,
        kv: KvView::over(k, vv, n_kv, hd, rows),
        out,
        shape: AttentionShape {
            n_tokens,
            pos0,
            kv_len,
            n_heads,
            scale: 1.0 / (hd as f32).sqrt(),
            mask,
        },
    });
    b.check_all(out);
    b.finish()
}

pub(super) fn attention() -> Vec<Case> {
    vec![
        attention_case(7, 0, 7, 7, 4, 1, 64, Mask::Causal),
        attention_case(1, 12, 13, 16, 6, 2, 80, Mask::Causal),
        attention_case(3, 5, 8, 8, 2, 2, 96, Mask::Causal),
        // Cross-attention: kv_len differs from the query rows.
        attention_case(5, 0, 11, 11, 3, 3, 64, Mask::None),
        attention_case(1, 4, 7, 9, 4, 2, 80, Mask::None),
        attention_case(9, 0, 9, 9, 2, 1, 64, Mask::Padding { valid: 6 }),
        attention_case(7, 3, 10, 12, 4, 2, 64, Mask::Window { window: 4 }),
        attention_case(1, 9, 10, 10, 2, 1, 96, Mask::Window { window: 3 }),
    ]
}
