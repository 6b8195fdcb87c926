#!/usr/bin/env python3
"""The crate's module import graph, and the cycles in it (issue 15's acceptance check).

Usage: tools/module_graph.py [--edges] [--src src]     exit status 1 when a cycle exists

A module is one source file (`src/a/b.rs` or `src/a/b/mod.rs` is `a::b`; inline `mod x { }`
blocks belong to their file). Every path that starts with `crate::`, `super::` or `self::`
(in `use` trees, including `{...}` groups, and in expressions) is an edge from the file's
module to the longest module prefix it names.

Cycles are looked for among siblings, level by level: an edge a::x::… → a::y::… is projected
onto the children of their deepest common ancestor (x → y under `a`). An edge between a module
and one of its own ancestors or descendants (a child using its parent's types, a mod.rs
re-exporting its children) is not a layering edge and is left out. The crate is acyclic when
every parent's sibling graph is — at the top level that is the layering formats → quant →
model → runtime → … with no edge pointing back up.

Why not cargo-modules: it needs rust-analyzer's crates (a long build on this machine) and
counts parent/child `use` pairs as cycles, which every mod.rs has. This script is the check
the issue asks for, at the granularity that says something about layering.
"""

import argparse
import os
import re
import sys
from collections import defaultdict

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def module_files(src):
    """Map module path tuple -> file, from the file tree."""
    mods = {}
    for root, _dirs, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(root, f), src)
            parts = rel[:-3].split(os.sep)
            if parts[-1] == "mod":
                parts = parts[:-1]
            if parts in (["lib"], ["main"]):
                parts = []
                if f == "main.rs":
                    continue  # the binary is its own crate
            mods[tuple(parts)] = os.path.join(root, f)
    return mods


def strip_comments_and_strings(text):
    """The code with comments removed and string/char literal contents blanked (one lexer
    pass, so a `//` inside a string or a `"` inside a char literal cannot derail it)."""
    out = []
    i, n = 0, len(text)
    raw = re.compile(r'r(#*)"')
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "r" and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")) \
                and raw.match(text, i):
            m = raw.match(text, i)
            end = text.find('"' + m.group(1), m.end())
            out.append('""')
            i = n if end < 0 else end + 1 + len(m.group(1))
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            out.append('""')
            i += 1
        elif c == "'":
            # A char literal ('x', '\n', '\u{..}', '"') or a lifetime ('a): only the former closes.
            m = re.compile(r"'(\\(u\{[0-9a-fA-F]+\}|x[0-9a-fA-F]{2}|.)|[^\\'])'").match(text, i)
            if m:
                out.append("' '")
                i = m.end()
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse_tree(text, i):
    """Parse a use tree starting at text[i]; returns (list of path suffix lists, end index)."""
    paths = []
    n = len(text)
    while i < n and text[i].isspace():
        i += 1
    if i < n and text[i] == "{":
        i += 1
        while True:
            while i < n and (text[i].isspace() or text[i] == ","):
                i += 1
            if i >= n or text[i] == "}":
                return paths, i + 1
            sub, i = parse_tree(text, i)
            paths.extend(sub)
    m = re.compile(IDENT + r"|\*").match(text, i)
    if not m:
        return [[]], i
    head = m.group(0)
    i = m.end()
    j = i
    while j < n and text[j].isspace():
        j += 1
    if text.startswith("::", j):
        sub, i = parse_tree(text, j + 2)
        return [[head] + s for s in sub], i
    return [[head]], i


def references(text):
    """Every crate-relative path in a file, as (anchor, [segments])."""
    out = []
    for m in re.finditer(r"\b(crate|super|self)\s*::", text):
        # `super::super::x` is one path; skip the inner matches of a chain already taken.
        start = m.start()
        if start >= 2 and text[start - 2 : start] == "::":
            continue
        subs, _ = parse_tree(text, m.end())
        for s in subs:
            out.append((m.group(1), s))
    return out


def resolve(module, anchor, segs, is_dir_module, mods):
    if anchor == "crate":
        base = []
    else:
        base = list(module)
        if anchor == "super" or not is_dir_module:
            # `self::` in a non-mod.rs file is the file's module; `super::` its parent.
            pass
        if anchor == "super":
            base = base[:-1]
    segs = list(segs)
    while segs and segs[0] == "super":
        base = base[:-1]
        segs = segs[1:]
    full = base + [s for s in segs if s not in ("self", "*")]
    # Longest prefix that is a module.
    for k in range(len(full), -1, -1):
        if tuple(full[:k]) in mods:
            return tuple(full[:k])
    return ()


def project(a, b):
    """The sibling edge an a -> b reference stands for, or None (same/ancestor/descendant)."""
    k = 0
    while k < len(a) and k < len(b) and a[k] == b[k]:
        k += 1
    if k == len(a) or k == len(b):
        return None
    return a[:k], a[k], b[k]


def strongly_connected(nodes, edges):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", default=os.path.join(os.path.dirname(__file__), "..", "src"))
    ap.add_argument("--edges", action="store_true", help="print every sibling edge with its sources")
    args = ap.parse_args()
    sys.setrecursionlimit(10000)

    mods = module_files(args.src)
    # parent -> {(x, y): [(from module, to module)]}
    sibling_edges = defaultdict(lambda: defaultdict(set))
    for module, path in sorted(mods.items()):
        with open(path, encoding="utf-8") as fh:
            text = strip_comments_and_strings(fh.read())
        is_dir = path.endswith("mod.rs") or path.endswith("lib.rs")
        for anchor, segs in references(text):
            target = resolve(module, anchor, segs, is_dir, mods)
            p = project(module, target)
            if p:
                parent, x, y = p
                sibling_edges[parent][(x, y)].add(("::".join(module), "::".join(target)))

    cycles = 0
    for parent in sorted(sibling_edges):
        edges = defaultdict(set)
        for x, y in sibling_edges[parent]:
            edges[x].add(y)
        nodes = set(edges) | {y for ys in edges.values() for y in ys}
        name = "::".join(parent) or "crate"
        if args.edges:
            for (x, y), why in sorted(sibling_edges[parent].items()):
                print(f"{name}: {x} -> {y}   ({', '.join(f'{a} -> {b}' for a, b in sorted(why)[:3])}"
                      f"{' …' if len(why) > 3 else ''})")
        for comp in strongly_connected(nodes, edges):
            cycles += 1
            print(f"CYCLE under {name}: {{{', '.join(comp)}}}")
            members = set(comp)
            for (x, y), why in sorted(sibling_edges[parent].items()):
                if x in members and y in members:
                    print(f"    {x} -> {y}: {', '.join(f'{a} -> {b}' for a, b in sorted(why))}")
    if cycles == 0:
        print(f"no import cycles among {len(mods)} modules")
    return 1 if cycles else 0


if __name__ == "__main__":
    sys.exit(main())
