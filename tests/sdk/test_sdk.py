"""The published StacyVM Python SDK (stacyvm==0.1.1), unchanged, against a
real stacyvm server. The server's URL comes from STACYVM_URL; docker tests
run when STACYVM_SDK_DOCKER_IMAGE names a local image and the server's
docker provider is available."""

import os

import pytest
from stacyvm import Client
from stacyvm.exceptions import SandboxNotFound, StacyVMError

URL = os.environ["STACYVM_URL"]
DOCKER_IMAGE = os.environ.get("STACYVM_SDK_DOCKER_IMAGE", "")


def providers():
    with Client(URL) as client:
        available = {p["name"]: p["available"] for p in client.providers()}
    out = [("wasm", "python:3.12")]
    if DOCKER_IMAGE and available.get("docker"):
        out.append(("docker", DOCKER_IMAGE))
    return out


@pytest.fixture(params=providers(), ids=lambda p: p[0])
def sandbox(request):
    provider, image = request.param
    with Client(URL, user_id="sdk-user") as client:
        with client.spawn(image=image, provider=provider, ttl="10m", metadata={"suite": "sdk"}) as sb:
            yield client, sb, provider


def test_health_reports_ok():
    with Client(URL) as client:
        health = client.health()
    assert health["status"] == "ok"
    assert health["version"]


def test_spawn_get_and_list_describe_the_sandbox(sandbox):
    client, sb, provider = sandbox
    assert sb.state == "running"
    assert sb.provider == provider
    got = client.get(sb.id)
    assert got.id == sb.id
    assert got._info["metadata"] == {"suite": "sdk"}
    assert got._info["owner_id"] == "sdk-user"
    listed = [s for s in client.list() if s.id == sb.id]
    assert len(listed) == 1
    assert listed[0].metadata == {"suite": "sdk"}
    assert listed[0].provider == provider


def test_exec_returns_output_and_exit_codes(sandbox):
    _, sb, provider = sandbox
    if provider == "wasm":
        result = sb.exec('python3 -c "print(40 + 2)"')
        assert (result.exit_code, result.stdout, result.stderr) == (0, "42\n", "")
        result = sb.exec("python3 -c 'import sys; print(\"e\", file=sys.stderr); sys.exit(42)'")
        assert (result.exit_code, result.stderr) == (42, "e\n")
        result = sb.exec("python3", args=["-c", "import sys; print(sys.argv[1:])", "y z"], mode="argv")
        assert result.stdout == "['y z']\n"
        result = sb.exec("python3 -c 'import os; print(os.getcwd(), os.environ[\"K\"])'", env={"K": "v"}, workdir="/tmp")
        assert result.stdout == "/tmp v\n"
        # Shell command lines, as agents send them.
        assert sb.exec("exit 42").exit_code == 42
        assert sb.exec("echo oops >&2").stderr == "oops\n"
        assert sb.exec("echo hi > a.txt && cat a.txt | wc -c").stdout == "3\n"
        result = sb.exec("python3 -c 'import sys; print(sys.argv)' x \"y z\"")
        assert result.stdout == "['-c', 'x', 'y z']\n"
    else:
        result = sb.exec("echo hi; echo oops >&2; exit 42")
        assert (result.exit_code, result.stdout, result.stderr) == (42, "hi\n", "oops\n")
        result = sb.exec("pwd; echo $K", env={"K": "v"}, workdir="/tmp")
        assert result.stdout == "/tmp\nv\n"
    assert result.duration.endswith("s")


def test_exec_stream_yields_the_output(sandbox):
    _, sb, provider = sandbox
    command = 'python3 -c "print(1, flush=True); print(2)"' if provider == "wasm" else "echo 1; echo 2"
    chunks = list(sb.exec_stream(command))
    text = "".join(c.data for c in chunks if c.stream == "stdout")
    assert text == "1\n2\n"


def test_every_file_method_works(sandbox):
    _, sb, _ = sandbox
    sb.write_file("/workspace/dir/a.txt", "hello", mode="0600")
    assert sb.read_file("/workspace/dir/a.txt") == "hello"
    stat = sb.stat_file("/workspace/dir/a.txt")
    assert (stat["name"], stat["size"], stat["mode"], stat["is_dir"]) == ("a.txt", 5, "0600", False)
    names = [e["name"] for e in sb.list_files("/workspace/dir")]
    assert names == ["a.txt"]
    sb.move_file("/workspace/dir/a.txt", "/workspace/dir/b.txt")
    sb.chmod_file("/workspace/dir/b.txt", "0755")
    assert sb.stat_file("/workspace/dir/b.txt")["mode"] == "0755"
    assert sb.glob_files("/workspace/**/*.txt") == ["/workspace/dir/b.txt"]
    sb.write_file("/workspace/dir/c.txt", "c")
    sb.delete_file("/workspace/dir/c.txt")
    assert [e["name"] for e in sb.list_files("/workspace/dir")] == ["b.txt"]
    sb.delete_file("/workspace/dir", recursive=True)
    assert [e["name"] for e in sb.list_files("/workspace")] == []
    with pytest.raises(SandboxNotFound):
        sb.read_file("/workspace/dir/b.txt")


def test_extend_ttl_moves_the_expiry(sandbox):
    _, sb, _ = sandbox
    before = sb._info["expires_at"]
    sb.extend_ttl("2h")
    assert sb._info["expires_at"] > before


def test_destroy_then_get_raises_sandbox_not_found():
    with Client(URL) as client:
        sb = client.spawn(image="python:3.12", provider="wasm")
        sb.destroy()
        sb.destroy()  # idempotent
        with pytest.raises(SandboxNotFound):
            client.get(sb.id)
        with pytest.raises(SandboxNotFound):
            client.get("sb_00000000000000000000")


def test_the_context_manager_destroys_the_sandbox():
    with Client(URL) as client:
        with client.spawn(image="python:3.12", provider="wasm") as sb:
            sandbox_id = sb.id
            assert sb.exec("python3 -c 'print(1)'").stdout == "1\n"
        with pytest.raises(SandboxNotFound):
            client.get(sandbox_id)


def test_errors_carry_the_server_code():
    with Client(URL) as client:
        with pytest.raises(StacyVMError) as err:
            client.spawn(image="python:3.12", provider="wasm", ttl="forever")
    assert err.value.code == "bad_request"


def test_admission_answers_without_creating_anything():
    with Client(URL) as client:
        before = {s.id for s in client.list()}
        decision = client.admission(image="python:3.14", provider="wasm", ttl="10m")
        assert (decision.allowed, decision.queueable, decision.reason) == (True, False, "")
        assert decision.max_sandboxes > 0
        assert decision.max_ttl == "24h0m0s"
        refused = client.admission(image="python:3.14", provider="wasm", ttl="1000h")
        assert not refused.allowed
        assert refused.reason == "ttl 1000h0m0s is above the maximum of 24h0m0s"
        assert {s.id for s in client.list()} == before


def test_templates_are_saved_listed_read_spawned_and_deleted():
    from stacyvm import Template

    with Client(URL) as client:
        saved = client.templates.save(
            Template(name="sdk-py", image="python:3.14", memory_mb=256, ttl="5m", provider="wasm",
                     metadata={"from": "sdk"})
        )
        assert (saved.name, saved.image, saved.memory_mb, saved.ttl, saved.provider) == (
            "sdk-py", "python:3.14", 256, "5m0s", "wasm")
        assert "sdk-py" in [t.name for t in client.templates.list()]
        assert client.templates.get("sdk-py").metadata == {"from": "sdk"}
        with client.spawn_template("sdk-py") as sb:
            assert sb.image == "python:3.14"
            assert sb.exec('python3 -c "print(1)"').stdout == "1\n"
        # spawn(template=...) sends the SDK's default image too; the template's wins.
        with client.spawn(template="sdk-py") as sb:
            assert sb.image == "python:3.14"
            assert client.get(sb.id)._info["metadata"] == {"from": "sdk", "template": "sdk-py"}
        client.templates.delete("sdk-py")
        with pytest.raises(SandboxNotFound):
            client.templates.get("sdk-py")
        with pytest.raises(SandboxNotFound):
            client.spawn_template("sdk-py")


def test_prune_destroys_the_callers_sandboxes():
    with Client(URL) as client:
        spawned = [client.spawn(image="python:3.14", provider="wasm") for _ in range(2)]
        assert client.prune() >= 2
        for sb in spawned:
            with pytest.raises(SandboxNotFound):
                client.get(sb.id)
        assert client.prune() == 0


def test_pool_status_and_quota_summary_answer_in_the_sdks_shape():
    from stacyvm import QuotaSummary

    with Client(URL) as client:
        status = client.pool_status()
        assert status["enabled"] is False
        assert (status["vms"], status["max_vms"], status["images"]) == (0, 0, [])
        summary = client.quota_summary()
        assert summary == QuotaSummary(total=0, with_max_sandboxes=0, with_max_ttl=0, with_max_exec_timeout=0)


def test_the_provider_manager_tests_each_providers_health():
    from stacyvm.providers import ProviderManager

    with Client(URL) as client:
        manager = ProviderManager(client._http)
        listed = {p["name"]: p["available"] for p in manager.list()}
        assert manager.test() == listed
        assert manager.test()["wasm"] is True
