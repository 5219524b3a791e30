//! Validating objects against the official Kubernetes JSON schemas with
//! `kubernetes-validate` (PyPI), shared by every test that writes objects.

/// Kubernetes version whose schemas are used.
pub const SCHEMA_VERSION: &str = "1.37.0";

/// Validates `objects` strictly (unknown fields are errors) with the tools
/// venv's kubernetes-validate; a missing venv fails the calling test
/// (`cargo xtask tools` provides it). Returns `Ok(true)` once validated.
pub fn validate(objects: &[serde_json::Value]) -> anyhow::Result<bool> {
    let python = attache_testkit::require_python();
    let dir = tempfile::tempdir()?;
    let mut files = vec![];
    for (i, obj) in objects.iter().enumerate() {
        let path = dir.path().join(format!("{i:03}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(obj)?)?;
        files.push(path);
    }
    let out = std::process::Command::new(python)
        .args([
            "-m",
            "kubernetes_validate",
            "--strict",
            "--quiet",
            "-k",
            SCHEMA_VERSION,
        ])
        .args(&files)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "kubernetes-validate failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(true)
}
