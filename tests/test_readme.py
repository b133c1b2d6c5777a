"""The README's test command is exactly what CI runs."""

import re
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


DOCS = ("README.md", "avcurate/trainer/README.md", "benchmarks/README.md")


def _commands(readme: str) -> list[tuple[str, str]]:
    """Every `avcurate COMMAND ...` the README shows, with the rest of its command line: in
    inline code, and in bash blocks (continued lines joined, comments dropped)."""
    lines = [span for span in re.findall(r"`([^`\n]+)`", readme)]
    for block in _bash_blocks(readme):
        for line in block.replace("\\\n", " ").splitlines():
            lines.append(line.split(" #", 1)[0])
    found = []
    for line in lines:
        for m in re.finditer(r"(?<![\w/.-])avcurate ([a-z][a-z-]*)([^|;&`]*)", line):
            found.append((m.group(1), m.group(2)))
    return found


def test_every_command_and_option_the_readme_shows_exists():
    """A renamed option or command is renamed in the READMEs too: each flag shown after
    `avcurate COMMAND` is on that command's --help page."""
    from typer.testing import CliRunner

    from avcurate.cli import app

    shown = [c for readme in DOCS for c in _commands((REPO / readme).read_text())]
    assert len(shown) > 50  # the parse found the READMEs' commands
    pages: dict[str, str] = {}
    missing = []
    for command, rest in shown:
        if command not in pages:
            result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "3000"})
            pages[command] = result.output if result.exit_code == 0 else ""
        if not pages[command]:
            missing.append(f"avcurate {command}")
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", rest):
            if not re.search(rf"(?<![\w-]){flag}(?![\w-])", pages[command]):
                missing.append(f"avcurate {command} {flag}")
    assert not missing, sorted(set(missing))


def _toml_blocks(path: str) -> list[str]:
    parts = (REPO / path).read_text().split("```toml\n")[1:]
    return [p.split("```", 1)[0] for p in parts]


def test_the_readmes_recipe_and_training_config_are_accepted(tmp_path):
    """The README's recipe tables and the trainer README's [train] table load, with every
    stage option and training key valid (a renamed option fails here, not for a user)."""
    from avcurate.pipeline.recipe import Recipe
    from avcurate.pipeline.registry import create
    from avcurate.trainer.config import TrainConfig

    recipes = [b for b in _toml_blocks("README.md") if "[[sources]]" in b]
    assert recipes
    for k, text in enumerate(recipes):
        (tmp_path / f"r{k}.toml").write_text(text)
        recipe = Recipe.load(tmp_path / f"r{k}.toml")
        for spec in recipe.stages:
            create(spec.name, spec.options)
    configs = [b for b in _toml_blocks("avcurate/trainer/README.md") if "[train]" in b]
    assert configs
    for k, text in enumerate(configs):
        (tmp_path / f"t{k}.toml").write_text(text)
        TrainConfig.load(tmp_path / f"t{k}.toml").check()
