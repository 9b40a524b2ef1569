"""The sweep file shown in README.md is valid."""
import re
from pathlib import Path

from carvelab.search_space.sweep_loading import load_sweep
from carvelab.search_space.yaml_io import parse_yaml_text


def test_readme_sweep_example_loads():
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = re.search(r"## A sweep file\n\n```yaml\n(.*?)```", text, re.S).group(1)
    spec = load_sweep(parse_yaml_text(block))
    assert {p.name for p in spec.params} >= {"erase_axis", "content_gate", "write_gate", "hybrid_ratio",
                                            "chunk_size", "covariance"}
