//! `lowbit config validate|show`: check a config file (with auto-corrections) and print the
//! effective configuration with the origin of every value.

use clap::{Args, Subcommand};
use lowbit::core::config::{Source, ValidationStatus};
use lowbit::selection::{resolve, ConfigRequest};
use lowbit::Result;
use std::path::PathBuf;

/// `lowbit config ...`.
#[derive(Args, Debug)]
pub struct ConfigArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand, Debug)]
enum Action {
    /// Validate a config file against the schema, this machine's capabilities and a profile.
    /// Exit status: 0 valid, 1 valid after auto-corrections, 2 invalid.
    Validate {
        /// The TOML file.
        file: PathBuf,
        /// Profile to validate against (default: the file's runtime.profile, else auto).
        #[arg(long)]
        profile: Option<String>,
        /// Write the corrected TOML back to FILE (only when no error remains; comments are
        /// not kept).
        #[arg(long)]
        fix: bool,
        /// One JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Print the effective configuration (defaults, profile, file, environment) and where each
    /// value came from.
    Show {
        /// Config file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Profile (as `--profile` of the other commands).
        #[arg(long)]
        profile: Option<String>,
        /// JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

fn profile_layer(req: &mut ConfigRequest, profile: &Option<String>) {
    if let Some(p) = profile {
        req.cli.push(
            "runtime.profile",
            p.clone().into(),
            Source::Cli("--profile".into()),
        );
    }
}

/// Runs the subcommand; returns the exit status.
pub fn run(a: &ConfigArgs) -> i32 {
    match &a.action {
        Action::Validate {
            file,
            profile,
            fix,
            json,
        } => match validate(file, profile, *fix, *json) {
            Ok(code) => code,
            Err(e) => {
                super::common::report_error(&e, *json);
                2
            }
        },
        Action::Show {
            config,
            profile,
            json,
        } => match show(config, profile, *json) {
            Ok(()) => 0,
            Err(e) => {
                super::common::report_error(&e, *json);
                1
            }
        },
    }
}

fn validate(file: &PathBuf, profile: &Option<String>, fix: bool, json: bool) -> Result<i32> {
    // The file alone: environment overrides would make the verdict depend on the shell.
    let mut req = ConfigRequest {
        file: Some(file.clone()),
        env: false,
        ..Default::default()
    };
    profile_layer(&mut req, profile);
    let r = resolve(&req)?;
    let v = &r.validation;
    let status = v.status();
    let fixed = v
        .corrected
        .to_toml_where(|s| matches!(s, Source::File(_) | Source::Corrected));
    let mut written = false;
    if fix && status == ValidationStatus::Corrected {
        std::fs::write(file, &fixed).map_err(|e| {
            lowbit::Error::invalid_config(format!("cannot write {}: {e}", file.display()))
        })?;
        written = true;
    }
    if json {
        let out = serde_json::json!({
            "file": file.display().to_string(),
            "status": status,
            "profile": r.profile.name(),
            "errors": v.errors,
            "warnings": v.warnings,
            "corrections": v.corrections,
            "corrected_toml": fixed,
            "written": written,
        });
        println!("{out}");
    } else {
        let s = match status {
            ValidationStatus::Valid => "valid",
            ValidationStatus::Corrected => "valid after corrections",
            ValidationStatus::Invalid => "invalid",
        };
        println!(
            "{}: {s} (profile {}; {} error(s), {} correction(s), {} warning(s))",
            file.display(),
            r.profile.name(),
            v.errors.len(),
            v.corrections.len(),
            v.warnings.len()
        );
        for e in &v.errors {
            println!("  error      {}: {}", e.key, e.message);
        }
        for c in &v.corrections {
            println!(
                "  corrected  {}: {} -> {} ({})",
                c.key, c.old, c.new, c.reason
            );
        }
        for w in &v.warnings {
            println!("  warning    {}: {}", w.key, w.message);
        }
        if written {
            println!("wrote the corrected config to {}", file.display());
        } else if fix && status == ValidationStatus::Invalid {
            println!("not written: fix the errors first");
        }
    }
    Ok(match status {
        ValidationStatus::Valid => 0,
        ValidationStatus::Corrected => 1,
        ValidationStatus::Invalid => 2,
    })
}

fn show(config: &Option<PathBuf>, profile: &Option<String>, json: bool) -> Result<()> {
    let mut req = ConfigRequest {
        file: config.clone(),
        ..Default::default()
    };
    profile_layer(&mut req, profile);
    let r = resolve(&req)?;
    let rows: Vec<(String, String, String)> = r
        .merged
        .settings()
        .map(|(k, s)| (k.to_string(), s.value.to_string(), s.source.to_string()))
        .collect();
    if json {
        let out = serde_json::json!({
            "profile": {"name": r.profile.name(), "reason": r.profile_reason},
            "values": rows.iter().map(|(k, v, s)| serde_json::json!({"key": k, "value": v, "source": s})).collect::<Vec<_>>(),
            "unknown_keys": r.merged.unknown.iter().map(|u| u.path.clone()).collect::<Vec<_>>(),
            "unknown_env": r.unknown_env,
            "validation": {
                "status": r.validation.status(),
                "errors": r.validation.errors,
                "corrections": r.validation.corrections,
                "warnings": r.validation.warnings,
            },
        });
        println!("{out}");
        return Ok(());
    }
    println!("profile: {} ({})", r.profile.name(), r.profile_reason);
    let w = rows
        .iter()
        .map(|(k, v, _)| k.len() + v.len() + 3)
        .max()
        .unwrap_or(0);
    for (k, v, s) in &rows {
        let kv = format!("{k} = {v}");
        println!("{kv:w$}  # {s}");
    }
    for u in &r.merged.unknown {
        println!("unknown key {} (from {})", u.path, u.source);
    }
    for (var, hint) in &r.unknown_env {
        match hint {
            Some(h) => println!("unknown variable {var}; did you mean {h}?"),
            None => println!("unknown variable {var}"),
        }
    }
    let v = &r.validation;
    println!(
        "validation: {:?} ({} error(s), {} correction(s), {} warning(s)); `lowbit config validate` explains",
        v.status(),
        v.errors.len(),
        v.corrections.len(),
        v.warnings.len()
    );
    Ok(())
}
