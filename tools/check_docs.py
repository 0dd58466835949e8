"""Check the tutorials: run every command they show and compare every quoted file excerpt.

- ```bash blocks: all blocks of one tutorial run in order in ONE bash process
  (``set -euo pipefail``) from the repository root, with the venv's python first on PATH,
  ``$OUT`` set to a fresh scratch directory and ``LAVIS_LITE_CACHE_ROOT`` under it (so nothing
  is written into the repository or the user's cache).
- Code blocks whose first line is ``# file: <path>`` quote a real file: their lines (blank
  lines and ``...`` lines skipped) must appear in that file in the same order.

Usage: python tools/check_docs.py [--only adding_model] [--no-run] [-v] [docs/tutorials/x.md ...]
Exit status 1 when something fails; each failure names the tutorial and the block.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FENCE = re.compile(r"^```([\w+-]*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
FILE_TAG = re.compile(r"^\s*(?:#|//)\s*file:\s*(\S+)\s*$")
DEFAULT_DOCS = ["docs/architecture.md", "docs/tutorials/*.md"]


def code_blocks(markdown: str) -> list[tuple[str, str, int]]:
    """[(language, body, line number)] of the fenced blocks."""
    return [(m.group(1).lower(), m.group(2), markdown.count("\n", 0, m.start()) + 1)
            for m in FENCE.finditer(markdown)]


def check_excerpt(body: str, repo: str = REPO) -> str | None:
    """None when the excerpt matches its file, else the reason."""
    lines = body.splitlines()
    rel = FILE_TAG.match(lines[0]).group(1)
    path = os.path.join(repo, rel)
    if not os.path.isfile(path):
        return f"quoted file {rel} does not exist"
    with open(path) as f:
        source = [line.strip() for line in f.read().splitlines()]
    pos = 0
    for line in lines[1:]:
        want = line.strip()
        if not want or want in ("...", "# ...") or want.startswith("# ...") :
            continue
        try:
            pos = source.index(want, pos) + 1
        except ValueError:
            return f"line not found in {rel} (in this order): {want!r}"
    return None


def commands(markdown: str) -> list[tuple[str, int]]:
    return [(body, line) for lang, body, line in code_blocks(markdown) if lang in ("bash", "sh", "shell")]


def run_commands(name: str, blocks: list[tuple[str, int]], out_dir: str, timeout: int,
                 verbose: bool = False) -> str | None:
    script = "set -euo pipefail\n" + "\n".join(
        f"echo '>>> {name}: block at line {line}' >&2\n{body}" for body, line in blocks)
    env = dict(os.environ)
    env.update(OUT=out_dir, LAVIS_LITE_CACHE_ROOT=os.path.join(out_dir, "cache"),
               PATH=os.path.join(REPO, ".venv", "bin") + os.pathsep + env.get("PATH", ""),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("PYTHONPATH", None)
    try:
        proc = subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"commands did not finish within {timeout}s"
    if verbose:
        print(proc.stdout, file=sys.stderr)
    if proc.returncode != 0:
        return f"commands failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return None


def check(paths: list[str], run: bool = True, timeout: int = 600, scratch: str | None = None,
          verbose: bool = False) -> list[str]:
    failures = []
    for path in paths:
        rel = os.path.relpath(path, REPO)
        with open(path) as f:
            text = f.read()
        for lang, body, line in code_blocks(text):
            if body.strip() and FILE_TAG.match(body.splitlines()[0]):
                reason = check_excerpt(body)
                if reason:
                    failures.append(f"{rel}:{line}: {reason}")
        blocks = commands(text)
        if run and blocks:
            name = os.path.splitext(os.path.basename(path))[0]
            out_dir = tempfile.mkdtemp(prefix=f"{name}_", dir=scratch)
            start = time.time()
            reason = run_commands(rel, blocks, out_dir, timeout, verbose)
            print(f"{rel}: {len(blocks)} command blocks, {time.time() - start:.1f}s, "
                  f"{'FAILED' if reason else 'ok'}", file=sys.stderr)
            if reason:
                failures.append(f"{rel}: {reason}")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("docs", nargs="*", help="markdown files (default: docs/architecture.md, docs/tutorials)")
    parser.add_argument("--only", help="only the tutorial with this name (e.g. adding_model)")
    parser.add_argument("--no-run", action="store_true", help="check excerpts only")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per tutorial")
    parser.add_argument("-v", "--verbose", action="store_true", help="print what the commands print")
    args = parser.parse_args(argv)
    paths = args.docs or sorted(p for pattern in DEFAULT_DOCS for p in glob.glob(os.path.join(REPO, pattern)))
    if args.only:
        paths = [p for p in paths if os.path.splitext(os.path.basename(p))[0] == args.only]
        if not paths:
            parser.error(f"no tutorial named {args.only!r}")
    failures = check([os.path.abspath(p) for p in paths], run=not args.no_run, timeout=args.timeout,
                     verbose=args.verbose)
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    print(f"{len(paths)} files checked, {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
