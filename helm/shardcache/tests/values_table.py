"""The chart README's table of values, generated from values.yaml.

    values_table.py VALUES_YAML README

Every setting of values.yaml is a row: its dotted key, its default, and the comment lines
right above it (a blank line ends a comment; a setting without one takes its map's). The table
between the README's two marker lines is rewritten; a setting without a comment fails, so
none goes undocumented.
"""

import json
import pathlib
import re
import sys

import yaml

BEGIN = "<!-- values: generated from values.yaml by helm/shardcache/tests/values_table.py -->"
END = "<!-- end of values -->"
KEY = re.compile(r"^( *)([A-Za-z0-9_]+):(.*)$")


def rows(text):
    values = yaml.safe_load(text)
    comment, stack, out, missing = [], [], [], []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            comment = []
            continue
        if stripped.startswith("#"):
            comment.append(stripped.lstrip("#").strip())
            continue
        m = KEY.match(line)
        if not m:
            comment = []
            continue
        indent, key, rest = len(m.group(1)), m.group(2), m.group(3).split(" #")[0].strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = [k for _, k, _ in stack] + [key]
        inherited = next((c for _, _, c in reversed(stack) if c), "")
        said = " ".join(comment)
        comment = []
        value = values
        for k in path:
            value = value[k]
        if rest == "" and isinstance(value, dict):
            stack.append((indent, key, said))
            continue
        meaning = said or inherited
        if not meaning:
            missing.append(".".join(path))
        out.append((".".join(path), value, meaning))
    return out, missing


def shown(value):
    if isinstance(value, str):
        # Quoted where YAML would read it as something else ("", "2", "true").
        plain = value != "" and isinstance(yaml.safe_load(value), str)
        return f"`{value}`" if plain else f"`{json.dumps(value)}`"
    return f"`{json.dumps(value)}`"


def table(text):
    out, missing = rows(text)
    if missing:
        raise SystemExit("values.yaml settings without a comment: " + ", ".join(missing))
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for key, value, meaning in out:
        lines.append(f"| `{key}` | {shown(value)} | {meaning.replace('|', '&#124;')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    values_path, readme_path = map(pathlib.Path, sys.argv[1:3])
    readme = readme_path.read_text()
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"{readme_path} has no {BEGIN} ... {END} lines")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme_path.write_text(f"{head}{BEGIN}\n{table(values_path.read_text())}\n{END}{tail}")
