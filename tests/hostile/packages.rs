//! Attacks through `pip install`: wheels that inflate past the quota, that
//! name paths outside site-packages or links, that hold too many files,
//! downloads without end, requirement strings meant for a shell or for pip's
//! own options, and RECORD files that point outside. The wheels come from a
//! package index on loopback, served by the test; the real pip fetches them.

use std::io::Write;
use std::path::Path;

use axum::body::Body;
use axum::extract::Path as UrlPath;
use axum::routing::get;
use serde_json::{Value, json};

use crate::helpers::TestApp;
use crate::support::{assert_refused_or_failed, assert_up};

/// A package index (PEP 503 pages) on loopback, serving these wheels, and
/// for `endless-1.0-py3-none-any.whl` a body of `endless_bytes` zeros.
struct LocalIndex {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LocalIndex {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_index(wheels: Vec<(&'static str, Vec<u8>)>, endless_bytes: u64) -> LocalIndex {
    let wheels = std::sync::Arc::new(wheels);
    let pages = wheels.clone();
    let app = axum::Router::new()
        .route(
            "/simple/{project}/",
            get(move |UrlPath(project): UrlPath<String>| {
                let pages = pages.clone();
                async move {
                    let mut names: Vec<&str> = pages
                        .iter()
                        .map(|(name, _)| *name)
                        .filter(|name| name.split('-').next() == Some(project.as_str()))
                        .collect();
                    if project == "endless" {
                        names.push("endless-1.0-py3-none-any.whl");
                    }
                    if names.is_empty() {
                        return axum::http::Response::builder().status(404).body(Body::empty()).unwrap();
                    }
                    let links: String = names
                        .iter()
                        .map(|n| format!("<a href=\"/files/{n}\">{n}</a>\n"))
                        .collect();
                    axum::http::Response::builder()
                        .header("content-type", "text/html")
                        .body(Body::from(format!("<html><body>\n{links}</body></html>\n")))
                        .unwrap()
                }
            }),
        )
        .route(
            "/files/{file}",
            get(move |UrlPath(file): UrlPath<String>| {
                let wheels = wheels.clone();
                async move {
                    if file == "endless-1.0-py3-none-any.whl" {
                        let chunk = bytes::Bytes::from(vec![0u8; 1 << 20]);
                        let chunks = endless_bytes.div_ceil(1 << 20);
                        let stream = futures_util::stream::iter(
                            (0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
                        );
                        return axum::http::Response::builder()
                            .header("content-length", (chunks << 20).to_string())
                            .body(Body::from_stream(stream))
                            .unwrap();
                    }
                    match wheels.iter().find(|(name, _)| *name == file) {
                        Some((_, bytes)) => axum::http::Response::new(Body::from(bytes.clone())),
                        None => axum::http::Response::builder().status(404).body(Body::empty()).unwrap(),
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.ok();
    });
    LocalIndex {
        url: format!("http://{addr}/simple"),
        task,
    }
}

/// A wheel of `name` 1.0 with its metadata and `members`; `bomb` adds a
/// member of that many zero bytes (deflated to almost nothing); `link` adds
/// a member that is a symbolic link.
fn wheel(name: &str, members: &[(&str, &[u8])], bomb: u64, link: Option<&str>, empty_files: usize) -> Vec<u8> {
    use zip::write::SimpleFileOptions;
    let mut out = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut out);
    let options = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    let info = format!("{name}-1.0.dist-info");
    zip.start_file(format!("{info}/METADATA"), options).unwrap();
    zip.write_all(format!("Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n").as_bytes())
        .unwrap();
    zip.start_file(format!("{info}/WHEEL"), options).unwrap();
    zip.write_all(b"Wheel-Version: 1.0\nGenerator: stacyvm-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        .unwrap();
    zip.start_file(format!("{info}/RECORD"), options).unwrap();
    for (path, data) in members {
        zip.start_file(*path, options).unwrap();
        zip.write_all(data).unwrap();
    }
    if bomb > 0 {
        zip.start_file(format!("{name}/zeros.bin"), options).unwrap();
        let chunk = vec![0u8; 1 << 20];
        let mut left = bomb;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            zip.write_all(&chunk[..n]).unwrap();
            left -= n as u64;
        }
    }
    if let Some(target) = link {
        zip.add_symlink(format!("{name}/link"), target, options).unwrap();
    }
    for i in 0..empty_files {
        zip.start_file(format!("{name}/f{i}.py"), options).unwrap();
    }
    zip.finish().unwrap();
    out.into_inner()
}

/// Every file under `dir` and its total size, walked on the host.
fn host_files(dir: &Path) -> (Vec<String>, u64) {
    let (mut files, mut total) = (vec![], 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.path().symlink_metadata().unwrap();
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.len();
                files.push(entry.path().strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    (files, total)
}

async fn pip(app: &TestApp, id: &str, command: &str) -> (u16, Value) {
    app.exec(id, json!({"command": command, "timeout": "120s"})).await
}

fn site(app: &TestApp, id: &str) -> std::path::PathBuf {
    app.sandbox_dir(id)
        .join("workspace/.local/lib/python3.14/site-packages")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wheel_bomb_stops_at_the_disk_quota_and_leaves_nothing_installed() {
    let bomb = wheel("bomb", &[("bomb/__init__.py", b"")], 64 << 20, None, 0);
    assert!(bomb.len() < 1 << 20, "the bomb is small: {}", bomb.len());
    let index = serve_index(vec![("bomb-1.0-py3-none-any.whl", bomb)], 0).await;
    let url = index.url.clone();
    let app = TestApp::spawn_with(move |s| {
        s.sandbox.disk_quota_mb = 16;
        s.wasm.package_index = Some(url);
    })
    .await;
    let id = app.create_wasm().await;
    let answer = pip(&app, &id, "pip install bomb").await;
    assert_refused_or_failed(&answer);
    assert_eq!(
        answer.1["stderr"],
        "ERROR: the packages do not fit: the sandbox's files would exceed its disk quota of 16777216 bytes\n"
    );
    assert_eq!(std::fs::read_dir(site(&app, &id)).unwrap().count(), 0);
    let (_, total) = host_files(&app.sandbox_dir(&id));
    assert!(
        total < 1 << 20,
        "the sandbox holds {total} bytes after the refused install"
    );
    assert_up(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wheel_members_outside_site_packages_links_and_floods_of_files_are_refused() {
    let wheels = vec![
        (
            "evil-1.0-py3-none-any.whl",
            wheel(
                "evil",
                &[("evil/__init__.py", b""), ("../../../../evil.py", b"owned = True\n")],
                0,
                None,
                0,
            ),
        ),
        (
            "absolute-1.0-py3-none-any.whl",
            wheel("absolute", &[("/tmp/absolute.py", b"owned = True\n")], 0, None, 0),
        ),
        (
            "link-1.0-py3-none-any.whl",
            wheel("link", &[], 0, Some("/etc/passwd"), 0),
        ),
        ("flood-1.0-py3-none-any.whl", wheel("flood", &[], 0, None, 50_001)),
    ];
    let index = serve_index(wheels, 0).await;
    let url = index.url.clone();
    let app = TestApp::spawn_with(move |s| s.wasm.package_index = Some(url)).await;
    let id = app.create_wasm().await;
    let cases = [
        (
            "pip install evil",
            "ERROR: evil-1.0-py3-none-any.whl cannot be installed: member \"../../../../evil.py\" leaves the package\n",
        ),
        (
            "pip install absolute",
            "ERROR: absolute-1.0-py3-none-any.whl cannot be installed: member \"/tmp/absolute.py\" has an absolute or unsafe path\n",
        ),
        (
            "pip install link",
            "ERROR: link-1.0-py3-none-any.whl cannot be installed: member \"link/link\" is a symbolic link\n",
        ),
        ("pip install flood", "ERROR: the packages hold more than 50000 files\n"),
    ];
    for (command, stderr) in cases {
        let answer = pip(&app, &id, command).await;
        assert_refused_or_failed(&answer);
        assert_eq!(answer.1["stderr"], stderr, "{command}: {}", answer.1);
        assert_eq!(std::fs::read_dir(site(&app, &id)).unwrap().count(), 0, "{command}");
    }
    let (files, _) = host_files(app.data_dir.path());
    assert!(
        !files
            .iter()
            .any(|f| f.ends_with("evil.py") || f.ends_with("absolute.py")),
        "{files:?}"
    );
    assert_up(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_download_past_the_bound_is_stopped_and_its_files_removed() {
    let index = serve_index(vec![], 300 << 20).await;
    let url = index.url.clone();
    let app = TestApp::spawn_with(move |s| s.wasm.package_index = Some(url)).await;
    let id = app.create_wasm().await;
    let answer = pip(&app, &id, "pip install endless").await;
    assert_refused_or_failed(&answer);
    assert_eq!(
        answer.1["stderr"],
        "ERROR: the packages to download are larger than 256 MiB, the most one install may fetch\n"
    );
    let scratch = app.data_dir.path().join("packages/tmp");
    let left = std::fs::read_dir(&scratch).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "pip's scratch directory was left behind");
    assert_up(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn requirement_strings_meant_for_a_shell_or_for_pip_never_reach_pip() {
    // An index nothing may reach: a requirement that got through would be
    // reported as unreachable instead of invalid.
    let app = TestApp::spawn_with(|s| s.wasm.package_index = Some("http://127.0.0.1:9/simple".into())).await;
    let id = app.create_wasm().await;
    for requirement in [
        "x; touch /tmp/owned",
        "x && touch /tmp/owned",
        "$(touch /tmp/owned)",
        "`id`",
        "x @ file:///etc/passwd",
        "./x",
        "../../x.whl",
        "/etc/passwd",
        "x==1 --index-url=http://evil",
        "x[extra]@https://evil/x.whl",
        "x ; python_version > '1'",
        "--editable=.",
        "-e.",
    ] {
        let answer = app
            .exec(
                &id,
                json!({"command": "pip", "args": ["install", requirement], "timeout": "30s"}),
            )
            .await;
        assert_refused_or_failed(&answer);
        let stderr = answer.1["stderr"].as_str().unwrap();
        assert!(
            stderr.starts_with("ERROR: invalid requirement: ") || stderr.starts_with("ERROR: no such option: "),
            "{requirement:?}: {stderr}"
        );
    }
    let long = "a".repeat(100_000);
    let answer = app
        .exec(
            &id,
            json!({"command": "pip", "args": ["install", long], "timeout": "30s"}),
        )
        .await;
    assert!(
        answer.1["stderr"]
            .as_str()
            .unwrap()
            .starts_with("ERROR: a requirement is longer than 200 bytes: "),
        "{}",
        answer.1
    );
    let many: Vec<String> = (0..65).map(|i| format!("p{i}")).collect();
    let mut args = vec!["install".to_string()];
    args.extend(many);
    let answer = app
        .exec(&id, json!({"command": "pip", "args": args, "timeout": "30s"}))
        .await;
    assert_eq!(
        answer.1["stderr"],
        "ERROR: at most 64 requirements may be installed at once\n"
    );
    // A requirements file of 10 MiB is not read into memory.
    std::fs::write(app.sandbox_dir(&id).join("workspace/huge.txt"), "x\n".repeat(5 << 20)).unwrap();
    let answer = pip(&app, &id, "pip install -r huge.txt").await;
    assert_eq!(
        answer.1["stderr"],
        "ERROR: requirements file huge.txt is larger than 64 KiB\n"
    );
    assert!(!app.sandbox_dir(&id).join("tmp/owned").exists());
    assert!(!Path::new("/tmp/owned").exists());
    assert_up(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn uninstall_deletes_only_inside_site_packages_whatever_record_says() {
    let app = TestApp::spawn().await;
    let id = app.create_wasm().await;
    let root = app.sandbox_dir(&id);
    let site = site(&app, &id);
    std::fs::create_dir_all(site.join("fake-1.0.dist-info")).unwrap();
    std::fs::write(
        site.join("fake-1.0.dist-info/METADATA"),
        format!(
            "Metadata-Version: 2.1\nName: fake\nVersion: 1.0\n\n{}",
            "x".repeat(4 << 20)
        ),
    )
    .unwrap();
    std::fs::write(
        site.join("fake-1.0.dist-info/RECORD"),
        "../../../../../tmp/victim,,\n/workspace/victim,,\nfake.py,,\n",
    )
    .unwrap();
    std::fs::write(site.join("fake.py"), "").unwrap();
    std::fs::write(root.join("tmp/victim"), "keep").unwrap();
    std::fs::write(root.join("workspace/victim"), "keep").unwrap();
    let answer = pip(&app, &id, "pip list && pip uninstall -y fake").await;
    assert_eq!(
        answer.1["stdout"], "Package Version\n------- -------\nfake    1.0\nSuccessfully uninstalled fake-1.0\n",
        "{}",
        answer.1
    );
    assert!(root.join("tmp/victim").exists() && root.join("workspace/victim").exists());
    assert!(!site.join("fake.py").exists() && !site.join("fake-1.0.dist-info").exists());
    assert_up(&app).await;
}
