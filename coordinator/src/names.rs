//! Names of models, deployments, knowledge bases and keys.

/// What fits in a URL path and a metric label: 1-64 letters, digits, '-', '_' or '.', not
/// starting with '.'.
pub fn check_name(kind: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!("{kind} name '{name}' must be 1-64 characters of letters, digits, '-', '_' or '.'"))
    }
}
