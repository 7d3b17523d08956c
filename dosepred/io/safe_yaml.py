"""YAML from users (configs, ROI name tables, plan objectives): safe tags only, and no aliases.

An alias (``*name``) repeats its anchor's node: nine nested levels of ten are a billion copies from a few hundred
bytes ("billion laughs"), which any later copy, comparison or error message expands. No file of ours needs one.
"""

from __future__ import annotations

import yaml


class _NoAliases(yaml.SafeLoader):
    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed", mark)
        return super().compose_node(parent, index)


def load(text: str) -> object:
    """Parse YAML (or JSON) text; raises ``yaml.YAMLError`` on bad syntax, unsafe tags or aliases."""
    return yaml.load(text, Loader=_NoAliases)  # noqa: S506 - a SafeLoader
