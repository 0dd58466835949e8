"""What the zoo holds and how to evaluate on each data set, from the registry and the recipes on disk.

Nothing here is a hand-kept list: every registered builder is a row (so data sets and benchmarks
added later appear by themselves), its splits come from its default YAML, its card from
``docs/dataset_cards/<name>.md``, and its commands from the run YAMLs under ``projects/`` that
evaluate (``run.evaluate: true``) and name it in their ``datasets:`` section.

    python -m lavis_lite datasets             # a plain table
    python -m lavis_lite datasets --markdown  # the table of docs/dataset_cards/README.md
    python -m lavis_lite datasets --update-readme docs/dataset_cards/README.md   # rewrite that table
"""
from __future__ import annotations

import glob
import logging
import os

from omegaconf import OmegaConf

from lavis_lite.common.registry import registry

logger = logging.getLogger(__name__)


def _root() -> str:
    return registry.get_path("library_root")


def eval_recipes(root: str | None = None) -> dict[str, list[str]]:
    """``{builder name: [recipe paths relative to root]}`` over ``projects/**/*.yaml`` that evaluate."""
    root = root or _root()
    recipes: dict[str, list[str]] = {}
    for path in sorted(glob.glob(os.path.join(root, "projects", "**", "*.yaml"), recursive=True)):
        try:
            cfg = OmegaConf.load(path)
        except Exception as err:  # noqa: BLE001 - a broken YAML is reported, the listing goes on
            logger.warning("skipping %s in the recipe listing: %s", path, err)
            continue
        run, datasets = cfg.get("run", None), cfg.get("datasets", None)
        if not hasattr(run, "get") or not run.get("evaluate", False) or not hasattr(datasets, "items"):
            continue
        for name, section in datasets.items():
            builder = section.get("builder", name) if hasattr(section, "get") else name
            recipes.setdefault(str(builder), []).append(os.path.relpath(path, root))
    return recipes


def default_splits(name: str) -> list[str]:
    """The splits a builder's default YAML declares (annotation files, shards or split folders)."""
    try:
        info = registry.get_builder_class(name).default_config().get("build_info", None) or {}
    except Exception as err:  # noqa: BLE001 - a builder whose YAML does not load still gets its row
        logger.warning("dataset %r: default config does not load (%s)", name, err)
        return []
    for key in ("annotations", "shards"):
        section = info.get(key, None)
        if section:
            return [s for s in ("train", "val", "test") if section.get(s, None) is not None]
    if info.get("splits", None):
        return list(info.splits)
    return ["train"] if info.get("storage", None) else []


def describe(root: str | None = None) -> list[dict]:
    """One row per registered builder: name, splits, card (or None) and evaluation commands."""
    root = root or _root()
    recipes = eval_recipes(root)
    rows = []
    for name in registry.list_datasets():
        card = os.path.join("docs", "dataset_cards", f"{name}.md")
        rows.append({"name": name, "splits": default_splits(name),
                     "card": card if os.path.isfile(os.path.join(root, card)) else None,
                     "commands": [f"python evaluate.py --cfg-path {r}" for r in recipes.get(name, [])]})
    return rows


def _how(row: dict) -> list[str]:
    if row["commands"]:
        return row["commands"]
    if row["splits"] and set(row["splits"]) <= {"train"}:
        return ["(training data: no evaluation)"]
    return [f"(no recipe in projects/ yet: python evaluate.py --cfg-path YOUR.yaml with datasets.{row['name']})"]


def format_table(rows: list[dict], markdown: bool = False) -> str:
    if markdown:
        lines = ["| name | splits | evaluate with | card |", "|---|---|---|---|"]
        for row in rows:
            how = "<br>".join(f"`{c}`" if c.startswith("python") else c for c in _how(row))
            card = f"[{row['name']}.md]({row['name']}.md)" if row["card"] else "-"
            lines.append(f"| `{row['name']}` | {', '.join(row['splits']) or '-'} | {how} | {card} |")
        return "\n".join(lines)
    width = max((len(r["name"]) for r in rows), default=4) + 2
    lines = []
    for row in rows:
        how = _how(row)
        lines.append(f"{row['name']:<{width}}{','.join(row['splits']) or '-':<16}{how[0]}")
        lines.extend(f"{'':<{width + 16}}{c}" for c in how[1:])
    return "\n".join(lines)


START, END = "<!-- zoo-table:start -->", "<!-- zoo-table:end -->"


def update_readme(path: str, rows: list[dict]) -> bool:
    """Replace the table between the zoo-table markers of ``path``; True when the file changed."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if START not in text or END not in text:
        raise ValueError(f"{path} has no {START} ... {END} block to rewrite")
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    new = f"{head}{START}\n{format_table(rows, markdown=True)}\n{END}{tail}"
    if new != text:
        with open(path, "w", encoding="utf-8") as f:
            f.write(new)
    return new != text
