"""The docs check: every command in the tutorials runs, every quoted excerpt matches its file."""
import glob
import importlib.util
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUTORIALS = sorted(glob.glob(os.path.join(REPO, "docs", "tutorials", "*.md")))

_spec = importlib.util.spec_from_file_location("check_docs", os.path.join(REPO, "tools", "check_docs.py"))
check_docs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_docs)


def test_the_four_tutorials_and_the_architecture_page_exist():
    names = {os.path.basename(p) for p in TUTORIALS}
    assert {"adding_dataset.md", "adding_processor.md", "adding_model.md", "adding_task.md"} <= names
    assert os.path.isfile(os.path.join(REPO, "docs", "architecture.md"))
    for path in TUTORIALS:
        with open(path) as f:
            text = f.read()
        assert check_docs.commands(text), f"{path} shows no command"
        assert "projects/avsd_dialogue" in text, f"{path} does not use the AVSD example"


def test_quoted_excerpts_match_their_files():
    paths = TUTORIALS + [os.path.join(REPO, "docs", "architecture.md")]
    assert check_docs.check(paths, run=False) == []


def test_the_check_catches_drift_and_failing_commands(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("```python\n# file: projects/avsd_dialogue/avsd_plugin/model.py\n"
                   "class GPTDialogue(BaseModel):\n...\n    def forward(self, samples: dict) -> dict:\n```\n")
    assert check_docs.check([str(doc)], run=False) == []
    # lines out of order, a line that is not in the file, a file that does not exist
    doc.write_text("```python\n# file: projects/avsd_dialogue/avsd_plugin/model.py\n"
                   "    def forward(self, samples: dict) -> dict:\nclass GPTDialogue(BaseModel):\n```\n")
    assert "line not found" in check_docs.check([str(doc)], run=False)[0]
    doc.write_text("```yaml\n# file: nowhere/x.yaml\na: 1\n```\n")
    assert "does not exist" in check_docs.check([str(doc)], run=False)[0]
    doc.write_text("```bash\ntest -n \"$OUT\" && touch \"$OUT/ran\"\n```\n\n```bash\nfalse\necho never\n```\n")
    failures = check_docs.check([str(doc)], run=True, scratch=str(tmp_path))
    assert len(failures) == 1 and "exit 1" in failures[0]
    assert len(glob.glob(str(tmp_path / "doc_*" / "ran"))) == 1  # $OUT is a scratch dir, blocks run in order


@pytest.mark.slow
@pytest.mark.parametrize("tutorial", TUTORIALS, ids=lambda p: os.path.basename(p))
def test_tutorial_commands_run(tutorial, tmp_path):
    assert check_docs.check([tutorial], run=True, timeout=600, scratch=str(tmp_path)) == []
