//! The runtime's command line: NUL-separated arguments after the program name (any bytes,
//! not only UTF-8), through `argv::dispatch` and what `runtime::prepare` reads for each
//! subcommand (container id, bundle, process file, exec flags, update resources).
#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use labgpu::argv::{container_id, dispatch, flag_value, has_flag, Face};
use labgpu::owner::valid_container_id;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut argv = vec![OsString::from("labgpu")];
    if !data.is_empty() {
        argv.extend(
            data.split(|b| *b == 0)
                .map(|a| OsString::from_vec(a.to_vec())),
        );
    }
    let Face::Runtime(inv) = dispatch(&argv) else {
        return;
    };
    assert!(inv.sub_index >= 1 && inv.sub_index < argv.len());
    assert_eq!(
        argv[inv.sub_index].as_bytes(),
        inv.subcommand.as_bytes(),
        "subcommand is not the word at sub_index"
    );
    let sub = inv.sub_args(&argv);
    if let Some(id) = container_id(sub) {
        assert!(
            sub.iter().any(|a| a.to_string_lossy() == id),
            "container id {id:?} is none of the arguments"
        );
        let _ = valid_container_id(&id);
    }
    for names in [
        &["--bundle", "-b"][..],
        &["--process", "-p"],
        &["--resources", "-r"],
    ] {
        if let Some(v) = flag_value(sub, names) {
            let inline = sub.iter().any(|a| {
                let a = a.as_bytes();
                names.iter().any(|n| {
                    a.strip_prefix(n.as_bytes())
                        .and_then(|rest| rest.strip_prefix(b"="))
                        == Some(v.as_bytes())
                })
            });
            assert!(
                inline || sub.contains(&v),
                "{names:?} value {v:?} is none of the arguments"
            );
        }
    }
    for flag in [
        "--cap",
        "-c",
        "--apparmor",
        "--process-label",
        "--user",
        "-u",
    ] {
        let _ = has_flag(sub, &[flag]);
    }
});
