"""The official Python MCP SDK against stacyvm's MCP server, over each transport:
`stdio` (`stacyvm mcp --url` to a running server), `embedded` (`stacyvm mcp`
with its own server and data directory) and `http` (`/mcp` on the server).

`tests/api/mcp.rs` runs this suite with the server's URL, two API keys of two
tenants, the built binary and the shared image directory in the environment.
"""

import base64
import contextlib
import os

import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

URL = os.environ["STACYVM_MCP_URL"]
KEY_ALPHA = os.environ["STACYVM_MCP_KEY_ALPHA"]
KEY_BETA = os.environ["STACYVM_MCP_KEY_BETA"]
BIN = os.environ["STACYVM_BIN"]
IMAGE_DIR = os.environ["STACYVM_IMAGE_DIR"]
SCRATCH = os.environ["STACYVM_MCP_SCRATCH"]

TRANSPORTS = ["stdio", "embedded", "http"]
TOOLS = [
    "create_sandbox",
    "destroy_sandbox",
    "install_packages",
    "list_files",
    "list_sandboxes",
    "read_file",
    "run_code",
    "run_command",
    "write_file",
]


@pytest.fixture
def anyio_backend():
    return "asyncio"


@contextlib.asynccontextmanager
async def connect(transport, key=KEY_ALPHA, data_dir=None):
    """A connected MCP client acting with `key` (the embedded server has no keys)."""
    if transport == "http":
        headers = {"X-API-Key": key}
        timeout = httpx2.Timeout(30.0, read=300.0)
        async with httpx2.AsyncClient(headers=headers, timeout=timeout) as http:
            async with Client(streamable_http_client(f"{URL}/mcp", http_client=http)) as client:
                yield client
        return
    env = {"STACYVM_IMAGE_DIR": IMAGE_DIR, "STACYVM_LOG": "warn"}
    if transport == "stdio":
        args = ["mcp", "--url", URL, "--api-key", key]
    else:
        data_dir = data_dir or os.path.join(SCRATCH, f"embedded-{os.urandom(6).hex()}")
        args = ["mcp", "--data-dir", data_dir]
    params = StdioServerParameters(command=BIN, args=args, env=env, cwd=SCRATCH)
    async with Client(params) as client:
        yield client


async def call(client, tool, **arguments):
    return await client.call_tool(tool, arguments)


def ok(result):
    assert result.is_error is False, result.content
    return result.structured_content


async def rest(method, path, key=KEY_ALPHA):
    async with httpx2.AsyncClient(headers={"X-API-Key": key}) as http:
        return await http.request(method, f"{URL}/api/v1{path}")


@pytest.mark.anyio
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_server_lists_its_tools_each_with_a_description_and_a_schema(transport):
    async with connect(transport) as client:
        tools = (await client.list_tools()).tools
    assert sorted(t.name for t in tools) == TOOLS
    for tool in tools:
        assert len(tool.description) > 40, tool.name
        assert tool.input_schema["type"] == "object", tool.name
    run_code = next(t for t in tools if t.name == "run_code")
    assert sorted(run_code.input_schema["required"]) == ["code", "language"]


@pytest.mark.anyio
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_python_javascript_and_a_shell_command_run_and_return_their_output(transport):
    async with connect(transport) as client:
        py = ok(await call(client, "run_code", language="python", code="print(40+2)"))
        sandbox = py["sandbox_id"]
        assert (py["stdout"], py["stderr"], py["exit_code"]) == ("42\n", "", 0)
        js = ok(await call(client, "run_code", language="javascript", code="console.log('hi'); 6 * 7", sandbox_id=sandbox))
        assert (js["stdout"], js["result"], js["error"], js["exit_code"]) == ("hi\n", {"text/plain": "42"}, None, 0)
        assert js["context_id"].startswith("ctx_")
        sh = ok(await call(client, "run_command", command="echo one; echo two >&2; exit 3", sandbox_id=sandbox))
        assert (sh["stdout"], sh["stderr"], sh["exit_code"]) == ("one\n", "two\n", 3)
        assert sh["sandbox_id"] == sandbox
        await call(client, "destroy_sandbox", sandbox_id=sandbox)


@pytest.mark.anyio
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_javascript_keeps_its_variables_between_two_calls_and_python_keeps_its_files(transport):
    async with connect(transport) as client:
        first = ok(await call(client, "run_code", language="javascript", code="var counter = 41; function next() { return ++counter }"))
        sandbox = first["sandbox_id"]
        second = ok(await call(client, "run_code", language="javascript", code="next()", sandbox_id=sandbox))
        assert second["result"] == {"text/plain": "42"}
        assert second["context_id"] == first["context_id"]
        ok(await call(client, "run_code", language="python", code="open('state.txt', 'w').write('kept')", sandbox_id=sandbox))
        py = ok(await call(client, "run_code", language="python", code="print(open('state.txt').read())", sandbox_id=sandbox))
        assert py["stdout"] == "kept\n"
        await call(client, "destroy_sandbox", sandbox_id=sandbox)


@pytest.mark.anyio
@pytest.mark.parametrize("transport", ["stdio", "embedded"])
async def test_calls_without_a_sandbox_share_the_sessions_own_sandbox(transport):
    async with connect(transport) as client:
        first = ok(await call(client, "run_code", language="javascript", code="var greeting = 'hello'"))
        second = ok(await call(client, "run_code", language="javascript", code="greeting + ' world'"))
        listed = ok(await call(client, "run_command", command="pwd"))
    assert second["result"] == {"text/plain": '"hello world"'}
    assert first["sandbox_id"] == second["sandbox_id"] == listed["sandbox_id"]
    assert listed["stdout"] == "/workspace\n"


@pytest.mark.anyio
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_written_file_is_read_back_listed_and_served_as_a_resource(transport):
    async with connect(transport) as client:
        sandbox = ok(await call(client, "create_sandbox"))["id"]
        ok(await call(client, "write_file", path="notes/todo.txt", content="buy milk\n", sandbox_id=sandbox))
        read = ok(await call(client, "read_file", path="/workspace/notes/todo.txt", sandbox_id=sandbox))
        assert (read["content"], read["encoding"]) == ("buy milk\n", "utf-8")
        listing = ok(await call(client, "list_files", path="notes", sandbox_id=sandbox))
        assert [(e["path"], e["size"], e["is_dir"]) for e in listing["entries"]] == [("/workspace/notes/todo.txt", 9, False)]
        uri = f"stacyvm://sandbox/{sandbox}/files/workspace/notes/todo.txt"
        resources = (await client.list_resources()).resources
        assert uri in [str(r.uri) for r in resources]
        contents = (await client.read_resource(uri)).contents
        assert [(c.text, c.mime_type) for c in contents] == [("buy milk\n", "text/plain")]
        templates = (await client.list_resource_templates()).resource_templates
        assert [t.uri_template for t in templates] == ["stacyvm://sandbox/{id}/files/{path}"]
        png = base64.b64encode(b"\x89PNG\r\n\x1a\n\x00\x01").decode()
        ok(await call(client, "write_file", path="dot.png", content=png, encoding="base64", sandbox_id=sandbox))
        image = await call(client, "read_file", path="dot.png", sandbox_id=sandbox)
        assert [(c.type, c.mime_type, c.data) for c in image.content] == [("image", "image/png", png)]
        await call(client, "destroy_sandbox", sandbox_id=sandbox)


@pytest.mark.anyio
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_png_result_comes_back_as_image_content(transport):
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()
    async with connect(transport) as client:
        result = await call(client, "run_code", language="javascript", code=f"({{_repr_png_() {{ return '{png}' }}}})")
        ok(result)
        images = [(c.mime_type, c.data) for c in result.content if c.type == "image"]
        assert images == [("image/png", png)]
        await call(client, "destroy_sandbox", sandbox_id=result.structured_content["sandbox_id"])


@pytest.mark.anyio
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_timeout_is_a_tool_error_with_the_rest_apis_message(transport):
    async with connect(transport) as client:
        sandbox = ok(await call(client, "create_sandbox"))["id"]
        py = await call(client, "run_code", language="python", code="print('started', flush=True)\nwhile True: pass", timeout="1s", sandbox_id=sandbox)
        assert py.is_error is True
        assert py.content[0].text == "the command ran past its timeout of 1s and was stopped"
        assert py.structured_content["code"] == "timeout"
        assert py.structured_content["stdout"] == "started\n"
        sh = await call(client, "run_command", command="sleep 5", timeout="300ms", sandbox_id=sandbox)
        assert (sh.is_error, sh.content[0].text) == (True, "the command ran past its timeout of 300ms and was stopped")
        bad = await call(client, "run_command", command="true", timeout="soon", sandbox_id=sandbox)
        assert bad.is_error is True
        assert bad.structured_content["code"] == "bad_request"
        await call(client, "destroy_sandbox", sandbox_id=sandbox)


@pytest.mark.anyio
@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_another_api_keys_tenant_cannot_see_the_first_ones_sandboxes(transport):
    async with connect(transport, KEY_ALPHA) as alpha:
        sandbox = ok(await call(alpha, "create_sandbox", ttl="10m"))["id"]
        async with connect(transport, KEY_BETA) as beta:
            listed = ok(await call(beta, "list_sandboxes"))["sandboxes"]
            assert sandbox not in [s["id"] for s in listed]
            run = await call(beta, "run_command", command="ls", sandbox_id=sandbox)
            assert (run.is_error, run.content[0].text) == (True, f"sandbox {sandbox} not found")
            read = await call(beta, "read_file", path="a.txt", sandbox_id=sandbox)
            assert (read.is_error, read.content[0].text) == (True, f"sandbox {sandbox} not found")
            resources = (await beta.list_resources()).resources
            assert not [r for r in resources if sandbox in str(r.uri)]
        mine = ok(await call(alpha, "list_sandboxes"))["sandboxes"]
        assert sandbox in [s["id"] for s in mine]
        await call(alpha, "destroy_sandbox", sandbox_id=sandbox)


@pytest.mark.anyio
async def test_the_http_transport_refuses_a_missing_or_wrong_key_with_the_rest_apis_401():
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    async with httpx2.AsyncClient() as http:
        for headers in [{}, {"X-API-Key": "wrong"}]:
            answer = await http.post(f"{URL}/mcp", json=body, headers=headers)
            assert answer.status_code == 401
            assert answer.json()["code"] == "unauthorized"


@pytest.mark.anyio
async def test_sandboxes_a_stdio_session_made_go_when_it_ends_unless_they_have_a_ttl():
    async with connect("stdio") as client:
        implicit = ok(await call(client, "run_command", command="true"))["sandbox_id"]
        plain = ok(await call(client, "create_sandbox"))["id"]
        kept = ok(await call(client, "create_sandbox", ttl="10m"))["id"]
    assert (await rest("GET", f"/sandboxes/{implicit}")).status_code == 404
    assert (await rest("GET", f"/sandboxes/{plain}")).status_code == 404
    assert (await rest("GET", f"/sandboxes/{kept}")).status_code == 200
    assert (await rest("DELETE", f"/sandboxes/{kept}")).status_code == 200
