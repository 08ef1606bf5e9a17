"""The README stays true: its configuration reference is the settings model's."""

from pathlib import Path

from ferry.settings import reference_table

README = Path(__file__).resolve().parent.parent / "README.md"


def test_configuration_reference_matches_the_settings_model() -> None:
    text = README.read_text()
    documented = text.split("<!-- settings:begin -->\n", 1)[1].split("\n<!-- settings:end -->", 1)[0]
    assert documented == reference_table(), "regenerate the README's table from ferry.settings.reference_table()"
