//! Typed views of a merged, validated configuration: the weight plan and the backend switches
//! it names. One place turns keys into these types, for the CLI, the server and the browser.

use super::Config;
use crate::adapter::{method_bits, QuantPlan, WeightPrecision};
use crate::error::{Error, Result};
use crate::quant::Scheme;
use crate::registry::{BackendTuning, CpuTuning, MatvecShape, WebGpuTuning};

fn scheme_of(c: &Config) -> Scheme {
    let name = c.str("quantization.scheme");
    [Scheme::Symmetric, Scheme::Asymmetric]
        .into_iter()
        .find(|s| s.config_name() == name)
        .unwrap_or(Scheme::Symmetric)
}

/// `auto` → `None`, `on` → `Some(true)`, `off` → `Some(false)`.
fn tri_state(c: &Config, key: &str) -> Option<bool> {
    match c.str(key).as_str() {
        "on" => Some(true),
        "off" => Some(false),
        _ => None,
    }
}

/// The weight plan of a validated configuration: `quantization.method` names a uniform width,
/// or `mixed` takes each role's bits from `[quantization.layers]`.
pub fn weights_from_config(c: &Config) -> Result<QuantPlan> {
    let group = c.int("quantization.group_size") as usize;
    let scheme = scheme_of(c);
    let method = c.str("quantization.method");
    if method_bits(&method).is_some() {
        return QuantPlan::for_method(&method, group, scheme);
    }
    if method != "mixed" {
        return Err(Error::invalid_config(format!(
            "unknown quantization.method `{method}`"
        )));
    }
    let role = |key: &str| {
        let bits = u32::try_from(c.int(key))
            .map_err(|_| Error::invalid_config(format!("`{key}` must be a positive bit width")))?;
        WeightPrecision::from_bits(bits, group, scheme)
            .map_err(|e| Error::invalid_config(format!("`{key}`: {}", e.message)))
    };
    Ok(QuantPlan {
        attention: role("quantization.layers.attention")?,
        feedforward: role("quantization.layers.feedforward")?,
        embedding: role("quantization.layers.embedding")?,
        lm_head: role("quantization.layers.lm_head")?,
    })
}

/// The backend switches of a validated configuration.
pub fn tuning_from_config(c: &Config) -> Result<BackendTuning> {
    let shape = c.str("backend.webgpu.matvec_shape");
    let matvec_shape = match shape.trim() {
        "" => None,
        s => Some(MatvecShape::parse(s).ok_or_else(|| {
            Error::invalid_config(format!(
                "backend.webgpu.matvec_shape = \"{s}\": expected LANESxROWS or \
                 LANESxROWSxUNROLL (UNROLL 1, 2 or 4), e.g. \"128x8\""
            ))
        })?),
    };
    let per_submit = c.int("backend.webgpu.dispatches_per_submit").max(0) as usize;
    Ok(BackendTuning {
        webgpu: WebGpuTuning {
            allow_software_adapter: c.bool("backend.webgpu.allow_software_adapter"),
            wide_matvec: c.bool("backend.webgpu.wide_matvec"),
            fused_norm: c.bool("backend.webgpu.fused_norm"),
            int_prefill: c.bool("backend.webgpu.int_prefill"),
            cooperative_matrix: tri_state(c, "backend.webgpu.cooperative_matrix"),
            matvec_shape,
            checked_shaders: c.bool("backend.webgpu.checked_shaders"),
            loop_bounding: c.bool("backend.webgpu.loop_bounding"),
            dispatches_per_submit: (per_submit > 0).then_some(per_submit),
            f16: tri_state(c, "runtime.f16"),
            subgroups: tri_state(c, "runtime.subgroups"),
        },
        cpu: CpuTuning {
            exact_activations: c.bool("backend.cpu.exact_activations"),
            kernels: Some(c.str("backend.cpu.kernels")).filter(|k| k != "auto"),
        },
    })
}
