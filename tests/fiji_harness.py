"""Run a Fiji script file the way Fiji's CPython "Python mode" runner does, against plain ImageJ1.

What is modelled (see FIELD_NOTES §2, scijava-common's ParameterScriptProcessor /
ScriptDirectiveScriptProcessor, and scyjava's ``PythonScriptRunner``):

- ``#@script(...)`` directive and ``#@ [IOType] Type (attrs) name`` parameter lines anywhere in
  the file (new-style ``#@`` at column 0 only; ``#@ script(...)`` with a space is *not* a
  directive, exactly as in SciJava, so it is reported as a missing language directive);
- inputs arrive as Java objects: boxed ``java.lang.Integer``/``Float``/``Double``/``Boolean``,
  ``java.lang.String`` (not a Python str), ``java.io.File``, an ``ImagePlus`` (given as an object,
  a window title or a file path; the first ImagePlus input is auto-filled with the current image
  like SciJava's active-image preprocessor); they are put into a ``java.util.Map`` and read back
  from it, as the runner reads ``arg.vars``;
- ``#@ ImageJ``/``StatusService``/``LogService`` get small stand-ins that forward to ImageJ1
  (there is no ImageJ2 here);
- the body runs with ONE dict as globals and locals (no ``__name__``), the last expression is
  evaluated as the return value, and any ``Exception`` is printed and swallowed;
- ``#@output`` values are read back from that dict.

``python tests/fiji_harness.py [--python] --headless --run script.py 'a="x",b=2'`` runs a script in a
fresh headless process like ``fiji --python --headless --run``: it exits 0 even when the script
raised (as Fiji does), unless the script itself ended the JVM with a code (``report_failure``).
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import re
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # runnable as a plain file in a subprocess
    sys.path.insert(0, str(REPO_ROOT))

from fiji_emseg.bridge.failure import EXIT_ON_FAILURE_ENV
from fiji_emseg.bridge.jvm import ensure_jvm, jclass

IO_TYPES = ("INPUT", "OUTPUT", "BOTH")
_BOXES = {
    "Integer": "java.lang.Integer", "int": "java.lang.Integer",
    "Long": "java.lang.Long", "long": "java.lang.Long",
    "Short": "java.lang.Short", "short": "java.lang.Short",
    "Byte": "java.lang.Byte", "byte": "java.lang.Byte",
    "Float": "java.lang.Float", "float": "java.lang.Float",
    "Double": "java.lang.Double", "double": "java.lang.Double", "Number": "java.lang.Double",
    "Boolean": "java.lang.Boolean", "boolean": "java.lang.Boolean",
}
_INTEGRAL = {"java.lang.Integer", "java.lang.Long", "java.lang.Short", "java.lang.Byte"}
SERVICES = ("ImageJ", "StatusService", "LogService")


class HarnessError(Exception):
    """The script or its inputs cannot be run the way Fiji would run them."""


# -- parsing -------------------------------------------------------------------------------------

def _split_top(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside quotes, braces and parentheses."""
    parts, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = ""
            continue
        if ch in "\"'":
            quote = ch
        elif ch in "{(":
            depth += 1
        elif ch in "})":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    if "".join(cur).strip():
        parts.append("".join(cur))
    return parts


def parse_value(text: str) -> Any:
    """A literal as SciJava's parser reads it: quoted string, {list}, true/false, number, or bare word."""
    t = text.strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "\"'":
        return t[1:-1]
    if t.startswith("{") and t.endswith("}"):
        return [parse_value(p) for p in _split_top(t[1:-1])]
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    for number in (int, float):
        try:
            return number(t)
        except ValueError:
            pass
    return t


def parse_attrs(text: str) -> dict[str, Any]:
    """``key=value, key2="v 2"`` → dict (a value without key is stored under ``"name"``)."""
    attrs: dict[str, Any] = {}
    for part in _split_top(text):
        key, eq, value = part.partition("=")
        if eq:
            attrs[key.strip()] = parse_value(value)
        elif part.strip():
            attrs["name"] = parse_value(part)
    return attrs


@dataclass(frozen=True)
class ScriptParam:
    name: str
    type_name: str
    io: str  # INPUT, OUTPUT or BOTH
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def is_input(self) -> bool:
        return self.io in ("INPUT", "BOTH")

    @property
    def is_output(self) -> bool:
        return self.io in ("OUTPUT", "BOTH")


@dataclass
class ScriptInfo:
    path: Path | None
    directives: dict[str, Any]
    params: list[ScriptParam]
    body: str  # the script with directive/parameter lines blanked, as SciJava hands it on
    invalid_lines: list[str]

    @property
    def inputs(self) -> list[ScriptParam]:
        return [p for p in self.params if p.is_input]

    @property
    def outputs(self) -> list[ScriptParam]:
        return [p for p in self.params if p.is_output]

    @property
    def language(self) -> str | None:
        lang = self.directives.get("language")
        return None if lang is None else str(lang)


_DIRECTIVE = re.compile(r"^#@(\w*)\s*(\((.*)\))?\s*(.*)$")


def _parse_param(text: str) -> ScriptParam | None:
    lparen, rparen = text.find("("), text.rfind(")")
    if rparen < lparen:
        return None
    attrs: dict[str, Any] = {}
    if lparen >= 0:
        attrs = parse_attrs(text[lparen + 1:rparen])
        text = text[:lparen] + text[rparen + 1:]
    tokens = text.split()
    io = "INPUT"
    if tokens and tokens[0].upper() in IO_TYPES:
        io = tokens[0].upper()
        tokens = tokens[1:]
        if len(tokens) == 1:
            tokens = ["Object"] + tokens
    if len(tokens) < 2:
        return None
    if "type" in attrs and str(attrs["type"]).upper() in IO_TYPES:
        io = str(attrs.pop("type")).upper()
    return ScriptParam(name=tokens[1], type_name=tokens[0], io=io, attrs=attrs)


def parse_script(source: str | os.PathLike[str], text: str | None = None) -> ScriptInfo:
    """Parse a script file (or ``text``) into its directives, parameters and runnable body."""
    path = Path(source) if text is None else None
    content = Path(source).read_text(encoding="utf-8") if text is None else text
    directives: dict[str, Any] = {}
    params: list[ScriptParam] = []
    invalid: list[str] = []
    body: list[str] = []
    for line in content.splitlines():
        if not line.startswith("#@"):
            body.append(line)
            continue
        m = _DIRECTIVE.match(line)
        if m and m.group(1) == "script":
            directives.update(parse_attrs(m.group(3) or ""))
            body.append("")
            continue
        param = _parse_param(line[2:])
        if param is None:
            invalid.append(line)  # SciJava logs "Ignoring invalid parameter" and leaves the line
            body.append(line)
        else:
            params.append(param)
            body.append("")
    return ScriptInfo(path, directives, params, "\n".join(body) + "\n", invalid)


# -- service stand-ins (no ImageJ2 here) ---------------------------------------------------------

class StatusServiceStandIn:
    """``org.scijava.app.StatusService`` subset, forwarded to ImageJ1's status and progress bars."""

    def showStatus(self, *args: Any) -> None:
        if len(args) == 1:
            jclass("ij.IJ").showStatus(str(args[0]))
        elif len(args) >= 3:
            i, n, msg = args[:3]
            jclass("ij.IJ").showStatus(str(msg))
            self.showProgress(i, n)
        else:
            raise TypeError(f"showStatus{args}: expected (message) or (progress, maximum, message)")

    def showProgress(self, value: int, maximum: int) -> None:
        jclass("ij.IJ").showProgress(min(1.0, int(value) / int(maximum)) if int(maximum) > 0 else 1.0)

    def clearStatus(self) -> None:
        jclass("ij.IJ").showStatus("")


class LogServiceStandIn:
    """``org.scijava.log.LogService`` subset, forwarded to ``IJ.log``."""

    def _log(self, level: str, msg: Any) -> None:
        jclass("ij.IJ").log(f"[{level}] {msg}" if level != "INFO" else str(msg))

    def info(self, msg: Any) -> None:
        self._log("INFO", msg)

    def warn(self, msg: Any) -> None:
        self._log("WARNING", msg)

    def error(self, msg: Any) -> None:
        self._log("ERROR", msg)

    def debug(self, msg: Any) -> None:
        pass


class ImageJGatewayStandIn:
    """Stands in for ``net.imagej.ImageJ``: only ``status()`` and ``log()`` (ImageJ2 is absent here)."""

    def __init__(self) -> None:
        self._status, self._log = StatusServiceStandIn(), LogServiceStandIn()

    def status(self) -> StatusServiceStandIn:
        return self._status

    def log(self) -> LogServiceStandIn:
        return self._log

    def __getattr__(self, name: str) -> Any:
        raise HarnessError(f"ij.{name}: the test harness has no ImageJ2 gateway; fiji_scripts must stick to "
                           "ImageJ1 and the bridge (only ij.status() and ij.log() are modelled)")


# -- building inputs -----------------------------------------------------------------------------

def _image_input(value: Any, name: str) -> Any:
    if not isinstance(value, (str, os.PathLike)):
        return value  # an ImagePlus already
    text = str(value)
    if os.path.exists(text):
        imp = jclass("ij.IJ").openImage(text)
        if imp is None:
            raise HarnessError(f"{name}: ImageJ could not open {text}")
        return imp
    imp = jclass("ij.WindowManager").getImage(text)
    if imp is None:
        raise HarnessError(f"{name}: no file and no image window called {text!r}")
    return imp


def to_java_input(param: ScriptParam, value: Any) -> Any:
    """The Java object Fiji would hand the script for ``value`` given as ``param``'s type."""
    t = param.type_name
    if t == "ImagePlus":
        return _image_input(value, param.name)
    if t in _BOXES:
        box = _BOXES[t]
        if box == "java.lang.Boolean":
            if isinstance(value, str):
                value = value.strip().lower() == "true"
            return jclass(box)(bool(value))
        if box in _INTEGRAL:
            if isinstance(value, float) and not value.is_integer():
                raise HarnessError(f"{param.name}: {value} is not a whole number ({t})")
            import jpype

            primitive = {"java.lang.Integer": jpype.JInt, "java.lang.Long": jpype.JLong,
                         "java.lang.Short": jpype.JShort, "java.lang.Byte": jpype.JByte}[box]
            return jclass(box).valueOf(primitive(int(value)))
        return jclass(box)(float(value))
    if t == "String":
        return jclass("java.lang.String")(str(value))
    if t == "File":
        return jclass("java.io.File")(str(value))
    if t == "Object":
        import scyjava

        return scyjava.to_java(value)
    raise HarnessError(f"{param.name}: parameter type {t} is not modelled by the harness")


def build_inputs(info: ScriptInfo, values: dict[str, Any], autofill_image: bool = True) -> Any:
    """A ``java.util.HashMap`` of the script's inputs, like the runner's ``arg.vars``."""
    unknown = set(values) - {p.name for p in info.inputs}
    if unknown:
        raise HarnessError(f"no such input(s): {sorted(unknown)}; the script declares {[p.name for p in info.inputs]}")
    bindings = jclass("java.util.HashMap")()
    image_autofilled = False
    for p in info.inputs:
        if p.type_name in SERVICES:
            continue  # Python stand-ins: added to the locals directly (they are not Java objects here)
        if p.name in values:
            bindings.put(p.name, to_java_input(p, values[p.name]))
        elif (p.type_name == "ImagePlus" and autofill_image and not image_autofilled
              and jclass("ij.WindowManager").getCurrentImage() is not None):
            bindings.put(p.name, jclass("ij.WindowManager").getCurrentImage())
            image_autofilled = True
        elif "value" in p.attrs:
            bindings.put(p.name, to_java_input(p, p.attrs["value"]))
        elif str(p.attrs.get("required", "true")).lower() == "false":
            bindings.put(p.name, None)
        else:
            raise HarnessError(f"input {p.name!r} ({p.type_name}) was not given and has no default")
    return bindings


def _service(type_name: str) -> Any:
    return {"ImageJ": ImageJGatewayStandIn, "StatusService": StatusServiceStandIn,
            "LogService": LogServiceStandIn}[type_name]()


# -- running ----------------------------------------------------------------------------------

@dataclass
class ScriptRun:
    """What one run produced."""

    outputs: dict[str, Any]
    error: str | None  # the traceback the runner printed and swallowed
    stdout: str
    return_value: Any
    namespace: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.error is None

    def toplevel_arrays(self) -> list[str]:
        """Top-level names bound to numpy arrays or tensors (Fiji converts every top-level value)."""
        return sorted(k for k, v in self.namespace.items()
                      if type(v).__name__ in ("ndarray", "Tensor") and not k.startswith("__"))


def run_script(script: str | os.PathLike[str], inputs: dict[str, Any] | None = None,
               require_python: bool = True, echo: bool = True, autofill_image: bool = True) -> ScriptRun:
    """Run a script in this process's JVM as Fiji's Python-mode runner would (see module doc).

    ``autofill_image=False`` turns off filling the first missing ImagePlus input with the current image.
    """
    ensure_jvm()
    info = parse_script(script)
    if require_python and (info.language or "").lower() != "python":
        raise HarnessError(f"{script}: no #@script(language=\"Python\") directive (with no space after #@); "
                           "Fiji would run it with Jython")
    if info.invalid_lines:
        raise HarnessError(f"{script}: SciJava would ignore these invalid parameter lines: {info.invalid_lines}")
    bindings = build_inputs(info, dict(inputs or {}), autofill_image)
    namespace: dict[str, Any] = {}
    for key in bindings.keySet():  # what the runner does: copy arg.vars into the locals
        namespace[str(key)] = bindings[key]
    for p in info.inputs:
        if p.type_name in SERVICES:
            namespace[p.name] = _service(p.type_name)
    block = ast.parse(info.body, mode="exec")
    last = None
    if block.body and hasattr(block.body[-1], "value") and not isinstance(block.body[-1], ast.Assign):
        last = ast.Expression(block.body.pop().value)  # type: ignore[attr-defined]
    out = io.StringIO()
    error = None
    return_value = None
    with contextlib.redirect_stdout(out):
        try:
            exec(compile(block, "<string>", mode="exec"), namespace, namespace)  # noqa: S102
            if last is not None:
                return_value = eval(compile(last, "<string>", mode="eval"), namespace, namespace)
        except Exception:  # noqa: BLE001 - exactly what the Python-mode runner catches
            error = traceback.format_exc()
    if echo and out.getvalue():
        sys.stdout.write(out.getvalue())
    if error is not None:
        sys.stderr.write(error)  # the runner writes it to the script's error writer and carries on
    outputs = {p.name: namespace.get(p.name) for p in info.outputs}
    return ScriptRun(outputs, error, out.getvalue(), return_value, namespace)


def parse_run_args(text: str) -> dict[str, Any]:
    """The argument string of ``--run script 'a="x",b=2'``."""
    return parse_attrs(text) if text.strip() else {}


def main(argv: list[str] | None = None) -> int:
    """``[--python] [--headless] --run SCRIPT [ARGS]``: one script, like a Fiji batch run."""
    args = list(sys.argv[1:] if argv is None else argv)
    headless = "--headless" in args
    args = [a for a in args if a not in ("--python", "--headless", "--console")]
    if not args or args[0] != "--run" or len(args) not in (2, 3):
        print("usage: fiji_harness.py [--python] [--headless] --run SCRIPT ['a=\"x\",b=2']", file=sys.stderr)
        return 2
    ensure_jvm(headless=headless or None)
    run = run_script(args[1], parse_run_args(args[2] if len(args) == 3 else ""))
    for name, value in run.outputs.items():
        print(f"[output] {name} = {value}")
    sys.stdout.flush()
    return 0  # like Fiji: a swallowed exception still exits 0


def run_headless(script: str | os.PathLike[str], args: str = "", timeout: float = 120,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a fresh headless process (no DISPLAY) the way a Fiji batch run would."""
    environment = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), environment.get("PYTHONPATH")]))
    environment[EXIT_ON_FAILURE_ENV] = "1"  # a batch run, as Fiji's headless mode is
    environment.update(env or {})
    cmd = [sys.executable, str(Path(__file__).resolve()), "--python", "--headless", "--run", str(script)]
    if args:
        cmd.append(args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=environment, check=False)


if __name__ == "__main__":
    sys.exit(main())
