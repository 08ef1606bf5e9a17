"""The README stays true: its configuration reference is the settings model's, its test command CI's."""

from pathlib import Path

from ferry.settings import reference_table

README = Path(__file__).resolve().parent.parent / "README.md"


def test_configuration_reference_matches_the_settings_model() -> None:
    text = README.read_text()
    documented = text.split("<!-- settings:begin -->\n", 1)[1].split("\n<!-- settings:end -->", 1)[0]
    assert documented == reference_table(), "regenerate the README's table from ferry.settings.reference_table()"


TEST_COMMAND = "pip install -c constraints.txt -e '.[test]' && python3 -m pytest"


def test_ci_runs_the_readmes_test_command_in_a_fresh_virtualenv() -> None:
    """What the README tells a newcomer to run is what CI runs, from the same pinned set."""
    assert TEST_COMMAND in README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    assert "python3 -m venv" in ci and 'rm -rf "$venv"' in ci
    assert "-c constraints.txt -e '.[test]'" in ci and "python -m pytest" in ci
