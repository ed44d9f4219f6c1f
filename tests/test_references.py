"""Finding the source files and lines a log points to."""

from __future__ import annotations

from bot.core.references import file_references, relative_path


def test_common_reference_shapes() -> None:
    lines = [
        "src/app/main.py:42: AssertionError",
        '  File "/home/runner/work/shop/shop/shop/cart.py", line 17, in total',
        "/home/travis/build/org/repo/lib/x.rb:9:in `call'",
        "at com.acme.Foo.bar(Foo.java:88)",
        "main.c:12:5: error: 'foo' undeclared",
    ]
    assert file_references(lines) == [
        ("src/app/main.py", 42),
        ("shop/cart.py", 17),
        ("lib/x.rb", 9),
        ("Foo.java", 88),
        ("main.c", 12),
    ]


def test_urls_versions_and_vendored_code_are_not_references() -> None:
    lines = [
        "GET https://example.com:443/x failed",
        "installing numpy 1.26.4:1",
        "/usr/lib/python3/site-packages/pkg/mod.py:10: Warning",
        "node_modules/lib/index.js:3 TypeError",
    ]
    assert file_references(lines) == []


def test_references_are_distinct_and_limited() -> None:
    lines = [f"a.py:{n}: E" for n in range(50)] + ["a.py:1: again"]
    refs = file_references(lines, limit=5)
    assert len(refs) == 5 and len(set(refs)) == 5


def test_relative_path_strips_runner_checkouts() -> None:
    assert relative_path("/home/runner/work/repo/repo/src/x.py") == "src/x.py"
    assert relative_path("./src/x.py") == "src/x.py"
