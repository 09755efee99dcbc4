//! Records the git commit the binary is built from for `seqfeed --version`
//! (`SEQFEED_GIT_COMMIT`): `git rev-parse --short HEAD` when the source is a
//! git checkout and git is installed, else "unknown". Never fails the build.
use std::path::Path;
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!s.is_empty()).then_some(s)
}

fn main() {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| ".".into());
    let commit = git(&dir, &["rev-parse", "--short", "HEAD"])
        .filter(|c| c.chars().all(|ch| ch.is_ascii_hexdigit()))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SEQFEED_GIT_COMMIT={commit}");
    println!("cargo:rerun-if-env-changed=SEQFEED_GIT_COMMIT");
    // Rebuild when HEAD moves: HEAD itself, and the branch it points to.
    if let Some(git_dir) = git(&dir, &["rev-parse", "--absolute-git-dir"]) {
        let git_dir = Path::new(&git_dir);
        println!("cargo:rerun-if-changed={}", git_dir.join("HEAD").display());
        if let Some(r) = git(&dir, &["symbolic-ref", "-q", "HEAD"]) {
            let ref_file = git_dir.join(&r);
            if ref_file.exists() {
                println!("cargo:rerun-if-changed={}", ref_file.display());
            }
            let packed = git_dir.join("packed-refs");
            if packed.exists() {
                println!("cargo:rerun-if-changed={}", packed.display());
            }
        }
    }
}
