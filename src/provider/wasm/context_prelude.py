"""stacyvm's driver for Python code contexts on the CPython 3.15 image.

The host runs this once when a context starts, as the module
`_stacyvm_context`, in a fresh instance of the image's pre-initialized
snapshot (numpy, pandas, scipy and scikit-learn already imported), then calls
`setup`. Each cell is then one `turn` of the same instance:

    __import__("_stacyvm_context").cell("<the cell's source>")

`cell` runs the source in the context's own `__main__`, as a notebook does:
its statements, then its last expression, whose value becomes the cell's MIME
bundle. The report, `{"result", "error"}` as JSON, goes to the host through
the image's door (`_host.call`), never through the cell's output.
"""

import ast
import base64
import builtins
import io
import json
import linecache
import os
import sys
import traceback

import _host
import _stacyvm

# The most one MIME value of a result may hold, in characters.
MAX_REPR = 1 << 20
# The source file names of cells: <cell-1>, <cell-2>...
_cells = 0
# Rich representations offered by the IPython display protocol.
OFFERS = (
    ("_repr_html_", "text/html"),
    ("_repr_markdown_", "text/markdown"),
    ("_repr_svg_", "image/svg+xml"),
    ("_repr_png_", "image/png"),
    ("_repr_jpeg_", "image/jpeg"),
    ("_repr_latex_", "text/latex"),
    ("_repr_json_", "application/json"),
)


def setup(cwd, env):
    """Makes the instance a fresh interpreter in `cwd` with `env`: a new
    `__main__`, its own random state, the sandbox's packages on the path."""
    os.environ.clear()
    os.environ.update(env)
    try:
        os.chdir(cwd)
    except OSError:
        pass
    for key in list(sys.path_importer_cache):
        if not (isinstance(key, str) and key.startswith(_stacyvm.STDLIB)):
            del sys.path_importer_cache[key]
    _stacyvm.reseed()
    _stacyvm.add_user_site()
    sys.path.insert(0, "")
    sys.argv = [""]
    sys.executable = "/usr/local/bin/python3"
    main = _stacyvm.new_main(None)
    main.__dict__["__name__"] = "__main__"
    # Output reaches the cell's answer (and a stream) line by line.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(line_buffering=True)
        except Exception:
            pass


def _clip(text):
    text = str(text)
    return text if len(text) <= MAX_REPR else text[:MAX_REPR] + "..."


def _bundle(value):
    try:
        plain = repr(value)
    except BaseException as e:  # a broken __repr__ still gives a result
        plain = "<%s object (repr failed: %s)>" % (type(value).__name__, type(e).__name__)
    bundle = {"text/plain": _clip(plain)}
    for method, mime in OFFERS:
        try:
            offer = getattr(value, method, None)
            if not callable(offer) or isinstance(value, type):
                continue
            data = offer()
            if isinstance(data, tuple):
                data = data[0]
            if data is None:
                continue
            if mime in ("image/png", "image/jpeg"):
                if isinstance(data, (bytes, bytearray)):
                    data = base64.b64encode(bytes(data)).decode("ascii")
                bundle[mime] = _clip(data)
            elif mime == "application/json":
                json.dumps(data)
                bundle[mime] = data
            else:
                bundle[mime] = _clip(data)
        except Exception:
            pass
    # A matplotlib figure as the result: its picture.
    if "image/png" not in bundle and type(value).__module__.startswith("matplotlib"):
        figure = getattr(value, "figure", None) if not hasattr(value, "savefig") else value
        if figure is not None and hasattr(figure, "savefig"):
            try:
                out = io.BytesIO()
                figure.savefig(out, format="png")
                bundle["image/png"] = base64.b64encode(out.getvalue()).decode("ascii")
            except Exception:
                pass
    return bundle


def _error(e, name):
    """`{name, value, traceback}` of an exception, without this file's frames."""
    tb = e.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    e = e.with_traceback(tb)
    sys.last_exc = e
    try:
        text = "".join(traceback.format_exception(type(e), e, tb))
    except BaseException:
        text = ""
    try:
        value = str(e)
    except BaseException:
        value = ""
    return {"name": _clip(type(e).__name__), "value": _clip(value), "traceback": _clip(text)}


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def cell(source):
    """Runs one cell in `__main__` and reports `{result, error}` to the host."""
    global _cells
    _cells += 1
    name = "<cell-%d>" % _cells
    main = sys.modules.get("__main__")
    if main is None or not hasattr(main, "__dict__"):
        main = _stacyvm.new_main(None)
    scope = main.__dict__
    scope.setdefault("__builtins__", builtins)
    result = error = None
    try:
        linecache.cache[name] = (len(source), None, source.splitlines(True), name)
        tree = ast.parse(source, name, "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, name, "exec", dont_inherit=True), scope)
        if last is not None:
            value = eval(compile(last, name, "eval", dont_inherit=True), scope)
            if value is not None:
                scope["_"] = value
                result = _bundle(value)
    except SystemExit as e:
        error = {"name": "SystemExit", "value": _clip("" if e.code is None else e.code), "traceback": ""}
    except BaseException as e:
        error = _error(e, name)
    _flush()
    try:
        report = json.dumps({"result": result, "error": error})
    except Exception as e:
        report = json.dumps({"result": None, "error": _error(e, name)})
    try:
        _host.call(report.encode("utf-8"))
    except OSError:
        # Over what the host reads of a report.
        too_large = {"name": "StacyvmError", "value": "the cell's result is too large to report", "traceback": ""}
        _host.call(json.dumps({"result": None, "error": too_large}).encode("utf-8"))
