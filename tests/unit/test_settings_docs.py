"""docs/running.md's option table says what nodedb.config.SETTINGS, the one table the
``twistd nodedb`` options and NodeConfig come from, says: the same options in the same order,
their arguments, short forms and defaults."""

import re
from pathlib import Path

from nodedb.config import SETTINGS

RUNNING = Path(__file__).resolve().parents[2] / "docs" / "running.md"
#: ``| `--option ARG`, `-x` | default | meaning |``
ROW = re.compile(r"^\| `--([a-z-]+)(?: ([A-Z:]+))?`(?:, `-([a-z])(?: [A-Z]+)?`)? \| ([^|]*) \|", re.M)


def documented():
    page = RUNNING.read_text(encoding="utf-8")
    section = page[page.index("## Options") : page.index("\n## ", page.index("## Options") + 1)]
    return {option: (metavar or "", short, default.strip()) for option, metavar, short, default in ROW.findall(section)}


def shown(setting):
    """How the table shows a setting's default (None when any wording will do)."""
    if setting.flag:
        return "off"
    if setting.repeated:
        return "none"
    if setting.option == "data":
        return "(required)"
    if setting.default is None:
        return None
    if isinstance(setting.default, str):
        return f"`{setting.default}`"
    if isinstance(setting.default, float):
        return f"{setting.default:g}"
    return str(setting.default)


def test_the_table_lists_every_option_in_order():
    assert list(documented()) == [s.option for s in SETTINGS.values()]


def test_each_row_names_the_argument_and_short_form():
    rows = documented()
    for s in SETTINGS.values():
        metavar, short, _default = rows[s.option]
        assert metavar == s.metavar, s.option
        assert short == (s.short or ""), s.option


def test_each_row_gives_the_default():
    rows = documented()
    for s in SETTINGS.values():
        expected = shown(s)
        _metavar, _short, default = rows[s.option]
        if expected is None:
            assert not re.match(r"[\d`]", default), f"--{s.option} has no default value: {default!r}"
        else:
            # A row may add a readable form: "1048576 (1 MiB)".
            assert default == expected or default.startswith(expected + " ("), (s.option, default, expected)

