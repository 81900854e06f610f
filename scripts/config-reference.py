#!/usr/bin/env python3
"""Writes docs/configuration.md: every key of config/default.toml with its
default, its environment variable, its flag (from `distilserve serve --help`)
and the file's own comment on it.

    python3 scripts/config-reference.py [--bin target/release/distilserve]

tests/suite/structure.rs checks the page against the code (every key of the
defaults listed, no key listed that the defaults lack, each flag the one the
binary has): rerun this after changing a setting.
"""
import argparse
import re
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAD_TABLE = "heads.sentiment"  # the default file's example of a [heads.<name>] table

INTRO = """# Configuration reference

Settings come from `config/default.toml` (compiled into the binary), then an
optional file (`--config FILE` or `DISTILSERVE_CONFIG`), then environment
variables, then command-line flags: each later one wins. `distilserve config
[flags]` prints the settings in effect; `distilserve serve --help` lists the
flags.

- Environment: `DISTILSERVE_<SECTION>__<KEY>`, two underscores between section
  and key (`DISTILSERVE_SECURITY__ADMIN_KEY`); lists in TOML form
  (`DISTILSERVE_CLASSIFY__SERVE='["a","b"]'`). A head's own settings:
  `DISTILSERVE_HEADS__<NAME>__<KEY>`.
- Refused at start, with the key named: an unknown key in a file or the
  environment, a value of the wrong type or out of its bounds, `[training]`
  defaults that `POST /heads` would refuse, and a `DISTILSERVE_` variable that
  is neither a setting's nor one of these others (the start says which
  setting's variable it most likely meant):

| variable | read by |
|---|---|
| `DISTILSERVE_CONFIG` | `--config`: an extra settings file |
| `DISTILSERVE_REMOTE_API_KEY` | `distilserve extract --remote`: the deployment's API key |
| `DISTILSERVE_CACHE` | the set-up scripts: downloads, venvs (`~/.cache/distilserve`) |
| `DISTILSERVE_VENV`, `DISTILSERVE_PYTHON`, `DISTILSERVE_CLIENTS_PYTHON` | the set-up scripts and the tests: the Python environments |
| `DISTILSERVE_IMAGE`, `DISTILSERVE_PORT` | `deploy/compose.yaml`: the image and the host's port |
| `DISTILSERVE_BIN`, `DISTILSERVE_SKIP_ROOT_TESTS`, `DISTILSERVE_FAULT_PAUSE_BEFORE_RENAME_MS` | the tests and `deploy/local/topology.sh` |
| `DISTILSERVE_SERVICE_HOST`, `DISTILSERVE_PORT_8080_TCP...` | Kubernetes' service links (not needed: `deploy/k8s` turns them off) |

Generated from `config/default.toml` and `distilserve serve --help` by
`scripts/config-reference.py`; `tests/suite/structure.rs` fails when they
disagree. A dash in the flag column: that key is set by file or environment only.
"""


def flags_of(binary: str) -> dict:
    """Each key's flag and help line, from the help text's `section.key: ...` lines
    (without the `[default: ...] [env: ...]` the binary appends)."""
    text = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True, check=True).stdout
    text = re.sub(r" \[default: .*?\] \[env: [A-Z_]+\]", "", text)
    flags, last = {}, None
    for line in text.splitlines():
        m = re.match(r"\s+(?:-\w, )?(--[a-z0-9-]+)(?: <\w+>)?(?:\s+([a-z_]+\.[a-z_]+): (.*))?", line)
        if m:
            last = m.group(1)
            if m.group(2):  # the help on the flag's own line
                flags[m.group(2)] = (last, m.group(3).strip())
                last = None
            continue
        m = re.match(r"\s+([a-z_]+\.[a-z_]+): (.*)", line)
        if m and last:
            flags[m.group(1)] = (last, m.group(2).strip())
            last = None
    return flags


def keys_with_comments(text: str):
    """(section, key, comment) for every `key = value` of the file, in order."""
    section, comment = None, []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("["):
            section, comment = stripped.strip("[]"), []
        elif stripped.startswith("#"):
            comment.append(stripped.lstrip("#").strip())
        elif "=" in stripped and section:
            key = stripped.split("=", 1)[0].strip()
            yield section, key, " ".join(c for c in comment if c)
            comment = []
        elif not stripped:
            comment = []


def shown(value) -> str:
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        return "`[" + ", ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in value) + "]`"
    return f"`{value}`"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bin", default=str(ROOT / "target/release/distilserve"))
    p.add_argument("--out", default=str(ROOT / "docs/configuration.md"))
    a = p.parse_args()
    text = (ROOT / "config/default.toml").read_text()
    values = tomllib.loads(text)
    flags = flags_of(a.bin)
    out, current = [INTRO], None
    for section, key, comment in keys_with_comments(text):
        shown_section = "heads.<name>" if section == HEAD_TABLE else section
        if shown_section != current:
            current = shown_section
            out.append(f"\n## `[{shown_section}]`\n")
            if section == HEAD_TABLE:
                out.append("One table per head (`[heads.sentiment]` is the default file's); "
                           "the variable's `<NAME>` is the head's name in capitals.\n")
            out.append("| key | default | environment | flag | what |\n|---|---|---|---|---|")
        value = values
        for part in section.split("."):
            value = value[part]
        value = value[key]
        env = f"DISTILSERVE_{shown_section.replace('.', '__').upper()}__{key.upper()}".replace("<NAME>", "<NAME>")
        flag, help_line = flags.get(f"{section}.{key}", ("-", ""))
        flag = f"`{flag}`" if flag != "-" else "-"
        what = (comment or help_line[:1].upper() + help_line[1:] + ".").replace("|", "\\|")
        out.append(f"| `{shown_section}.{key}` | {shown(value)} | `{env}` | {flag} | {what} |")
    Path(a.out).write_text("\n".join(out) + "\n")
    print(f"wrote {a.out}: {sum(1 for _ in keys_with_comments(text))} keys, {len(flags)} with a flag")


if __name__ == "__main__":
    main()
