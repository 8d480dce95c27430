//! A prebuilt kernel (`QUIESCE_KERNELS`) that is not a kernel ELF for its
//! architecture is refused at once by the boot tests' helper, with a message
//! naming the file, instead of hanging QEMU until the boot times out.
//!
//! Its own test binary: `QUIESCE_KERNELS` is set for the whole process.

use std::time::Instant;
use xtask::Arch;

#[test]
fn random_bytes_are_refused_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("quiesce-bad-kernels-t-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bytes: Vec<u8> = (0u32..65536)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for arch in Arch::ALL {
        std::fs::write(dir.join(arch.binary()), &bytes).unwrap();
    }
    // This binary runs this one test: no other thread reads the
    // environment while it changes.
    std::env::set_var(quiesce_tests::KERNELS_ENV, &dir);
    for arch in Arch::ALL {
        let started = Instant::now();
        let err = std::panic::catch_unwind(|| quiesce_tests::kernel(arch))
            .expect_err("a file of random bytes must be refused");
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        let file = dir.join(arch.binary());
        assert!(
            msg.contains(&format!(
                "kernel file {} is not a {arch} kernel",
                file.display()
            )),
            "{msg}"
        );
        assert!(started.elapsed().as_secs() < 10);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
