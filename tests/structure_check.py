#!/usr/bin/env python3
# A copy of the workplace's ../shared/tools/structure-check, kept here so the suite checks the
# layering without reading outside the repository. Excluded from ruff (tests/structure_check.py).
"""Structure check: import layering (serving < spec < plan < targets < cli; shared modules import no
target; targets do not import each other), import cycles, isinstance on a target's classes outside
its package, classes over 300 lines and modules over 600 lines in stack/ and serving/.

    ../shared/tools/structure-check [PROJECT_DIR]
"""
import ast, sys, os, collections
root = sys.argv[1] if len(sys.argv) > 1 else "."
mods = {}
for pkg in ("stack", "serving"):
    for d, _, fs in os.walk(os.path.join(root, pkg)):
        for f in fs:
            if f.endswith(".py"):
                p = os.path.join(d, f); rel = os.path.relpath(p, root)[:-3].replace(os.sep, ".")
                if rel.endswith(".__init__"): rel = rel[:-9]
                mods[rel] = p
def resolve(cur, node):
    out = []
    if isinstance(node, ast.Import):
        out = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = cur.split(".")
            ispkg = mods[cur].endswith("__init__.py")
            base = base[: len(base) - node.level + (1 if ispkg else 0)]
            m = ".".join(base + ([node.module] if node.module else []))
        else:
            m = node.module or ""
        out = [m] + [m + "." + a.name for a in node.names]
    res = set()
    for m in out:
        while m and m not in mods: m = m.rsplit(".", 1)[0] if "." in m else ""
        if m: res.add(m)
    return res
graph = collections.defaultdict(set); problems = []; sizes = []; classes = []
for m, p in mods.items():
    src = open(p).read(); tree = ast.parse(src)
    sizes.append((len(src.splitlines()), m))
    for n in ast.walk(tree):
        if isinstance(n, (ast.Import, ast.ImportFrom)):
            for t in resolve(m, n):
                if t != m and not m.startswith(t + "."): graph[m].add(t)
        if isinstance(n, ast.ClassDef):
            classes.append((n.end_lineno - n.lineno + 1, f"{m}.{n.name}"))
        if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "isinstance" and len(n.args) == 2:
            names = {x.id if isinstance(x, ast.Name) else getattr(x, "attr", "") for x in ast.walk(n.args[1])}
            for tgt in ("compose", "nomad", "local"):
                bad = [x for x in names if x.lower().startswith(tgt) and x[0].isupper()]
                if bad and f"stack.targets.{tgt}" not in m:
                    problems.append(f"{m}: isinstance on {bad} outside targets/{tgt}")
# layer rules
def layer(m):
    if m.startswith("serving"): return "serving"
    for k in ("stack.cli", "stack.targets", "stack.plan", "stack.spec"):
        if m == k or m.startswith(k + "."): return k
    return "stack.other"
for a, ts in graph.items():
    for b in ts:
        la, lb = layer(a), layer(b)
        if la == "serving" and lb != "serving": problems.append(f"{a} imports {b}: serving must not import stack")
        if la in ("stack.spec",) and lb in ("stack.plan", "stack.targets", "stack.cli"): problems.append(f"{a} imports {b}: spec imports a higher layer")
        if la == "stack.plan" and lb in ("stack.targets", "stack.cli"): problems.append(f"{a} imports {b}: plan imports a higher layer")
        if la == "stack.other" and a != "stack.__main__" and lb in ("stack.targets", "stack.cli"): problems.append(f"{a} imports {b}: shared module imports a target or the CLI")
        if la == lb == "stack.targets":
            ta, tb = a.split(".")[2] if a.count(".") >= 2 else "", b.split(".")[2] if b.count(".") >= 2 else ""
            sib = {"compose", "nomad", "local"}
            if ta in sib and tb in sib and ta != tb: problems.append(f"{a} imports {b}: one target imports another")
# cycles (strongly connected components)
index = {}; low = {}; stack_ = []; on = set(); sccs = []; i = [0]
sys.setrecursionlimit(10000)
def sc(v):
    index[v] = low[v] = i[0]; i[0] += 1; stack_.append(v); on.add(v)
    for w in graph.get(v, ()):
        if w not in index: sc(w); low[v] = min(low[v], low[w])
        elif w in on: low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack_.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 1: sccs.append(sorted(comp))
for v in list(mods):
    if v not in index: sc(v)
for c in sccs: problems.append("import cycle: " + " <-> ".join(c))
big_mod = max(sizes); big_cls = max(classes)
if big_mod[0] > 600: problems.append(f"largest module {big_mod[1]} has {big_mod[0]} lines (> 600)")
if big_cls[0] > 300: problems.append(f"largest class {big_cls[1]} has {big_cls[0]} lines (> 300)")
for p in problems: print(p)
print(f"structure: {len(problems)} problems; {len(sccs)} import cycles; largest module {big_mod[1]} {big_mod[0]} lines; largest class {big_cls[1]} {big_cls[0]} lines")
sys.exit(1 if problems else 0)
