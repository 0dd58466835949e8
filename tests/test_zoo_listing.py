"""`python -m lavis_lite` and docs/dataset_cards/README.md list every registered data set with its
evaluation command, found from the registry and the recipes on disk (nothing hand-kept)."""
import os
import subprocess
import sys

import pytest

import lavis_lite  # noqa: F401
from lavis_lite.common.registry import registry
from lavis_lite.datasets.builders import dataset_zoo, zoo_listing
from lavis_lite.datasets.builders.base_dataset_builder import register_dataset_builder
from lavis_lite.datasets.datasets import VQADataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _built_in_names():
    """Registered by lavis_lite itself: a plugin (e.g. projects/avsd_dialogue, imported by its tests
    in this process) is not registered in a fresh one, and documents its own data."""
    return [n for n in dataset_zoo.get_names() if registry.get_builder_class(n).__module__.startswith("lavis_lite.")]


def test_python_m_lavis_lite_lists_every_dataset_with_its_command():
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-m", "lavis_lite"], capture_output=True, text=True, cwd=REPO, env=env)
    assert out.returncode == 0, out.stderr
    rows, name = {}, None
    for line in out.stdout.splitlines():  # a row's further commands continue on indented lines
        if line and not line.startswith(" "):
            name = line.split()[0]
            rows[name] = line
        elif line.strip() and name:
            rows[name] += "\n" + line
    assert "datasets" in rows and "tasks" in rows and "models" in rows
    for name in _built_in_names():
        assert name in rows, name
    assert "python evaluate.py --cfg-path projects/minigpt4qwen/eval_vqav2.yaml" in rows["coco_vqa"]
    assert "training data" in rows["laion400M"] and rows["nocaps"].split()[1] == "val,test"


def test_eval_recipes_come_from_project_yamls(tmp_path):
    proj = tmp_path / "projects" / "m"
    proj.mkdir(parents=True)
    (proj / "eval_gqa.yaml").write_text("datasets:\n  gqa: {}\n  mine: {builder: ok_vqa}\nrun: {evaluate: true}\n")
    (proj / "train.yaml").write_text("datasets:\n  gqa: {}\nrun: {evaluate: false}\n")
    (proj / "broken.yaml").write_text("datasets: [\n")
    assert zoo_listing.eval_recipes(str(tmp_path)) == {"gqa": ["projects/m/eval_gqa.yaml"],
                                                       "ok_vqa": ["projects/m/eval_gqa.yaml"]}
    rows = {r["name"]: r for r in zoo_listing.describe(str(tmp_path))}
    assert rows["gqa"]["commands"] == ["python evaluate.py --cfg-path projects/m/eval_gqa.yaml"]
    assert rows["gqa"]["card"] is None  # no docs/ under this root
    assert rows["imagenet"]["splits"] == ["val"] and rows["laion400M"]["splits"] == ["train"]


@pytest.fixture()
def later_builder(tmp_path):
    """A data set registered after the zoo (as a benchmark would be): it is listed without any edit."""
    yaml = tmp_path / "later.yaml"
    yaml.write_text("datasets:\n  later_bench:\n    build_info:\n      annotations:\n        test: {storage: x.json}\n")
    cls = register_dataset_builder("later_bench", VQADataset, config_path=str(yaml))
    yield cls
    registry.unregister("builder", "later_bench")


def test_a_later_registered_benchmark_is_listed(later_builder):
    rows = {r["name"]: r for r in zoo_listing.describe()}
    assert rows["later_bench"]["splits"] == ["test"]
    assert "no recipe in projects/ yet" in zoo_listing.format_table([rows["later_bench"]])
    assert "`later_bench`" in zoo_listing.format_table([rows["later_bench"]], markdown=True)


def test_cards_readme_lists_every_registered_dataset():
    with open(os.path.join(REPO, "docs", "dataset_cards", "README.md")) as f:
        text = f.read()
    table = text[text.index("<!-- zoo-table:start -->"):text.index("<!-- zoo-table:end -->")]
    built_in = _built_in_names()
    assert {"coco_retrieval", "imagenet", "coco_caption"} <= set(built_in)
    missing = [n for n in built_in if f"| `{n}` |" not in table]
    assert not missing, (f"docs/dataset_cards/README.md lacks {missing}: run `python -m lavis_lite datasets "
                         f"--update-readme docs/dataset_cards/README.md`")


def test_update_readme_rewrites_only_the_table(tmp_path, later_builder):
    readme = tmp_path / "README.md"
    readme.write_text("# Cards\nintro\n<!-- zoo-table:start -->\n| old |\n<!-- zoo-table:end -->\nafter\n")
    from lavis_lite.__main__ import main
    main(["datasets", "--update-readme", str(readme)])
    text = readme.read_text()
    assert text.startswith("# Cards\nintro\n<!-- zoo-table:start -->\n| name | splits |") and text.endswith(
        "<!-- zoo-table:end -->\nafter\n")
    assert "| old |" not in text and "| `later_bench` |" in text and "| `coco_retrieval` |" in text
    assert zoo_listing.update_readme(str(readme), zoo_listing.describe()) is False  # idempotent
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="no <!-- zoo-table:start -->"):
        zoo_listing.update_readme(str(readme), [])
