"""The template's own source: each piece of generated code is one file holding its
docstring, its imports and its code; a generated module only names its path."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PIECES_DIR = ROOT / "includes" / "code"
LAYOUT = (ROOT / "includes" / "layout.jinja").read_text()
PACKAGE_DIR = (
    ROOT
    / "template"
    / ("{% if layout != 'single-file' %}{{ package_name }}{% endif %}")
)
APP = ROOT / "template" / "{% if layout == 'single-file' %}app.py{% endif %}.jinja"
IMPORTS_BLOCK = re.compile(r"\{% set imports %\}\n(.*?)\{% endset %\}\n", re.DOTALL)
MANIFEST_CALL = re.compile(r'\{\{ module\("[a-z_.]*"(, docstring|, "[^"\n]*")?\) \}\}')


def pieces_in_order() -> list[str]:
    listed = re.search(r"\{% set PIECES = \[(.*?)\]", LAYOUT, re.DOTALL)
    return re.findall(r'"([a-z_]+)"', listed.group(1))


def test_every_piece_file_is_listed_once():
    pieces = pieces_in_order()
    assert len(pieces) == len(set(pieces))
    assert sorted(pieces) == sorted(
        path.name.removesuffix(".py.jinja") for path in PIECES_DIR.glob("*.py.jinja")
    )


def test_a_piece_declares_its_imports_once_and_its_code_imports_nothing():
    for path in PIECES_DIR.glob("*.py.jinja"):
        source = path.read_text()
        blocks = IMPORTS_BLOCK.findall(source)
        assert len(blocks) == 1, path.name
        code = IMPORTS_BLOCK.sub("", source)
        stray = re.findall(r"^(?:import|from) \S+", code, re.MULTILINE)
        assert stray == [], f"{path.name}: imports outside its imports block: {stray}"


def test_the_imports_block_is_written_as_python_imports():
    """The merge in layout.jinja reads `import x` and `from x import a, b` lines:
    a parenthesised or continued import would be mangled, not merged."""
    for path in PIECES_DIR.glob("*.py.jinja"):
        for line in IMPORTS_BLOCK.search(path.read_text()).group(1).splitlines():
            if not line or line.startswith("{%"):
                continue
            assert re.fullmatch(r"import [\w.]+|from \.?[\w.]+ import [\w, ]+", line), (
                f"{path.name}: {line!r}"
            )


def test_generated_modules_only_name_their_path():
    """No wrapper chains and no second list of imports: a module file under
    template/ is its `module(...)` call (app.py and `__init__.py` add the project's
    docstring)."""
    sources = [*PACKAGE_DIR.rglob("*.py.jinja"), APP]
    assert len(sources) > 10
    for path in sources:
        source = path.read_text()
        assert source.startswith(
            '{% from "includes/layout.jinja" import module with context %}\n'
        ), path
        body = source.split("\n", 1)[1]
        body = re.sub(
            r"\{% set docstring %\}.*?\{% endset %\}\n", "", body, flags=re.DOTALL
        )
        assert MANIFEST_CALL.fullmatch(body.strip()), f"{path}: {body!r}"
