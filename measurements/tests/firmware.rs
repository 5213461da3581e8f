//! The fixed Debian firmware builds in `tests/data` (see PROVENANCE.md): MRTD in
//! both page orders and the CFV digest, as two independent implementations give them.

mod common;

use cocoon_measurements::tdvf::{self, PageOrder};

#[test]
fn tdx_firmware_mrtd_and_cfv() {
    let dir = common::temp_dir("tdx");
    let fw = std::fs::read(common::unpack(common::TDX_DEB, common::TDX_FW, &dir)).unwrap();
    assert_eq!(
        hex::encode(tdvf::mrtd(&fw, PageOrder::OnePass).unwrap()),
        "a7a1f751abc454f9cbab198ca8d2edb2821935df525c74182b5e776cb0929e8c59aefecce725b0d08a5e9d3d3183bd08"
    );
    assert_eq!(
        hex::encode(tdvf::mrtd(&fw, PageOrder::TwoPass).unwrap()),
        "b90b236113eb4c0d4df4ef590568c14e6028a3a31d7e8ac63dee9845df5008d3ebf82d4f5974e933798f65d7a279b9a9"
    );
    assert_eq!(
        hex::encode(tdvf::cfv_digest(&fw).unwrap()),
        "327d4a91229b3993a7f6f64740d94ff689d44b45edada6e255596d4c7aa287576a92fb1f5c350c287caf60670a5bad5a"
    );
    // Every prefix and a corrupted table are refused without a panic.
    for cut in [0, 49, 4096, fw.len() - 1] {
        assert!(tdvf::mrtd(&fw[..cut], PageOrder::OnePass).is_err(), "cut at {cut}");
    }
    let e = tdvf::mrtd(&vec![0xff; 1 << 20], PageOrder::OnePass).unwrap_err().to_string();
    assert!(e.contains("not an OVMF image"), "{e}");
}
