"""The code, the design page and the OpenAPI document agree on the error codes (``kvstore/errors.py``).

The replica's modules are read as source: every error code they can answer
with (a ``(status, "code", ...)`` call, a ``code = "..."`` attribute, an
``{"error": "..."}`` body, a stream refusal of ``protocol``) must be in the
one list, and every code in the list must still be answered somewhere.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import kvstore
from kvstore import errors, routing
from kvstore.replication import protocol, versions

PACKAGE = Path(kvstore.__file__).resolve().parent
DESIGN = PACKAGE.parent / "docs" / "design.md"
OPENAPI = PACKAGE / "openapi.json"
# The local StatefulSet and the chaos tool are tools around the replica, with their own messages.
TOOLS = ("local", "chaos")
ERROR_CALLS = {"ApiError", "error_response"}
# Calls whose code is a variable, and where its values come from.
PASSED_ON = {
    ("api.py", "exc.code"): set(),  # unavailable(): a NoPrimary subclass's ``code`` (found as such)
    ("routing.py", "exc.code"): set(),  # an ApiError rendered (found where it is raised)
    ("routing.py", "code"): {*routing.AIOHTTP_CODES.values(), routing.AIOHTTP_OTHER},  # aiohttp's refusals
    ("replication/log_server.py", "code"): set(protocol.REFUSALS),  # a stream refusal
    ("server.py", "REFUSAL"): {versions.REFUSAL},
    ("watch.py", "code"): set(),  # _reread(): found where it is called  # the peer guard's refusal of a peer protocol version
}


def replica_modules() -> list[Path]:
    return [path for path in sorted(PACKAGE.rglob("*.py"))
            if path.relative_to(PACKAGE).parts[0] not in TOOLS]


def _name(func: ast.expr) -> str:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def codes_in_source(source: str, where: str) -> tuple[set[str], set[tuple[str, str]]]:
    """(error codes found, calls that pass a code on from a variable) in one module's source."""
    found: set[str] = set()
    passed_on: set[tuple[str, str]] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and len(node.args) >= 2:
            status = node.args[0]
            is_error_call = _name(node.func) in ERROR_CALLS or (
                isinstance(status, ast.Constant) and isinstance(status.value, int) and 400 <= status.value <= 599)
            if not is_error_call:
                continue
            code = node.args[1]
            if isinstance(code, ast.Constant) and isinstance(code.value, str):
                found.add(code.value)
            elif isinstance(code, ast.Attribute) and isinstance(code.value, ast.Name) and code.value.id == "protocol":
                found.add(getattr(protocol, code.attr))
            else:
                passed_on.add((where, ast.unparse(code)))
        elif isinstance(node, ast.ClassDef):  # ``code = "no_primary"``: an exception's code
            for statement in node.body:
                if (isinstance(statement, ast.Assign) and any(_name(t) == "code" for t in statement.targets)
                        and isinstance(statement.value, ast.Constant)):
                    found.add(statement.value.value)
        elif isinstance(node, ast.Dict):  # an error body built by hand: {"error": "promise_refused", ...}
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == "error" and isinstance(value, ast.Constant):
                    found.add(value.value)
    return found, passed_on


def codes_in_the_package() -> tuple[set[str], set[tuple[str, str]]]:
    found: set[str] = set()
    passed_on: set[tuple[str, str]] = set()
    for path in replica_modules():
        codes, passed = codes_in_source(path.read_text(), path.relative_to(PACKAGE).as_posix())
        found |= codes
        passed_on |= passed
    for site in passed_on & PASSED_ON.keys():
        found |= PASSED_ON[site]
    return found, passed_on


def test_every_code_the_replica_answers_is_in_the_one_list_and_no_other() -> None:
    found, passed_on = codes_in_the_package()
    assert passed_on == PASSED_ON.keys(), ("a call passes an error code on from a variable: collect where its "
                                    f"values come from in this test: {sorted(passed_on - PASSED_ON.keys())}")
    assert found - errors.CODES == set(), "answered but not in kvstore/errors.py: add them there"
    assert errors.CODES - found == set(), "in kvstore/errors.py but answered nowhere: remove them"
    assert len(errors.CODES) == len(errors.ERRORS), "a code is listed twice"


def test_the_scan_finds_a_new_code() -> None:
    source = '''
raise ApiError(400, "brand_new", "x")
error_response(409, "also_new", "y")
self._refuse(503, protocol.RECOVERING, "z")
class Refusal(Exception):
    code = "as_attribute"
body = {"error": "by_hand", "message": "m"}
ApiError(503, exc.code, "passed on")
'''
    found, passed_on = codes_in_source(source, "m.py")
    assert found == {"brand_new", "also_new", "recovering", "as_attribute", "by_hand"}
    assert passed_on == {("m.py", "exc.code")}


def test_the_design_page_holds_the_generated_table() -> None:
    text = DESIGN.read_text()
    begin = text.index("<!-- error codes: begin")
    begin = text.index("\n", begin) + 1
    end = text.index("<!-- error codes: end -->")
    assert text[begin:end] == errors.markdown_table(), (
        "docs/design.md's error table differs from kvstore/errors.py: replace it with the output of "
        "`.venv/bin/python -m kvstore.errors`")
    documented = set(re.findall(r"^\| [0-9x]+ \| `([a-z_]+)` \|", text[begin:end], re.MULTILINE))
    assert documented == errors.CODES


def test_the_openapi_document_lists_the_client_ports_codes() -> None:
    document = json.loads(OPENAPI.read_text())
    enum = document["components"]["schemas"]["Error"]["properties"]["error"]["enum"]
    assert enum == errors.client_codes(), (
        "kvstore/openapi.json's Error.error enum differs from the client port's codes in kvstore/errors.py")
