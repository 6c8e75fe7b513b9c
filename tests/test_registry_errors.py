"""Registration mistakes a contributor can make, each planted and answered with one line.

Method files: an argument that is no literal, an unknown task or family, a bare decorator, a name
that is no file name, one name in two files: ``discover`` (``--list``, every run) fails with a
:class:`registry.RegistrationError` naming the file and line. Plugins (a distribution in a temporary
folder on ``sys.path``, with an ``entry_points.txt``): one that fails to import, names a class
without the decorator, or whose key differs from the decorator's name is skipped and listed by
``broken_plugins()``; a run naming its method fails naming the distribution. Every method has a
provenance for its records, and ``env.collect`` lists the plugin distributions that loaded.
"""
from __future__ import annotations

import hashlib
import json
import sys
import textwrap
from pathlib import Path

import pytest

from benchmarks import registry
from benchmarks.execution import env
from benchmarks.registry import RegistrationError, UnknownName

GOOD = '''
from benchmarks.registry import register_method


@register_method("{name}", tasks=("ctr",), family="reference")
class Good:
    def __init__(self, config, ctx):
        pass
'''


def one_line_error(roots: dict[str, Path]) -> str:
    """The message of the RegistrationError that ``discover(roots)`` raises, checked to be one line."""
    with pytest.raises(RegistrationError) as caught:
        registry.discover(roots)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, UnknownName)  # the CLI: exit 2
    message = str(caught.value)
    assert "\n" not in message
    return message


def method_file(tmp_path: Path, source: str, name: str = "contributed.py") -> dict[str, Path]:
    folder = tmp_path / "methods"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(textwrap.dedent(source).lstrip())
    return {"methods": folder}


# --------------------------------------------------------------------------------------- method files

def test_a_non_literal_argument_names_the_file_and_line(tmp_path):
    roots = method_file(tmp_path, '''
        from benchmarks.registry import register_method
        TASKS = ("ctr",)

        @register_method("contributed", tasks=TASKS, family="reference")
        class Contributed:
            pass
        ''')
    message = one_line_error(roots)
    assert message.startswith(f"{tmp_path / 'methods' / 'contributed.py'}:4: register_method's tasks must be a literal")
    assert message.endswith("got TASKS")
    assert "malformed node" not in message


def test_a_non_literal_on_a_continuation_line_names_that_line(tmp_path):
    roots = method_file(tmp_path, '''
        from benchmarks.registry import register_method

        @register_method(
            "contributed",
            tasks=("ctr",),
            family=FAMILY,
        )
        class Contributed:
            pass
        ''')
    assert one_line_error(roots).startswith(f"{tmp_path / 'methods' / 'contributed.py'}:6: register_method's family")


@pytest.mark.parametrize("arguments, expected", [
    ('tasks=("ctr", "next-item"), family="reference"', "unknown task 'next-item'; allowed tasks: ctr, next_item"),
    ('tasks="ctr", family="reference"', "tasks= must be a non-empty tuple from ctr, next_item; got 'ctr'"),
    ('tasks=("ctr",), family="baseline"', "unknown family 'baseline'; allowed families: reference, conventional, llm"),
    ('tasks=("ctr",), family="reference", trains="no"', "trains= must be True or False, got 'no'"),
    ('tasks=("ctr",)', "register_method('contributed') lacks family="),
])
def test_an_unknown_task_or_family_fails_discovery_naming_the_allowed_values(tmp_path, arguments, expected):
    roots = method_file(tmp_path, f'''
        from benchmarks.registry import register_method


        @register_method("contributed", {arguments})
        class Contributed:
            pass
        ''')
    assert one_line_error(roots) == f"{tmp_path / 'methods' / 'contributed.py'}:4: " + (
        expected if expected.startswith("register_method(") else f"register_method('contributed'): {expected}")


def test_a_bare_decorator_and_an_unknown_keyword_are_errors(tmp_path):
    roots = method_file(tmp_path, '''
        from benchmarks.registry import register_method

        @register_method
        class Contributed:
            pass
        ''')
    assert "contributed.py:3: @register_method needs arguments" in one_line_error(roots)
    roots = method_file(tmp_path, '''
        from benchmarks.registry import register_method

        @register_method("contributed", tasks=("ctr",), family="reference", task="ctr")
        class Contributed:
            pass
        ''')
    assert "contributed.py:3: register_method takes one name and the keywords tasks=, family=, trains=" \
        in one_line_error(roots)


def test_a_name_that_is_no_file_name_is_refused(tmp_path):
    roots = method_file(tmp_path, GOOD.format(name="../escape"))
    assert "contributed.py:4: register_method name '../escape' must match" in one_line_error(roots)


def test_one_name_in_two_files_names_both(tmp_path):
    method_file(tmp_path, GOOD.format(name="twice"), "first.py")
    roots = method_file(tmp_path, GOOD.format(name="twice"), "second.py")
    folder = tmp_path / "methods"
    assert one_line_error(roots) == (f"method name 'twice' is registered twice "
                                     f"({folder / 'first.py'} and {folder / 'second.py'})")


def test_a_syntax_error_names_the_file_and_line(tmp_path):
    roots = method_file(tmp_path, "class Broken(:\n    pass\n")
    assert one_line_error(roots).startswith(f"{tmp_path / 'methods' / 'contributed.py'}:1: not valid Python")


def test_list_exits_2_with_the_one_line_relative_to_the_repository(tmp_path, monkeypatch, capsys):
    from benchmarks import run

    method_file(tmp_path, GOOD.replace('family="reference"', 'family="baseline"').format(name="contributed"))
    monkeypatch.setattr(registry, "ROOT", tmp_path)  # a checkout whose methods/ holds the mistake
    assert run.main(["--list"]) == 2
    assert capsys.readouterr().err == ("error: methods/contributed.py:4: register_method('contributed'): unknown "
                                       "family 'baseline'; allowed families: reference, conventional, llm\n")


def test_the_decorator_itself_refuses_an_unknown_task():
    with pytest.raises(RegistrationError, match=r"unknown task 'next-item'; allowed tasks: ctr, next_item"):
        @registry.register_method("decorated-badly", tasks=("next-item",), family="reference")
        class DecoratedBadly:
            pass


def test_the_shipped_method_files_register_correctly():
    found = registry.discover()
    assert "pop" in found and all(e.source is not None and e.plugin is None for e in found.values())


# -------------------------------------------------------------------------------------------- plugins

@pytest.fixture
def install(tmp_path, monkeypatch):
    """``install(dist, source, entry_points)``: a distribution with one module ``dist``, importable
    from a folder put on ``sys.path`` for this test only."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    installed = []

    def make(dist: str, source: str, entry_points: dict[str, str]) -> None:
        (site / f"{dist}.py").write_text(textwrap.dedent(source))
        info = site / f"{dist}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n")
        (info / "entry_points.txt").write_text(
            "[llmrec_bench.methods]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
        installed.append(dist)

    yield make
    for dist in installed:
        sys.modules.pop(dist, None)


@pytest.fixture
def no_methods(tmp_path) -> dict[str, Path]:
    """Roots with no in-tree method files, so that only the plugins count."""
    (tmp_path / "empty").mkdir()
    return {"methods": tmp_path / "empty"}


def test_a_plugin_that_fails_to_import_is_reported_and_skipped(install, no_methods, caplog):
    install("llmrec_t_good", GOOD.format(name="t-good"), {"t-good": "llmrec_t_good:Good"})
    install("llmrec_t_broken", "import llmrec_t_not_installed\n", {"t-broken": "llmrec_t_broken:Broken"})
    line = ("plugin llmrec_t_broken 0.0.1 (entry point 't-broken = llmrec_t_broken:Broken'): failed to import "
            "(ModuleNotFoundError: No module named 'llmrec_t_not_installed')")
    with caplog.at_level("WARNING", logger="benchmarks.registry"):
        assert set(registry.discover(no_methods)) == {"t-good"}  # the other plugin still loads
    assert [r.getMessage() for r in caplog.records] == [f"warning: {line}; skipped"]
    assert registry.broken_plugins(no_methods) == [line]
    with pytest.raises(UnknownName) as caught:  # a run that names it: the CLI's one line, exit 2
        registry.get_entry("t-broken")
    assert str(caught.value) == f"method 't-broken' is unavailable: {line}"


def test_a_plugin_whose_class_lacks_the_decorator_is_an_error(install, no_methods):
    install("llmrec_t_plain", '''
        from benchmarks.registry import register_method

        class Plain:
            pass

        @register_method("t-base", tasks=("ctr",), family="reference")
        class Base:
            pass

        class Inherits(Base):  # a decorated base's names are not the subclass's registration
            pass
        ''', {"t-plain": "llmrec_t_plain:Plain", "t-inherits": "llmrec_t_plain:Inherits"})
    assert registry.discover(no_methods) == {}
    assert registry.broken_plugins(no_methods) == [
        "plugin llmrec_t_plain 0.0.1 (entry point 't-inherits = llmrec_t_plain:Inherits'): "
        "llmrec_t_plain:Inherits is not decorated with @register_method",
        "plugin llmrec_t_plain 0.0.1 (entry point 't-plain = llmrec_t_plain:Plain'): "
        "llmrec_t_plain:Plain is not decorated with @register_method"]
    with pytest.raises(UnknownName, match=r"^method 't-plain' is unavailable: plugin llmrec_t_plain 0\.0\.1"):
        registry.get_entry("t-plain")


def test_a_plugin_key_that_differs_from_the_decorator_name_is_an_error(install, no_methods):
    install("llmrec_t_key", GOOD.format(name="t-decorated"), {"t-key": "llmrec_t_key:Good"})
    assert registry.discover(no_methods) == {}  # neither the key nor the decorator's name
    assert registry.broken_plugins(no_methods) == [
        "plugin llmrec_t_key 0.0.1 (entry point 't-key = llmrec_t_key:Good'): the key 't-key' differs from "
        "the name the decorator registers (t-decorated); the key must be that name"]


def test_a_plugin_cannot_take_an_in_tree_name(install):
    install("llmrec_t_clash", GOOD.format(name="pop"), {"pop": "llmrec_t_clash:Good"})
    found = registry.discover()
    assert found["pop"].target == "baselines.popularity:Popularity"
    assert registry.broken_plugins() == ["plugin llmrec_t_clash 0.0.1 (entry point 'pop = llmrec_t_clash:Good'): "
                                         "method name 'pop' is already registered by baselines/popularity.py"]


# ----------------------------------------------------------------------------------------- provenance

def test_an_in_tree_method_names_its_file_and_hash():
    source = registry.provenance(registry.get_entry("pop"))
    path = registry.ROOT / "baselines" / "popularity.py"
    assert source == {"kind": "in-tree", "target": "baselines.popularity:Popularity",
                      "module": "baselines/popularity.py", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    json.dumps(source)


def test_a_plugin_method_names_its_distribution_and_the_run_lists_it(install, tmp_path):
    install("llmrec_t_prov", GOOD.format(name="t-prov"), {"t-prov": "llmrec_t_prov:Good"})
    source = registry.provenance(registry.get_entry("t-prov"))
    module = tmp_path / "site" / "llmrec_t_prov.py"
    assert source == {"kind": "plugin", "target": "llmrec_t_prov:Good", "distribution": "llmrec_t_prov",
                      "version": "0.0.1", "entry_point": "t-prov = llmrec_t_prov:Good",
                      "sha256": hashlib.sha256(module.read_bytes()).hexdigest()}
    install("llmrec_t_gone", "raise RuntimeError('boom')\n", {"t-gone": "llmrec_t_gone:Gone"})
    facts = json.loads(json.dumps(env.collect("cpu")))
    assert facts["plugins"] == [{"name": "llmrec_t_prov", "version": "0.0.1"}]
    assert facts["plugin_problems"] == ["plugin llmrec_t_gone 0.0.1 (entry point 't-gone = llmrec_t_gone:Gone'): "
                                        "failed to import (RuntimeError: boom)"]
