"""YAML as the generated files are written: headed by what made them, no anchors."""

from __future__ import annotations

from typing import Any

import yaml


class _Dumper(yaml.SafeDumper):
    """Writes a mapping used twice out twice: anchors and aliases would puzzle a reader."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def yaml_text(documents: list[Any], header: str) -> str:
    """`documents` as one YAML stream, after `header` (comment lines, each starting with #)."""
    body = yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=200)
    return header.rstrip("\n") + "\n" + body
