"""Evaluating xm config files the way Xen's ``xm create`` did.

An xm config file is Python, run with the caller's rights (exactly as in
Xen: never evaluate a config you would not run as a script).  Command-line
``var=value`` pairs either set a declared variable (converted by its type,
and winning over the file) or become string locals of the script, which is
how ``xm create xmexample2 vmid=3`` reaches ``xm_vars``.  A plain xl.cfg
(``KEY=VALUE`` lines that are not valid Python) is read by a small parser.
xend never evaluates a config: xm sends it the resulting SXP.
"""

from __future__ import annotations

import ast
import os
import sys
import traceback
from pathlib import Path

from .domain import DomainConfig
from .errors import ConfigError
from .options import BY_NAME, VARS

# Names a config may define that are not domain variables (helpers, imports).
_IGNORED = {"sys", "os", "vmid"}

TRUE = {"yes", "y"}
FALSE = {"no", "n"}


class XmVars:
    """``xm_vars`` inside a config: declare extra variables and check them."""

    def __init__(self, locs: dict, filename: str):
        self._locs = locs
        self._filename = filename
        self._vars: list[tuple[str, str, object]] = []

    def var(self, name, use="", check=None):
        self._vars.append((name, use, check))

    def check(self):
        for name, use, check in self._vars:
            if name not in self._locs:
                raise ConfigError(f"{self._filename}: variable {name!r} is not set ({use}); "
                                  f"give it on the command line as {name}=VALUE")
            if check is not None:
                try:
                    self._locs[name] = check(name, self._locs[name])
                except Exception as e:
                    msg = f": {e}" if str(e) else ""
                    raise ConfigError(f"{self._filename}: invalid value {self._locs[name]!r} for "
                                      f"variable {name!r} ({use}){msg}") from None


def convert_cmdline(name: str, raw: str, current):
    """Convert a declared variable given on the command line, as Xen's gopts."""
    var = BY_NAME[name]
    if var.kind == "int":
        try:
            return int(raw, 0)
        except ValueError:
            raise ConfigError(f"{name}={raw}: expected an integer") from None
    if var.kind == "bool":
        if raw.lower() in TRUE:
            return 1
        if raw.lower() in FALSE:
            return 0
        raise ConfigError(f"{name}={raw}: expected yes or no")
    if var.kind == "list":
        return list(current or []) + [raw]
    return raw


def split_args(args: list[str]) -> tuple[dict, dict, list[str]]:
    """Split `var=value` words into (declared, other, bare words)."""
    declared: dict = {}
    other: dict = {}
    bare: list[str] = []
    for a in args:
        if "=" in a and not a.startswith("="):
            k, v = a.split("=", 1)
            if k in BY_NAME:
                declared[k] = convert_cmdline(k, v, declared.get(k))
            elif k.isidentifier():
                other[k] = v
            else:
                raise ConfigError(f"invalid variable name in {a!r}")
        else:
            bare.append(a)
    return declared, other, bare


def find_config(name: str, search_path: list[str]) -> Path:
    p = Path(name)
    if p.is_absolute():
        if p.is_file():
            return p
    else:
        for d in search_path:
            cand = Path(d) / name
            if cand.is_file():
                return cand if cand.is_absolute() else Path("./" + str(cand))
    raise ConfigError(f"Unable to open config file: {name}")


def _error_line(exc: BaseException, filename: str) -> int | None:
    if isinstance(exc, SyntaxError) and exc.filename == filename:
        return exc.lineno
    line = None
    for fs in traceback.extract_tb(exc.__traceback__):
        if fs.filename == filename:
            line = fs.lineno
    return line


def parse_xl(text: str, filename: str) -> dict:
    """xl.cfg: KEY=VALUE separated by newlines or ';'; strings, numbers, lists."""
    values = {}
    try:
        tree = ast.parse(_xl_to_python(text), filename=filename)
    except SyntaxError as e:
        raise ConfigError(f"Errors were found at line {e.lineno} while processing {filename}: "
                          f"{e.msg}") from None
    except (MemoryError, RecursionError):
        # CPython's parser gives up on very deep nesting this way (found by fuzzing).
        raise ConfigError(f"Errors were found while processing {filename}: nested too deeply") from None
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)):
            raise ConfigError(f"Errors were found at line {node.lineno} while processing {filename}: "
                              "expected KEY=VALUE")
        try:
            values[node.targets[0].id] = ast.literal_eval(node.value)
        except (ValueError, TypeError, RecursionError, MemoryError):
            # TypeError: an unhashable set or dict key such as {[1]}.
            raise ConfigError(f"Errors were found at line {node.lineno} while processing {filename}: "
                              "value must be a string, number or list") from None
    return values


def _xl_to_python(text: str) -> str:
    # xl numbers may be octal with a leading 0 (Python 3 rejects that).
    # Only bare numbers are rewritten: a quoted string such as a uuid
    # ("...-0412-...") is matched first and kept as it is.
    import re
    return re.sub(r"'(?:[^'\\\n]|\\.)*'|\"(?:[^\"\\\n]|\\.)*\"|(?<![\w.])0([0-7]+)\b",
                  lambda m: f"0o{m.group(1)}" if m.group(1) else m.group(0), text)


def evaluate(path: Path, cmd_vars: dict, declared: dict) -> dict:
    """Run the config file; return the variable values (declared ones win)."""
    filename = str(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"Unable to open config file: {filename}: {e.strerror}") from None
    try:
        code = compile(text, filename, "exec")
    except (MemoryError, RecursionError):
        raise ConfigError(f"Errors were found while processing {filename}: nested too deeply") from None
    except SyntaxError as e:
        try:
            values = parse_xl(text, filename)
        except ConfigError:
            raise ConfigError(f"Errors were found at line {e.lineno} while processing {filename}: "
                              f"{e.msg}") from None
        values.update(cmd_vars)
        values.update(declared)
        return values
    locs: dict = dict(cmd_vars)
    xm_vars = XmVars(locs, filename)
    locs.update(xm_file=filename, xm_help=False, xm_vars=xm_vars)
    globs = {"__builtins__": __builtins__, "sys": sys, "os": os, "__name__": "__xm_config__"}
    try:
        exec(code, globs, locs)
    except ConfigError:
        raise
    except SystemExit:
        raise ConfigError(f"{filename}: the config called exit()") from None
    except Exception as e:
        line = _error_line(e, filename)
        where = f"Errors were found at line {line} while processing {filename}" if line else \
            f"Errors were found while processing {filename}"
        raise ConfigError(f"{where}: {type(e).__name__}: {e}") from None
    values = {}
    for k, v in locs.items():
        if k.startswith("_") or k in ("xm_file", "xm_help", "xm_vars"):
            continue
        if isinstance(v, (str, list, int, float)) and not isinstance(v, bool):
            values[k] = v
        elif isinstance(v, bool):
            values[k] = int(v)
    values.update(declared)
    return values


def load(args: list[str], defconfig: str | None = None, search_path: list[str] | None = None,
         ) -> tuple[DomainConfig, Path | None]:
    """From ``xm create`` words (config name and var=value) to a DomainConfig."""
    declared, other, bare = split_args(args)
    if bare:
        defconfig = bare[-1]
    if not defconfig:
        if "kernel" in declared or "name" in declared:
            values = dict(declared)
            return DomainConfig.from_values(values), None
        raise ConfigError("no config file given")
    path = find_config(defconfig, search_path or [".", "/etc/xen"])
    values = evaluate(path, other, declared)
    values.setdefault("name", path.name)
    if not values.get("name"):
        values["name"] = path.name
    try:
        cfg = DomainConfig.from_values(values)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    cfg.notes = notes_for(values, set(other))
    return cfg, path


def notes_for(values: dict, cmdline_vars: set[str]) -> list[str]:
    """Variables that are accepted but change nothing on QEMU, and unknown names."""
    notes = []
    for v in VARS:
        if not v.applies and v.name in values and values[v.name] not in (v.default, None):
            notes.append(f"config variable {v.name}={values[v.name]!r} accepted; it has no effect with QEMU")
    for k in sorted(values):
        if k not in BY_NAME and k not in _IGNORED and k not in cmdline_vars:
            notes.append(f"config variable {k} is not a domain variable; ignored")
    return notes
