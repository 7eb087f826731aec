"""String transforms a mapping line applies to a source value before it is checked, mapped
or converted: regex extract and replace, split, pad, and a picture format (ICD-9 ``51881``
-> ``518.81``).

Steps are validated and their patterns compiled when the mapping loads; per row a line runs
a chain of plain functions. A step that cannot apply to a value raises ValueProblem (which
never repeats the value), so the row is quarantined with a reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from hub.mapping.values import ValueProblem

STEPS = {
    "extract": "{extract: <regex>}: the first group (or the whole match) of the first match",
    "replace": "{replace: <regex>, with: <template>}: every match replaced; \\1 or \\g<name> refer to groups",
    "split": "{split: <separator>, index: <n>}: the n-th part (0 first, -1 last), stripped",
    "pad": "{pad: <width>, fill: '0', side: left|right}: padded to width",
    "picture": "{picture: '###.##'}: each # takes the next character, other characters are inserted",
}
_PARAMS = {"extract": set(), "replace": {"with"}, "split": {"index"}, "pad": {"fill", "side"}, "picture": set()}
_GROUP_REF = re.compile(r"\\(\d+)|\\g<([^>]*)>")

Fail = Callable[[int, str, str, str], Exception]  # (step index, field suffix, problem, expected) -> error


def _regex(text: Any, i: int, name: str, fail: Fail) -> re.Pattern:
    if not isinstance(text, str) or not text:
        raise fail(i, name, "is not a regular expression", "a pattern in quotes, like '^(\\d{3})(\\d+)$'")
    try:
        return re.compile(text)
    except re.error as exc:
        raise fail(i, name, f"is not a valid regular expression ({exc.msg} at position {exc.pos})", "a Python regular expression") from None


def _step(step: Any, i: int, fail: Fail) -> Callable[[str], str]:
    if not isinstance(step, dict):
        raise fail(i, "", "is not a transform step", "; ".join(STEPS.values()))
    names = [k for k in step if k in STEPS]
    if len(names) != 1:
        raise fail(i, "", f"names {len(names)} steps", "exactly one of " + ", ".join(STEPS))
    name = names[0]
    unknown = set(step) - {name} - _PARAMS[name]
    if unknown:
        raise fail(i, "", f"unknown option {sorted(unknown, key=str)[0]!r} for {name}", STEPS[name])
    arg = step[name]
    if name == "extract":
        pattern = _regex(arg, i, name, fail)
        group = 1 if pattern.groups else 0

        def extract(text: str) -> str:
            m = pattern.search(text)
            if m is None:
                raise ValueProblem("does not match the extract pattern", f"text matching {pattern.pattern}")
            return m.group(group) or ""

        return extract
    if name == "replace":
        pattern = _regex(arg, i, name, fail)
        template = step.get("with", "")
        if not isinstance(template, str):
            raise fail(i, "with", "is not text", "a replacement like '\\1.\\2'")
        for number, named in _GROUP_REF.findall(template):
            ok = (number and int(number) <= pattern.groups) or (named and (named in pattern.groupindex or (named.isdigit() and int(named) <= pattern.groups)))
            if not ok:
                raise fail(i, "with", f"refers to group {number or named!r}, which the pattern does not have", f"groups 1 to {pattern.groups}")
        return lambda text: pattern.sub(template, text)
    if name == "split":
        if not isinstance(arg, str) or not arg:
            raise fail(i, name, "is not a separator", "a separator in quotes, like ','")
        index = step.get("index", 0)
        if not isinstance(index, int) or isinstance(index, bool):
            raise fail(i, "index", "is not a whole number", "0 for the first part, -1 for the last")

        def split(text: str) -> str:
            parts = text.split(arg)
            if not -len(parts) <= index < len(parts):
                raise ValueProblem(f"has {len(parts)} part(s) when split on {arg!r}, not a part {index}", f"at least {index + 1 if index >= 0 else -index} parts")
            return parts[index].strip()

        return split
    if name == "pad":
        fill, side = step.get("fill", "0"), step.get("side", "left")
        if not isinstance(arg, int) or isinstance(arg, bool) or not 0 < arg <= 64:
            raise fail(i, name, "is not a width", "a width from 1 to 64")
        if not isinstance(fill, str) or len(fill) != 1:
            raise fail(i, "fill", "is not one character", "fill: '0'")
        if side not in ("left", "right"):
            raise fail(i, "side", f"unknown side {side!r}", "left or right")
        return (lambda text: text.rjust(arg, fill)) if side == "left" else (lambda text: text.ljust(arg, fill))
    # picture
    if not isinstance(arg, str) or "#" not in arg:
        raise fail(i, name, "is not a picture", "a picture like '###.##' (# takes a character of the value)")
    slots = arg.count("#")

    def picture(text: str) -> str:
        if len(text) > slots:
            raise ValueProblem(f"has {len(text)} characters, more than the picture's {slots}", f"at most {slots} characters to fill {arg!r}")
        out, taken = [], 0
        for ch in arg:
            if taken == len(text):
                break
            if ch == "#":
                out.append(text[taken])
                taken += 1
            else:
                out.append(ch)
        return "".join(out)

    return picture


def compile_transform(steps: Any, fail: Fail) -> Callable[[str], str]:
    """One function applying the steps in order; ``fail`` builds the load error for a bad step."""
    if not isinstance(steps, list) or not steps:
        raise fail(-1, "", "is not a list of steps", "[" + "; ".join(STEPS.values()) + "]")
    fns = tuple(_step(s, i, fail) for i, s in enumerate(steps))
    if len(fns) == 1:
        return fns[0]

    def chain(text: str) -> str:
        for fn in fns:
            text = fn(text)
        return text

    return chain
