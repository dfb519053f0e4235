//! `diff` and `cmp` of uutils diffutils 0.6.0 (MIT OR Apache-2.0). `cmp` is
//! the crate's own; `diff`'s entry point is not part of the crate's library,
//! so `diff` below is its `diff.rs` (Copyright (c) the uutils developers),
//! unchanged but for calling the library's modules and returning the status.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write, stdout};

use diffutilslib::params::{Format, parse_params};
use diffutilslib::utils::report_failure_to_read_input_file;
use diffutilslib::{context_diff, ed_diff, normal_diff, side_diff, unified_diff};

/// `cmp`, which reads the process's arguments itself.
pub fn cmp(_args: Vec<OsString>) -> i32 {
    let code = diffutilslib::cmp::main(std::env::args_os().peekable());
    i32::from(exit_status(code))
}

/// std's `ExitCode` has no accessor; diffutils only returns 0, 1 and 2.
fn exit_status(code: std::process::ExitCode) -> u8 {
    use std::process::ExitCode;
    [0u8, 1, 2]
        .into_iter()
        .find(|&n| code == ExitCode::from(n))
        .unwrap_or(2)
}

// Exit codes are documented at
// https://www.gnu.org/software/diffutils/manual/html_node/Invoking-diff.html.
//     An exit status of 0 means no differences were found,
//     1 means some differences were found,
//     and 2 means trouble.
pub fn diff(args: Vec<OsString>) -> i32 {
    let params = match parse_params(args.into_iter().peekable()) {
        Ok(params) => params,
        Err(error) => {
            eprintln!("{error}");
            return 2;
        }
    };
    // if from and to are the same file, no need to perform any comparison
    let maybe_report_identical_files = || {
        if params.report_identical_files {
            println!(
                "Files {} and {} are identical",
                params.from.to_string_lossy(),
                params.to.to_string_lossy(),
            );
        }
    };
    if params.from == "-" && params.to == "-" || same_file::is_same_file(&params.from, &params.to).unwrap_or(false) {
        maybe_report_identical_files();
        return 0;
    }

    // read files
    fn read_file_contents(filepath: &OsString) -> io::Result<Vec<u8>> {
        if filepath == "-" {
            let mut content = Vec::new();
            io::stdin().read_to_end(&mut content).and(Ok(content))
        } else {
            fs::read(filepath)
        }
    }
    let mut io_error = false;
    let from_content = match read_file_contents(&params.from) {
        Ok(from_content) => from_content,
        Err(e) => {
            report_failure_to_read_input_file(&params.executable, &params.from, &e);
            io_error = true;
            vec![]
        }
    };
    let to_content = match read_file_contents(&params.to) {
        Ok(to_content) => to_content,
        Err(e) => {
            report_failure_to_read_input_file(&params.executable, &params.to, &e);
            io_error = true;
            vec![]
        }
    };
    if io_error {
        return 2;
    }

    // run diff
    let result: Vec<u8> = match params.format {
        Format::Normal => normal_diff::diff(&from_content, &to_content, &params),
        Format::Unified => unified_diff::diff(&from_content, &to_content, &params),
        Format::Context => context_diff::diff(&from_content, &to_content, &params),
        Format::Ed => match ed_diff::diff(&from_content, &to_content, &params) {
            Ok(result) => result,
            Err(error) => {
                eprintln!("{error}");
                return 2;
            }
        },
        Format::SideBySide => {
            let mut output = stdout().lock();
            side_diff::diff(&from_content, &to_content, &mut output, &params)
        }
    };
    if params.brief && !result.is_empty() {
        println!(
            "Files {} and {} differ",
            params.from.to_string_lossy(),
            params.to.to_string_lossy()
        );
    } else if let Err(e) = io::stdout().write_all(&result) {
        if e.kind() == io::ErrorKind::BrokenPipe {
            return 2;
        }
        eprintln!("diff: write error: {}", crate::io_message(&e));
        return 2;
    }
    if result.is_empty() {
        maybe_report_identical_files();
        0
    } else {
        1
    }
}
