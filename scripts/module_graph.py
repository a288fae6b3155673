#!/usr/bin/env python3
"""Prints each workspace crate's module graph (top-level modules, from `crate::` paths) and
exits 1 if a crate has a cycle between its modules. Crates cannot form cycles (Cargo refuses
them); this checks the modules inside each crate.

A path `crate::a::...` (or `super::a::...` in a top-level module's file) is an edge to module `a`; `crate::Item` where the crate root re-exports
`Item` from module `a` (`pub use a::{Item, ...}`) is an edge to `a` as well. Doc comments and
`#[cfg(test)]` modules are left out: tests may reach anywhere.

Usage: scripts/module_graph.py [--dot]
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def strip(src):
    """The source without comments, string literals and `#[cfg(test)] mod ... { }` blocks."""
    src = re.sub(r"//[^\n]*", "", src)
    src = re.sub(r"/\*.*?\*/", "", src, flags=re.S)
    src = re.sub(r'"(?:\\.|[^"\\])*"', '""', src)
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{", src):
        if m.start() < i:
            continue
        out.append(src[i : m.start()])
        depth, j = 1, m.end()
        while depth and j < len(src):
            depth += {"{": 1, "}": -1}.get(src[j], 0)
            j += 1
        i = j
    out.append(src[i:])
    return "".join(out)


def use_items(tree):
    """Top-level names of a use tree's brace group: `a::{b, c::d}, e` -> [a, e] style heads."""
    items, depth, cur = [], 0, ""
    for ch in tree:
        depth += ch == "{"
        depth -= ch == "}"
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    items.append(cur)
    return [i.strip() for i in items if i.strip()]


def heads(src):
    """The first segment after each `crate::`, including inside `use crate::{...}` groups."""
    found = set()
    for m in re.finditer(r"\bcrate::\{", src):
        depth, j = 1, m.end()
        while depth and j < len(src):
            depth += {"{": 1, "}": -1}.get(src[j], 0)
            j += 1
        for item in use_items(src[m.end() : j - 1]):
            if item.startswith("{"):
                found.update(re.split(r"[:\s{},]", x)[0] for x in use_items(item[1:-1]))
            else:
                found.add(re.split(r"[:\s{]", item)[0])
    found.update(re.findall(r"\bcrate::([A-Za-z_][A-Za-z0-9_]*)", src))
    return {h for h in found if h and h != "self"}


def crate_graph(src_dir):
    lib = strip(open(os.path.join(src_dir, "lib.rs")).read())
    modules = set(re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", lib, re.M))
    # Items the root re-exports from its own modules: name -> module.
    owner = {}
    for m in re.finditer(r"(?:pub(?:\([^)]*\))?\s+)?use\s+(\w+)::(\{.*?\}|[\w:]+)\s*;", lib, re.S):
        mod, rest = m.group(1), m.group(2)
        if mod not in modules:
            continue
        names = re.findall(r"(\w+)\s*(?:,|\}|$)", rest.strip("{}") + ",") if rest.startswith("{") else [rest.split("::")[-1]]
        for n in names:
            owner[n] = mod
    graph = {m: set() for m in modules}
    for d, _, files in os.walk(src_dir):
        for f in files:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(d, f), src_dir)
            mod = rel.split(os.sep)[0].removesuffix(".rs")
            if mod not in modules:
                continue
            text = strip(open(os.path.join(d, f)).read())
            # In a top-level module's own file, `super::` is the crate root.
            if rel == f or rel == os.path.join(mod, "mod.rs"):
                text = re.sub(r"\bsuper::", "crate::", text)
            for h in heads(text):
                target = h if h in modules else owner.get(h)
                if target and target != mod:
                    graph[mod].add(target)
    return graph


def cycle(graph):
    """One cycle as a list of modules, or None."""
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state:
                c = visit(m)
                if c:
                    return c
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(graph):
        if n not in state:
            c = visit(n)
            if c:
                return c
    return None


def main():
    failed = False
    crates = os.path.join(ROOT, "crates")
    for name in sorted(os.listdir(crates)):
        src = os.path.join(crates, name, "src")
        if not os.path.isfile(os.path.join(src, "lib.rs")):
            continue
        graph = crate_graph(src)
        print(f"{name}:")
        for m in sorted(graph):
            print(f"  {m} -> {', '.join(sorted(graph[m])) or '-'}")
        c = cycle(graph)
        if c:
            failed = True
            print(f"  CYCLE: {' -> '.join(c)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
