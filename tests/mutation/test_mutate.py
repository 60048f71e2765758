"""The mutation tool itself: which mutants it makes, that each one compiles, and that it skips what it promises."""

from __future__ import annotations

import ast
from pathlib import Path

from mutation.mutate import TARGETS, find_mutants

SOURCE = '''\
def f(a, b, c=2):
    """Docstring 3 is left alone."""
    if not a < b and a in c:
        return max(a, b - 1) * 2.5
    return g(a, b, strict=True) % -c
'''


def test_one_mutant_per_operator_site_in_source_order():
    assert [(m.line, m.what) for m in find_mutants(SOURCE)] == [
        (1, "2 -> 3"),
        (3, "And -> Or"), (3, "Not removed"), (3, "Lt -> LtE"), (3, "In -> NotIn"),
        (4, "Mult -> Div"), (4, "max -> min"), (4, "Sub -> Add"), (4, "1 -> 2"), (4, "2.5 -> 3.5"),
        (5, "Mod -> FloorDiv"), (5, "first two arguments swapped"), (5, "USub removed"),
    ]


def test_every_mutant_is_valid_python_that_differs_only_where_it_says():
    original = ast.dump(ast.parse(SOURCE))
    for m in find_mutants(SOURCE):
        assert ast.dump(ast.parse(m.source)) != original
        changed = [i + 1 for i, (x, y) in enumerate(zip(SOURCE.splitlines(), m.source.splitlines(), strict=True))
                   if x != y]
        assert changed == [m.line], m.what


def test_functions_limit_the_mutants_to_those_functions():
    source = "def a():\n    return 1\n\n\ndef b():\n    return 2\n"
    assert [m.line for m in find_mutants(source, ("b",))] == [6]


def test_every_target_names_a_module_and_tests_that_exist():
    root = Path(__file__).resolve().parents[2]
    for target in TARGETS.values():
        assert (root / target.source).is_file()
        assert all((root / t.partition("::")[0]).exists() for t in target.tests if t.startswith("tests/"))
