//! The op lists the tests record, named after what they compute: each call records its ops in
//! one `Backend::run`, so a call whose ops form a fused group (with scratch intermediates)
//! runs the fused kernels, and a sequence of calls runs them apart. Reads wait at once.
//!
//! Here: the parameters those lists take; the lists themselves in `op_lists`, the former
//! composite backend methods as the `Calls` trait in `composite`, and a LLaMA-shaped model
//! recorded as the adapter records in `llama`.

#![allow(dead_code)]

mod composite;
mod llama;
mod op_lists;

// Each test binary uses a part of these (the reason for `dead_code` above too).
#[allow(unused_imports)]
pub use composite::Calls;
#[allow(unused_imports)]
pub use llama::{llama_layer_ops, LayerBufs, Llama, LlamaShape, StepBufs};
#[allow(unused_imports)]
pub use op_lists::{attention_op, ffn_ops, linear_op, norm_op, qkv_rope_ops, rope_store_ops};

use lowbit_core::kv::{KvLayout, KvView};
use lowbit_core::ops::{RopeShape, RopeStyle};
use lowbit_core::{BufferId, DType};

/// An RMSNorm: `dim` weights in `weight`.
#[derive(Clone, Copy, Debug)]
pub struct RmsNorm {
    pub weight: BufferId,
    pub dim: usize,
    pub eps: f32,
}

/// Causal attention of `n_tokens` rows at `pos0 ..` over `pos0 + n_tokens` cache rows.
#[derive(Clone, Copy, Debug)]
pub struct AttentionParams {
    pub n_tokens: usize,
    pub pos0: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
}

impl AttentionParams {
    /// The cache view over `k` and `v` (rows up to this step's).
    pub fn view(&self, k: BufferId, v: BufferId) -> KvView {
        kv_view(
            k,
            v,
            self.n_kv_heads,
            self.head_dim,
            self.pos0 + self.n_tokens,
        )
    }
}

/// `n_tokens` fused `q | k | v` rows at `pos0 ..`, as the LLaMA adapter records them.
#[derive(Clone, Copy, Debug)]
pub struct QkvParams {
    pub n_tokens: usize,
    pub pos0: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub theta: f32,
    pub style: RopeStyle,
}

impl QkvParams {
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
    pub fn row_len(&self) -> usize {
        self.q_dim() + 2 * self.kv_dim()
    }
    fn rope(&self, n_heads: usize) -> RopeShape {
        RopeShape {
            n_tokens: self.n_tokens,
            n_heads,
            head_dim: self.head_dim,
            pos0: self.pos0,
            theta_bits: self.theta.to_bits(),
            style: self.style,
        }
    }
}

/// A view of f32 caches `k`, `v` of `rows` rows.
pub fn kv_view(
    k: BufferId,
    v: BufferId,
    n_kv_heads: usize,
    head_dim: usize,
    rows: usize,
) -> KvView {
    KvView {
        k,
        v,
        layout: KvLayout {
            n_kv_heads,
            head_dim,
            rows,
            dtype: DType::F32,
            rotated: false,
        },
        side: None,
        ring: None,
    }
}
