"""The documentation stays short, linked and self-contained.

README.md is a five-minute read (at most 220 lines); every page and image under docs/ is reachable
from it; every relative link in README.md, NOTES.md and docs/*.md points at a file (and heading)
that exists; and no docstring or comment in msjax/, bench/ or tests/ cites a document that is not
in the repository. Text only: no jax import.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
README_MAX_LINES = 220
CODE_DIRS = ("msjax", "bench", "tests")

_FENCE = re.compile(r"^\s*(```|~~~).*?^\s*\1\s*$", re.S | re.M)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
_MD_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HTML_LINK = re.compile(r"<(?:img|a|source)\b[^>]*?\b(?:src|href)\s*=\s*[\"']([^\"']+)[\"']", re.I)
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.M)


# --- markdown links ---------------------------------------------------------------------------

def _prose(text: str) -> str:
    """The markdown without fenced blocks and code spans (what they hold is not a link)."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def _links(md: Path) -> list[str]:
    text = _prose(md.read_text(encoding="utf-8"))
    return _MD_LINK.findall(text) + _HTML_LINK.findall(text)


def _is_external(target: str) -> bool:
    return bool(re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"<[^>]+>", "", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)     # a link's text only
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(md: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for _, heading in _HEADING.findall(_FENCE.sub("", md.read_text(encoding="utf-8"))):
        slug = _slug(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def _resolve(md: Path, target: str) -> tuple[Path, str]:
    path, _, anchor = target.partition("#")
    return ((md.parent / path).resolve() if path else md.resolve()), anchor


def _pages() -> list[Path]:
    return [README, ROOT / "NOTES.md"] + sorted(DOCS.rglob("*.md"))


def _linked_from(md: Path) -> set[Path]:
    return {_resolve(md, t)[0] for t in _links(md) if not _is_external(t)}


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, (
        f"README.md has {n} lines, more than {README_MAX_LINES}: move detail into a docs/ page "
        f"and link it")


def test_every_docs_file_is_linked():
    from_readme = _linked_from(README)
    pages = [p for p in from_readme if p.suffix == ".md" and DOCS.resolve() in p.parents]
    reachable = set(from_readme).union(*(_linked_from(p) for p in pages if p.exists()))
    missing = []
    for f in sorted(p for p in DOCS.rglob("*") if p.is_file()):
        r = f.resolve()
        if f.suffix == ".md" and r not in from_readme:
            missing.append(f"{f.relative_to(ROOT)} (a page: link it from README.md itself)")
        elif r not in reachable:
            missing.append(f"{f.relative_to(ROOT)} (link it from README.md or a page README "
                           f"links)")
    assert not missing, "files under docs/ that nothing links:\n  " + "\n  ".join(missing)


def test_relative_links_resolve():
    broken = []
    for md in _pages():
        if not md.exists():
            continue
        for target in _links(md):
            if _is_external(target):
                continue
            path, anchor = _resolve(md, target)
            where = f"{md.relative_to(ROOT)}: {target}"
            if ROOT not in path.parents and path != ROOT:
                broken.append(f"{where} (outside the repository)")
            elif not path.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                broken.append(f"{where} (no heading with that anchor)")
    assert not broken, "broken links:\n  " + "\n  ".join(broken)


# --- what code cites --------------------------------------------------------------------------

# Documents that live outside the repository (the notes msjax was written from): code must state
# the fact itself, not point at them.
_OUTSIDE = [
    (re.compile(r"(?<![\w/.-])(?:reference|seeds)/[\w./-]*"), "a path outside the repository"),
    (re.compile(r"\bDESIGN\.md\b"), "DESIGN.md is not in the repository"),
    (re.compile(r"\b(?:mge_reference|seed_methods)(?:\.md)?\b"), "a reference note outside the "
     "repository"),
    (re.compile(r"\bthe design\b|\bdesign (?:card|doc|document|notes?)\b", re.I),
     "the design document is not in the repository"),
    (re.compile(r"\bseed(?:'s)? section \d", re.I), "a section of a document outside the "
     "repository"),
]
_MD_PATH = re.compile(r"(?<![\w.{}<>*-])((?:[\w.-]+/)*[\w-]+\.md)\b")


def _code_files() -> list[Path]:
    files = []
    for d in CODE_DIRS:
        files += [p for p in sorted((ROOT / d).rglob("*"))
                  if p.suffix in (".py", ".cc", ".h") and "__pycache__" not in p.parts]
    return files


def _python_texts(path: Path):
    """(line, text) of every comment and docstring, and the set of string literals that are not
    docstrings (file names the code itself reads or writes)."""
    source = path.read_text(encoding="utf-8")
    texts, literals, raw = [], set(), {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            texts.append((tok.start[0], tok.string))
        elif tok.type == tokenize.STRING:
            raw[tok.start] = tok.string       # as written, so line numbers stay exact
    tree = ast.parse(source)
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                doc = body[0].value
                docstrings.add(id(doc))
                written = raw.get((doc.lineno, doc.col_offset), doc.value)
                for i, line in enumerate(written.splitlines()):
                    texts.append((doc.lineno + i, line))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                and id(node) not in docstrings):
            literals.add(node.value)
    return texts, literals


def _c_texts(path: Path):
    source = path.read_text(encoding="utf-8")
    texts = []
    for m in re.finditer(r"//[^\n]*|/\*.*?\*/", source, re.S):
        first = source.count("\n", 0, m.start()) + 1
        texts += [(first + i, line) for i, line in enumerate(m.group().splitlines())]
    return texts, set()


def _md_exists(name: str, source: Path, written: set[str]) -> bool:
    """Whether a markdown file name mentioned in ``source`` is a file of the repository (relative
    to the source's folder or the repository root) or a file the code writes (an output such as
    a report: a string literal of the code names it). A path under a folder the repository does
    not have (OUT/summary, runs/x/report) is an output path, not a citation."""
    bases = (source.parent, ROOT)
    if any((b / name).is_file() for b in bases):
        return True
    if "/" in name:
        first = name.split("/", 1)[0]
        return not any((b / first).is_dir() for b in bases)
    return name in written


def test_code_cites_only_documents_in_the_repository():
    written = set()
    parsed = []
    for path in _code_files():
        texts, literals = (_python_texts if path.suffix == ".py" else _c_texts)(path)
        parsed.append((path, texts))
        written |= {Path(s).name for s in literals if s.endswith(".md")}
    offenders = []
    for path, texts in parsed:
        rel = path.relative_to(ROOT)
        for line, text in texts:
            spans = []
            for pattern, why in _OUTSIDE:
                for m in pattern.finditer(text):
                    if not any(a <= m.start() and m.end() <= b for a, b in spans):
                        spans.append(m.span())
                        offenders.append(f"{rel}:{line}: {m.group()!r} ({why})")
            for m in _MD_PATH.finditer(text):
                name = m.group(1)
                if any(p.search(name) for p, _ in _OUTSIDE):
                    continue
                if not _md_exists(name, path, written):
                    offenders.append(f"{rel}:{line}: {name!r} (no such file in the repository)")
    assert not offenders, ("docstrings and comments that cite documents outside the repository "
                           "(state the fact itself instead):\n  " + "\n  ".join(offenders))
