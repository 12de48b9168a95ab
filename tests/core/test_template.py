"""Tests of the sans-IO header-value templates (meshgate.core.template)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshgate.core.template import ROOTS, Template, TemplateError, compile_template

KNOWN = (
    "(known: request_id, remote_addr, route, method, path, host, scheme, "
    "param.*, header.*, query.*, jwt.*)"
)

REQUEST: dict[tuple[str, str], str] = {
    ("request_id", ""): "r-1",
    ("remote_addr", ""): "10.0.0.7",
    ("route", ""): "users",
    ("method", ""): "GET",
    ("path", ""): "/users/7",
    ("host", ""): "api.example.com",
    ("scheme", ""): "https",
    ("param", "id"): "7",
    ("header", "x-user"): "alice",
    ("query", "page"): "2",
    ("jwt", "sub"): "u-42",
    ("jwt", "org.id"): "o-1",
}


def resolve(root: str, key: str) -> str | None:
    return REQUEST.get((root, key))


# --------------------------------------------------------------------------- rendering


@pytest.mark.parametrize(
    ("text", "variables", "rendered"),
    [
        ("${request_id}", [("request_id", "")], "r-1"),
        ("${remote_addr}", [("remote_addr", "")], "10.0.0.7"),
        ("${route}", [("route", "")], "users"),
        (
            "${method} ${scheme}://${host}${path}",
            [("method", ""), ("scheme", ""), ("host", ""), ("path", "")],
            "GET https://api.example.com/users/7",
        ),
        ("id=${param.id};", [("param", "id")], "id=7;"),
        ("${header.X-User}", [("header", "x-user")], "alice"),
        ("p${query.page}", [("query", "page")], "p2"),
        ("${jwt.sub}/${jwt.org.id}", [("jwt", "sub"), ("jwt", "org.id")], "u-42/o-1"),
        ("${route}${route}", [("route", ""), ("route", "")], "usersusers"),
        # unknown at request time: empty string
        ("[${param.missing}]", [("param", "missing")], "[]"),
        ("[${header.x-none}]", [("header", "x-none")], "[]"),
        # dollars
        ("$${route}", [], "${route}"),
        ("$$$${route}", [], "$${route}"),
        ("$$${route}", [("route", "")], "$users"),
        ("cost: $5", [], "cost: $5"),
        ("$", [], "$"),
        ("a$", [], "a$"),
        ("$}", [], "$}"),
        ("${route}$", [("route", "")], "users$"),
        ("}{", [], "}{"),
    ],
)
def test_render(text: str, variables: list[tuple[str, str]], rendered: str) -> None:
    t = compile_template(text)
    assert t.text == text
    assert list(t.variables) == variables
    assert t.render(resolve) == rendered
    assert t.constant == (rendered if not variables else None)


def test_constant_template_needs_no_resolver() -> None:
    def never(root: str, key: str) -> str | None:
        raise AssertionError("a constant template resolved a variable")

    t = compile_template("static $$ value")
    assert t.constant == "static $ value"
    assert t.variables == ()
    assert t.render(never) == "static $ value"


def test_empty_template() -> None:
    t = compile_template("")
    assert t.constant == ""
    assert t.render(resolve) == ""


def test_render_strips_line_breaks_and_nul_from_values() -> None:
    values = {("header", "x-user"): "a\r\nx-admin: 1\n\0b", ("route", ""): "\r\n"}
    t = compile_template("u=${header.x-user};r=${route}")
    assert t.render(lambda r, k: values.get((r, k))) == "u=ax-admin: 1b;r="


def test_render_keeps_other_characters() -> None:
    t = compile_template("${query.q}")
    value = "tab\there é ${route} $$ \x7f"
    assert t.render(lambda r, k: value) == value


def test_render_resolves_each_reference_in_order() -> None:
    asked: list[tuple[str, str]] = []

    def recording(root: str, key: str) -> str:
        asked.append((root, key))
        return str(len(asked))

    t = compile_template("${jwt.sub}-${method}-${jwt.sub}")
    assert t.render(recording) == "1-2-3"
    assert asked == [("jwt", "sub"), ("method", ""), ("jwt", "sub")]


def test_repr() -> None:
    assert repr(compile_template("a${route}")) == "Template('a${route}')"
    assert isinstance(compile_template("x"), Template)


# --------------------------------------------------------------------------- compile errors


@pytest.mark.parametrize(
    ("text", "message", "offset"),
    [
        ("abc-${foo}", f"unknown variable ${{foo}} at offset 4 {KNOWN}", 4),
        ("${Route}", f"unknown variable ${{Route}} at offset 0 {KNOWN}", 0),
        ("${ route }", f"unknown variable ${{ route }} at offset 0 {KNOWN}", 0),
        ("${route.x}", f"unknown variable ${{route.x}} at offset 0 {KNOWN}", 0),
        ("${params.id}", f"unknown variable ${{params.id}} at offset 0 {KNOWN}", 0),
        ("$${x}${foo}", f"unknown variable ${{foo}} at offset 5 {KNOWN}", 5),
        ("ab${route", "unterminated '${' at offset 2: missing '}'", 2),
        ("${route}${", "unterminated '${' at offset 8: missing '}'", 8),
        ("x${}", "empty variable name ${} at offset 1", 1),
        ("${param}", "variable ${param} at offset 0 needs a name: ${param.NAME}", 0),
        ("${jwt}", "variable ${jwt} at offset 0 needs a name: ${jwt.NAME}", 0),
        ("..${param.}", "empty name in ${param.} at offset 2: write ${param.NAME}", 2),
        ("${header.}", "empty name in ${header.} at offset 0: write ${header.NAME}", 0),
        (
            "${query.a b}",
            "invalid character ' ' in ${query.a b} at offset 0: use letters, digits, '_', '.', '-'",
            0,
        ),
        (
            "${jwt.a/b}",
            "invalid character '/' in ${jwt.a/b} at offset 0: use letters, digits, '_', '.', '-'",
            0,
        ),
        (
            "${header.x:y}",
            "invalid character ':' in ${header.x:y} at offset 0: use HTTP token characters",
            0,
        ),
        (
            "a\r\nb",
            "forbidden character CR at offset 1: header values cannot contain CR, LF or NUL",
            1,
        ),
        (
            "ab\n",
            "forbidden character LF at offset 2: header values cannot contain CR, LF or NUL",
            2,
        ),
        (
            "\0",
            "forbidden character NUL at offset 0: header values cannot contain CR, LF or NUL",
            0,
        ),
        (
            "${header.a\nb}",
            "forbidden character LF at offset 10: header values cannot contain CR, LF or NUL",
            10,
        ),
    ],
)
def test_compile_errors(text: str, message: str, offset: int) -> None:
    with pytest.raises(TemplateError) as info:
        compile_template(text)
    assert str(info.value) == message
    assert info.value.offset == offset
    assert isinstance(info.value, ValueError)


def test_header_names_accept_token_characters_and_are_lower_cased() -> None:
    t = compile_template("${header.X-Forwarded_For.v2!}")
    assert t.variables == (("header", "x-forwarded_for.v2!"),)


def test_param_names_keep_case() -> None:
    assert compile_template("${param.userId}").variables == (("param", "userId"),)


# --------------------------------------------------------------------------- allowed_roots


def test_allowed_roots_restricts_variables() -> None:
    allowed = frozenset({"method", "path", "header"})
    t = compile_template("${method} ${path} ${header.x}", allowed_roots=allowed)
    assert t.render(resolve) == "GET /users/7 "
    with pytest.raises(TemplateError) as info:
        compile_template("ok ${jwt.sub}", allowed_roots=allowed)
    assert str(info.value) == (
        "variable ${jwt.sub} at offset 3 is not available here (available: header, method, path)"
    )
    assert info.value.offset == 3


def test_allowed_roots_empty_allows_only_literals() -> None:
    assert compile_template("$$x", allowed_roots=frozenset()).constant == "$x"
    with pytest.raises(TemplateError, match=r"not available here \(available: none\)"):
        compile_template("${route}", allowed_roots=frozenset())


def test_allowed_roots_checked_after_the_variable_is_known() -> None:
    with pytest.raises(TemplateError, match=r"^unknown variable \$\{foo\}"):
        compile_template("${foo}", allowed_roots=frozenset({"route"}))


def test_allowed_roots_with_an_unknown_root_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="allowed_roots: unknown roots jwts") as info:
        compile_template("x", allowed_roots=frozenset({"jwts", "route"}))
    assert not isinstance(info.value, TemplateError)
    assert compile_template("x", allowed_roots=ROOTS).constant == "x"


# --------------------------------------------------------------------------- properties

literal_text = st.text(st.characters(blacklist_characters="\r\n\0"), max_size=30)


@settings(max_examples=100)
@given(literal_text)
def test_escaped_literal_renders_to_itself(literal: str) -> None:
    t = compile_template(literal.replace("$", "$$"))
    assert t.variables == ()
    assert t.constant == literal
    assert t.render(resolve) == literal


@settings(max_examples=100)
@given(
    parts=st.lists(
        st.tuples(
            st.text(st.characters(blacklist_characters="\r\n\0$"), max_size=5),
            st.sampled_from(["${route}", "${header.x}", "${jwt.sub}", "${query.q}"]),
        ),
        max_size=4,
    ),
    value=st.text(max_size=10),
)
def test_render_never_yields_line_breaks(parts: list[tuple[str, str]], value: str) -> None:
    t = compile_template("".join(lit + ref for lit, ref in parts))
    rendered = t.render(lambda r, k: value)
    assert not any(c in rendered for c in "\r\n\0")
    clean = value.replace("\r", "").replace("\n", "").replace("\0", "")
    assert rendered == "".join(lit + clean for lit, _ in parts)


@settings(max_examples=100)
@given(
    prefix=st.text(st.characters(blacklist_characters="\r\n\0$"), max_size=20),
    name=st.from_regex(r"[a-z_]{1,10}", fullmatch=True).filter(lambda n: n not in ROOTS),
)
def test_unknown_variable_error_carries_its_offset(prefix: str, name: str) -> None:
    with pytest.raises(TemplateError) as info:
        compile_template(f"{prefix}${{{name}}}${{route}}")
    assert info.value.offset == len(prefix)
    assert str(info.value).startswith(f"unknown variable ${{{name}}} at offset {len(prefix)} ")


def test_param_star_is_the_wildcard_capture() -> None:
    template = compile_template("rest=${param.*}")
    assert template.variables == (("param", "*"),)
    assert template.render(lambda root, key: "a/b" if (root, key) == ("param", "*") else None) == (
        "rest=a/b"
    )
    with pytest.raises(TemplateError, match=r"invalid character '\*'"):
        compile_template("${query.*}")
