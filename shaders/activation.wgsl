// Elementwise activations, included by the kernels that apply one; ACT (from the host) picks
// it: 0 SiLU, 1 GELU (exact, x · Φ(x)), 2 GELU (tanh approximation), 3 QuickGELU.

// erfc(z) for z ≥ 0, from the Chebyshev fit in Numerical Recipes (fractional error below
// 1.2e-7 everywhere, the fit core's `erf` uses): WGSL has no erf.
fn erfc_pos(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418
        + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587
        + t * (-0.82215223 + t * 0.17087277))))))));
    return t * exp(-z * z + poly);
}

// x · Φ(x) = x/2 · (1 + erf(x / √2)); for x < 0 as x/2 · erfc(|x| / √2), without cancellation.
fn gelu(x: f32) -> f32 {
    let c = erfc_pos(abs(x) * 0.70710678118654752);
    if x >= 0.0 {
        return 0.5 * x * (2.0 - c);
    }
    return 0.5 * x * c;
}

// 0.5 x (1 + tanh(√(2/π)(x + 0.044715 x³))); the argument is clamped where tanh is ±1 in f32,
// so no implementation overflows inside it.
fn gelu_tanh(x: f32) -> f32 {
    let u = clamp(0.7978845608028654 * (x + 0.044715 * x * x * x), -15.0, 15.0);
    return 0.5 * x * (1.0 + tanh(u));
}

fn quick_gelu(x: f32) -> f32 {
    return x / (1.0 + exp(-1.702 * x));
}

// ACT is a constant: the compiler keeps only its branch.
fn act(x: f32) -> f32 {
    switch ACT {
        case 1u: {
            return gelu(x);
        }
        case 2u: {
            return gelu_tanh(x);
        }
        case 3u: {
            return quick_gelu(x);
        }
        default: {
            return silu(x);
        }
    }
}
