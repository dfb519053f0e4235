"""The `python3` command of stacyvm's pre-initialized CPython 3.14 image.

componentize-py runs this module's top level once, at image-build time, and
snapshots the interpreter's memory afterwards. Every exec then starts a fresh
instance from that snapshot and calls `Run.run`, which behaves like the
`python3` command line: `-c`, `-m`, a script file or `-` (stdin), with
`sys.argv`, `__main__`, the working directory, exit codes and tracebacks as
CPython's own `main()` sets them.

Nothing here runs twice in one instance, and no instance is ever reused, so
the only state an exec sees is what this top level left in the snapshot.
"""

# Everything imported here is already loaded when user code starts. The list
# is the modules snippets most often import; the rest of the standard library
# is imported on demand from the read-only /python directory.
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

import abc
import argparse
import array
import base64
import binascii
import bisect
import calendar
import collections
import collections.abc
import contextlib
import copy
import csv
import dataclasses
import datetime
import decimal
import difflib
import enum
import fractions
import functools
import glob
import hashlib
import heapq
import hmac
import inspect
import itertools
import json
import keyword
import locale
import math
import numbers
import operator
import pathlib
import pprint
import random
import re
import secrets
import shlex
import shutil
import statistics
import string
import struct
import tempfile
import textwrap
import time
import typing
import unicodedata
import uuid
import zlib

from wit_world import exports
from wit_world.imports import environment
from wit_world.imports import exit as wasi_exit

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

# Where the standard library lives; its import caches stay valid.
STDLIB = "/python"
# Where `pip install` puts a sandbox's packages: Python's user site for
# HOME=/workspace.
USER_SITE = "/workspace/.local/lib/python%d.%d/site-packages" % sys.version_info[:2]
# User code never writes bytecode into the sandbox.
sys.dont_write_bytecode = True
# The build machine's environment must not leak into any exec.
os.environ.clear()
# Only the standard library is on the path; the build's own directories do
# not exist at run time, and each exec adds its own first entry.
sys.path[:] = [STDLIB]


def _exit(status):
    """os._exit: wasi-libc's own ends every failure as status 1, so report
    the exact status to the host instead."""
    wasi_exit.exit_with_code(operator.index(status) & 0xFF)


os._exit = _exit


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
    # The snapshot holds the build's random state; every exec gets its own.
    random.seed()
    if not opts["no_user_site"] and os.path.isdir(USER_SITE):
        import site

        site.addsitedir(USER_SITE)
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
    """The unbuffered binary layer of -u. A WASI write to stdout may be short
    (4 KiB at a time), and TextIOWrapper does not retry short writes of its
    raw stream, so this one writes everything it is given."""

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


def main():
    argv = environment.get_arguments()
    env = dict(environment.get_environment())
    cwd = env.get("PWD") or environment.initial_cwd() or "/"
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


# Everything allocated so far is part of the snapshot: move it out of the
# garbage collector's sight, so that collections during an exec only walk
# what the exec allocated (and do not fault in every page of the snapshot).
gc.collect()
gc.freeze()


class Run(exports.Run):
    def run(self):
        code = main()
        try:
            atexit._run_exitfuncs()
        except SystemExit as e:
            code = exit_code(e)
        except BaseException as e:
            report(e)
        flush()
        if code:
            wasi_exit.exit_with_code(code)
