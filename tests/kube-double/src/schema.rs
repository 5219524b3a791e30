//! Validating objects against the official Kubernetes JSON schemas with
//! `kubernetes-validate` (PyPI), shared by every test that writes objects.

/// Kubernetes version whose schemas are used.
pub const SCHEMA_VERSION: &str = "1.37.0";

/// Validates `objects` strictly (unknown fields are errors). Returns
/// `Ok(false)` when the validator is not installed and the
/// `ATTACHE_REQUIRE_SDK_TESTS` variable is unset (a notice is printed);
/// with the variable set (CI), a missing validator is an error.
pub fn validate(objects: &[serde_json::Value]) -> anyhow::Result<bool> {
    let available = std::process::Command::new("python3")
        .args(["-c", "import kubernetes_validate"])
        .status()
        .is_ok_and(|s| s.success());
    if !available {
        anyhow::ensure!(
            std::env::var_os("ATTACHE_REQUIRE_SDK_TESTS").is_none(),
            "kubernetes-validate is required (pip install -r tests/requirements.txt)"
        );
        eprintln!(
            "NOTICE: kubernetes-validate is not installed (pip install kubernetes-validate); skipping schema validation"
        );
        return Ok(false);
    }
    let dir = tempfile::tempdir()?;
    let mut files = vec![];
    for (i, obj) in objects.iter().enumerate() {
        let path = dir.path().join(format!("{i:03}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(obj)?)?;
        files.push(path);
    }
    let out = std::process::Command::new("python3")
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
