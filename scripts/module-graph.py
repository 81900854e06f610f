#!/usr/bin/env python3
"""Prints the crate's module import graph (src/) and exits 1 if it has a cycle.

A module is a file under src/ (src/heads/*.rs count as `heads`, src/http/*.rs as
`http`: a folder is one concern); an edge A -> B means a file of A names
`crate::B` (or `super::` from a submodule, which stays inside A). Run by the
test suite (tests/suite/structure.rs) so that a circle cannot come back."""
import pathlib, re, sys

root = pathlib.Path(__file__).resolve().parent.parent / "src"
def module_of(path):
    rel = path.relative_to(root)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem

graph = {}
for path in root.rglob("*.rs"):
    m = module_of(path)
    if m in ("lib", "main"):
        continue
    text = re.sub(r"//[^\n]*", "", path.read_text())
    deps = {d for d in re.findall(r"crate::([a-z_]+)", text) if d != m}
    graph.setdefault(m, set()).update(deps)

state, stack, cycle = {}, [], None
def visit(n):
    global cycle
    state[n] = 1; stack.append(n)
    for d in sorted(graph.get(n, ())):
        if cycle: return
        if state.get(d) == 1:
            cycle = stack[stack.index(d):] + [d]; return
        if d not in state: visit(d)
    stack.pop(); state[n] = 2
for n in sorted(graph):
    if n not in state and not cycle: visit(n)
for n in sorted(graph):
    print(f"{n:12} -> {', '.join(sorted(graph[n])) or '(nothing)'}")
if cycle:
    print("CYCLE: " + " -> ".join(cycle)); sys.exit(1)
print("no cycle")
