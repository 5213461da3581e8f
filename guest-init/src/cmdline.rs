//! The `cocoon.*` parameters of the kernel command line. The command line is
//! part of the launch measurement, so everything here is attested.

pub struct BootArgs {
    pub config_digest: [u8; 32],
    pub platform: String,
    /// `cocoon.insecure_simulated=1`: development images only; it changes the
    /// measurement, so no production reference value can match such a guest.
    pub insecure_simulated: bool,
    pub port: u32,
}

impl BootArgs {
    pub fn parse(cmdline: &str) -> Result<Self, String> {
        let mut digest = None;
        let mut platform = "auto".to_string();
        let mut insecure_simulated = false;
        let mut port = 4000;
        for word in cmdline.split_whitespace() {
            let Some((key, value)) = word.split_once('=') else { continue };
            match key {
                "cocoon.config" => {
                    let hex = value
                        .strip_prefix("sha256:")
                        .ok_or_else(|| format!("cocoon.config={value}: expected sha256:<64 hex digits>"))?;
                    let bytes = hex::decode(hex).map_err(|e| format!("cocoon.config: {e}"))?;
                    digest = Some(
                        bytes.try_into().map_err(|_| "cocoon.config: expected 32 bytes (64 hex digits)".to_string())?,
                    );
                }
                "cocoon.platform" => platform = value.to_string(),
                "cocoon.insecure_simulated" => insecure_simulated = value == "1",
                "cocoon.port" => port = value.parse().map_err(|_| format!("cocoon.port={value}: not a number"))?,
                _ => {}
            }
        }
        let config_digest = digest.ok_or("the kernel command line has no cocoon.config=sha256:… value")?;
        Ok(BootArgs { config_digest, platform, insecure_simulated, port })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        let d = "ab".repeat(32);
        let a = BootArgs::parse(&format!("console=ttyS0 cocoon.config=sha256:{d} cocoon.platform=simulated")).unwrap();
        assert_eq!(a.config_digest, [0xab; 32]);
        assert_eq!(a.platform, "simulated");
        assert!(!a.insecure_simulated);
        assert_eq!(a.port, 4000);
        assert!(BootArgs::parse("console=ttyS0").err().unwrap().contains("no cocoon.config"));
        assert!(BootArgs::parse("cocoon.config=ab").err().unwrap().contains("expected sha256:"));
        assert!(BootArgs::parse("cocoon.config=sha256:abcd").err().unwrap().contains("32 bytes"));
    }
}
