//! Merging configuration layers under a profile and validating the result: the step the CLI,
//! the server and the browser build share once each has gathered its own layers (files,
//! environment and flags natively; the page's `config` object in a browser) and capabilities.

use super::validate::{validate, Capabilities, Validation};
use super::{Config, Layer, Source};
use crate::error::Result;
use crate::profile::BrowserProfile;
use crate::registry::find_profile;
use std::sync::Arc;

/// A merged, validated configuration and the profile it was validated under.
pub struct Resolution {
    /// The merged configuration before validation.
    pub merged: Config,
    /// The profile applied.
    pub profile: Arc<dyn BrowserProfile>,
    /// Why that profile (`runtime.profile = "safari"`, `auto: …`).
    pub profile_reason: String,
    /// The validator's answer.
    pub validation: Validation,
}

/// Merges `below` (defaults under the profile), the profile's `[config]` table and `layers`
/// (lowest first), then validates against `caps`. The profile is `runtime.profile` when it names
/// a registered one, else `auto_profile` (what the caller detected, with `auto_reason`).
///
/// Errors: `INVALID_CONFIG` when neither names a registered profile.
pub fn resolve_layers(
    below: &Layer,
    layers: &[&Layer],
    auto_profile: &str,
    auto_reason: &str,
    caps: &Capabilities,
) -> Result<Resolution> {
    let first = Config::from_layers(std::iter::once(below).chain(layers.iter().copied()));
    let asked = first.str("runtime.profile");
    let (profile, profile_reason) = match find_profile(&asked) {
        Ok(p) => (p, format!("runtime.profile = \"{asked}\"")),
        // `auto`, or a name the validator will correct: the detected profile.
        Err(_) => (find_profile(auto_profile)?, format!("auto: {auto_reason}")),
    };
    let name = profile.name().to_owned();
    let mut profile_layer = Layer::new(Source::Profile(name.clone()));
    for (k, v) in profile.config_defaults() {
        profile_layer.push(k, v, Source::Profile(name.clone()));
    }
    let all = [below, &profile_layer]
        .into_iter()
        .chain(layers.iter().copied());
    let merged = Config::from_layers(all);
    let validation = validate(&merged, caps, profile.as_ref());
    Ok(Resolution {
        merged,
        profile,
        profile_reason,
        validation,
    })
}
