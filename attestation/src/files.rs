//! Reading files a verifier or producer is handed, never more than a limit.

use std::io::Read;
use std::path::Path;

/// The whole file, or an error when it holds more than `limit` bytes. The
/// bound is enforced while reading (not from the file's reported size, which
/// kernel attribute files and FIFOs do not give truthfully).
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    f.take(limit + 1).read_to_end(&mut out).map_err(|e| e.to_string())?;
    if out.len() as u64 > limit {
        return Err(format!("larger than the limit of {limit} bytes"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_the_limit() {
        let p = std::env::temp_dir().join(format!("cocoon-limited-{}", std::process::id()));
        std::fs::write(&p, [7u8; 10]).unwrap();
        assert_eq!(read_limited(&p, 10).unwrap(), [7u8; 10]);
        assert_eq!(read_limited(&p, 9).unwrap_err(), "larger than the limit of 9 bytes");
        let _ = std::fs::remove_file(&p);
    }
}
