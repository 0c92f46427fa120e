"""The official JSON-Schema-Test-Suite (draft 2020-12) through the validator ingestd builds.

This documents the measured library choice (DESIGN.md: jsonschema-rs passed 98.9%).
Cases whose schema needs a remote document (``http://localhost:1234/...``, served by
the suite's own web server) cannot be resolved offline and are skipped; the registry
compiles schemas offline on purpose.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared.schema_rules import _validator

# vendored into the repository (origin and version: its README.md)
SUITE = Path(__file__).resolve().parent.parent / "data" / "json-schema-test-suite"
REMOTE = "localhost:1234"
MIN_PASS_RATE = 0.97


def _cases() -> list[tuple[str, str, Any, list[dict[str, Any]]]]:
    out = []
    for path in sorted(SUITE.glob("*.json")):
        for group in json.loads(path.read_text()):
            if REMOTE in json.dumps(group["schema"]):
                continue
            out.append((path.name, group["description"], group["schema"], group["tests"]))
    return out


def test_draft_2020_12_pass_rate() -> None:
    if not SUITE.is_dir():
        pytest.skip(f"the vendored JSON-Schema-Test-Suite is missing: no folder {SUITE}")
    groups = _cases()
    assert len(groups) > 300, f"test suite incomplete under {SUITE}"
    passed = total = 0
    failures: list[str] = []
    for file, desc, schema, tests in groups:
        try:
            validator = _validator(schema)
        except Exception as e:  # a schema the library cannot compile fails all its cases
            total += len(tests)
            failures.append(f"{file}: {desc}: does not compile: {str(e).splitlines()[0]}")
            continue
        for t in tests:
            total += 1
            if validator.is_valid(t["data"]) == t["valid"]:
                passed += 1
            else:
                failures.append(f"{file}: {desc}: {t['description']}")
    rate = passed / total
    # ingestd asserts "format" (validate_formats=True); the suite's format.json expects
    # format to be an annotation only, so those cases fail by design
    by_design = sum(f.startswith("format.json:") for f in failures)
    print(
        f"\nJSON-Schema-Test-Suite draft2020-12: {passed}/{total} passed ({rate:.1%}); "
        f"{by_design} of {len(failures)} failures are format assertions (on by design)"
    )
    for f in failures:
        print("  FAIL", f)
    assert rate >= MIN_PASS_RATE, f"pass rate {rate:.1%} < {MIN_PASS_RATE:.0%}"
