"""The README's Python examples run as written."""
import re

from conftest import ROOT

from mmu_model.eras import ERAS


def test_readme_python_blocks_run():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 2
    before = set(ERAS)
    try:
        for block in blocks:
            exec(compile(block, "README.md", "exec"), {})
        assert "v6.18~no-unload" in ERAS
    finally:
        for name in set(ERAS) - before:
            del ERAS[name]
