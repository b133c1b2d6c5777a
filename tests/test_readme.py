"""The README's test command is exactly what CI runs."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _bash_blocks(text: str) -> list[str]:
    parts = text.split("```bash\n")[1:]
    return [p.split("```", 1)[0].strip() for p in parts]


def test_readme_opens_with_the_two_commands_and_ci_runs_the_second():
    readme = (REPO / "README.md").read_text()
    demo, tests = _bash_blocks(readme)[:2]
    assert "avcurate demo" in demo and "pytest" in tests
    assert tests in (REPO / ".ci/run").read_text().splitlines()
