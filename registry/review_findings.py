"""Tool-poisoning review: what in a tool definition a reviewer must look at before approving it.

A tool's name, title, description, schema texts and annotations are read by the model as
instructions. :func:`scan_definition` looks for what a poisoned definition uses (docs/security.md,
"Tool poisoning"): hidden characters (zero-width, bidirectional, Unicode tags, variation
selectors, control and ANSI sequences), text addressed to the model, references to secrets and
credential files, mentions of other servers' tools (shadowing), unusual names and unusually long
or padded text. It reports; it does not decide: a finding means a person confirms explicitly
(registry.services.tools.tool_approve). Pure functions, no database.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from governance.text_reveal import decode_tags, hidden_characters, reveal_text

HIGH, MEDIUM, LOW = "high", "medium", "low"

LABELS = {
    "hidden_characters": "Invisible characters",
    "bidi_controls": "Bidirectional controls",
    "unicode_tags": "Hidden Unicode tag text",
    "variation_selectors": "Smuggled variation selectors",
    "control_characters": "Control or terminal escape characters",
    "model_instructions": "Instructions addressed to the model",
    "credential_paths": "Credential file paths",
    "secret_references": "Mentions of secrets",
    "shadowing": "Mentions of other tools or servers",
    "unusual_name": "Unusual tool name",
    "long_text": "Unusually long text",
    "whitespace_padding": "Text pushed out of sight",
}
"""Every finding code, with the label pages show."""

CHAR_CODES = {
    "invisible": ("hidden_characters", HIGH, "invisible character"),
    "bidi": ("bidi_controls", HIGH, "bidirectional control"),
    "variation": ("variation_selectors", HIGH, "variation selector"),
    "control": ("control_characters", HIGH, "control character"),
}

MAX_DESCRIPTION = 2000
MAX_TEXT = 500  # any other text: a title, a parameter's description, a default
MAX_FINDINGS = 50  # per definition: enough to review, bounded in size

# Keys of a JSON schema whose strings are prose a model reads (the rest: names, types, formats).
PROSE_KEYS = frozenset({"description", "title", "default", "examples", "const", "enum",
                        "$comment", "x-description"})

INSTRUCTION_PATTERNS = [
    re.compile(r"<\s*/?\s*(important|system|instructions?|secret|hidden|admin|assistant|"
               r"context|critical|note\s+to\s+(?:the\s+)?(?:ai|model|assistant))\b[^>]{0,40}>",
               re.I),
    re.compile(r"\b(ignore|disregard|forget|override)\s+(?:all\s+|any\s+)?(?:of\s+)?(?:the\s+|your\s+)?"
               r"(previous|prior|above|earlier|preceding|other|system|original)\s+"
               r"(instructions?|prompts?|rules|directions|guidelines|messages)", re.I),
    re.compile(r"\b(do\s+not|don'?t|never|must\s+not)\s+(tell|inform|notify|alert|mention|reveal|"
               r"show|disclose|let)\b[^.\n]{0,40}\b(the\s+)?(user|human|operator|person)", re.I),
    re.compile(r"\bwithout\s+(telling|informing|notifying|asking|alerting|showing)\s+"
               r"(the\s+)?(user|human|operator)", re.I),
    re.compile(r"\b(the\s+)?(user|human)\s+(must|should)\s+not\s+(know|see|notice|be\s+told)",
               re.I),
    re.compile(r"\b(system\s+prompt|jailbreak|developer\s+mode|secretly|covertly)\b|"
               r"<\|im_start\|>|\[/?INST\]", re.I),
    re.compile(r"\b(before|prior\s+to)\s+(using|calling|invoking)\s+(this|any|the|other)\s+"
               r"tools?\b[^.\n]{0,60}\b(must|always|first|need\s+to)\b", re.I),
]

CREDENTIAL_PATHS = re.compile(
    r"~/\.ssh\b|\.ssh/|\bid_(rsa|dsa|ecdsa|ed25519)\b|(^|[\s/'\"`(~])\.env(\.\w+)?\b|"
    r"\.aws/(credentials|config)\b|\.netrc\b|\.npmrc\b|\.pypirc\b|\.pgpass\b|\.kube/config\b|"
    r"\.docker/config\.json|\.git-credentials\b|/etc/(passwd|shadow|sudoers)\b|"
    r"\.config/gcloud\b|\.gnupg\b|\bmcp\.json\b|claude_desktop_config|\.cursor/", re.I)

SECRET_WORDS = re.compile(
    r"\b(api[\s_-]?keys?|secret[\s_-]?keys?|private[\s_-]?keys?|access[\s_-]?tokens?|"
    r"auth(entication)?[\s_-]?tokens?|bearer\s+tokens?|session\s+(tokens?|cookies?)|"
    r"passwords?|passphrases?|credentials?|seed\s+phrases?|client[\s_-]?secrets?)\b", re.I)

PADDING = re.compile(r"(?:[ \t]*\n){8,}|[ \u00a0]{40,}|\t{10,}")
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1b[@-Z\\-_]")

# A name of printable ASCII without spaces. MCP recommends A–Z a–z 0–9 _ - . but servers use
# more ("pay/read"); what matters for review is a letter that imitates another (Cyrillic "і").
PLAIN_NAME = re.compile(r"^[\x21-\x7e]{1,128}$")
TOKEN = re.compile(r"[A-Za-z0-9_.-]+")
# A plain word ("search") counts as a mention only quoted or next to "tool"/"server".
NAMED = re.compile(r"[`'\"“‘]([\w.-]+)[`'\"”’]|\b([\w.-]+)\s+(?:tool|server)s?\b|"
                   r"\b(?:tool|server)s?\s+[`'\"“‘]?([\w.-]+)", re.I)
MIN_NAME = 3


def _finding(code: str, severity: str, where: str, message: str, excerpt: str = "") -> dict:
    return {"code": code, "severity": severity, "where": where, "message": message,
            "excerpt": excerpt}


def _excerpt(text: str, start: int, end: int, around: int = 40) -> str:
    """The text around ``[start, end)``, hidden characters as markers, at most ~160 chars."""
    left, right = max(0, start - around), min(len(text), end + around)
    piece = reveal_text(text[left:right])
    if len(piece) > 160:
        piece = piece[:157] + "…"
    return ("…" if left else "") + piece + ("…" if right < len(text) else "")


def _walk(value: Any, where: str, prose: bool) -> Iterator[tuple[str, str, bool]]:
    """``(where, text, is_prose)`` for every string in a JSON value, keys included."""
    if isinstance(value, str):
        yield where, value, prose
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                continue
            path = f"{where}.{key}"
            yield f"{path} (key)", key, False
            yield from _walk(item, path, prose or key in PROSE_KEYS)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _walk(item, f"{where}[{i}]", prose)


def definition_texts(values: Mapping[str, Any]) -> Iterator[tuple[str, str, bool]]:
    """Every text of a definition (``registry.services.tools.definition_dict``) a model reads."""
    yield "name", values.get("name") or "", False
    yield "title", values.get("title") or "", True
    yield "description", values.get("description") or "", True
    for field in ("input_schema", "output_schema"):
        yield from _walk(values.get(field), field, False)
    yield from _walk(values.get("annotations"), "annotations", True)


def _char_findings(where: str, text: str) -> list[dict]:
    found: list[dict] = []
    hidden = list(hidden_characters(text))
    tags = [i for i, kind in hidden if kind == "tag"]
    if tags:
        spelled = decode_tags("".join(text[i] for i in tags))
        found.append(_finding(
            "unicode_tags", HIGH, where,
            f"{len(tags)} invisible Unicode tag characters spelling: “{spelled[:200]}”",
            _excerpt(text, tags[0], tags[-1] + 1)))
    ansi = ANSI.search(text)
    for kind, (code, severity, noun) in CHAR_CODES.items():
        at = [i for i, k in hidden if k == kind]
        if not at:
            continue
        names = sorted({f"U+{ord(text[i]):04X}" for i in at})
        message = f"{len(at)} {noun}{'s' if len(at) > 1 else ''} ({', '.join(names[:8])})"
        if kind == "control" and ansi:
            message += "; a terminal escape sequence can rewrite what a console shows"
        found.append(_finding(code, severity, where, message, _excerpt(text, at[0], at[0] + 1)))
    return found


def _text_findings(where: str, text: str, limit: int) -> list[dict]:
    found: list[dict] = []
    matches = sorted((m for p in INSTRUCTION_PATTERNS if (m := p.search(text))),
                     key=lambda m: m.start())
    if matches:
        quotes = ", ".join(f"“{reveal_text(m.group(0))[:80]}”" for m in matches[:4])
        found.append(_finding("model_instructions", HIGH, where, f"Addresses the model: {quotes}",
                              _excerpt(text, matches[0].start(), matches[0].end())))
    for code, severity, pattern, noun in (
        ("credential_paths", HIGH, CREDENTIAL_PATHS, "a credential file"),
        ("secret_references", MEDIUM, SECRET_WORDS, "secrets"),
    ):
        if code == "secret_references" and found and found[-1]["code"] == "credential_paths":
            break  # "~/.aws/credentials" is one finding (the path), not two
        matches = list(pattern.finditer(text))
        if matches:
            words = sorted({m.group(0).strip(" /'\"`(~") for m in matches})
            found.append(_finding(code, severity, where,
                                  f"Mentions {noun}: {', '.join(words[:6])}",
                                  _excerpt(text, matches[0].start(), matches[0].end())))
    if len(text) > limit:
        found.append(_finding("long_text", MEDIUM, where,
                              f"{len(text)} characters (reviewed definitions rarely pass "
                              f"{limit}); read all of it"))
    padding = PADDING.search(text)
    if padding:
        found.append(_finding("whitespace_padding", HIGH, where,
                              "A long run of blank lines or spaces: text after it is out of "
                              "sight in most views", _excerpt(text, padding.end(),
                                                              padding.end() + 40, around=0)))
    return found


def _mentions(text: str) -> set[str]:
    """Identifier-like tokens of ``text``, and plain words that are quoted or called a tool or
    server; matched exactly against the names of the tenant's other tools and servers."""
    tokens = {t.strip(".") for t in TOKEN.findall(text)}
    named = {next(g for g in m.groups() if g) for m in NAMED.finditer(text)}
    identifiers = {t for t in tokens if re.search(r"[_.\-0-9]|[a-z][A-Z]", t)}
    return identifiers | {n.strip(".") for n in named}


def _shadowing(where: str, text: str, others: Mapping[str, str], servers: set[str]) -> list[dict]:
    mentioned = _mentions(text)
    tools = sorted(n for n in mentioned if len(n) >= MIN_NAME and n in others)
    server_names = sorted(n for n in mentioned if len(n) >= MIN_NAME and n in servers)
    if not tools and not server_names:
        return []
    parts = [f"tool {name} of server {others[name]}" for name in tools[:5]]
    parts += [f"server {name}" for name in server_names[:5]]
    first = (tools or server_names)[0]
    at = text.find(first)
    return [_finding("shadowing", HIGH if tools else MEDIUM, where,
                     f"Mentions {', '.join(parts)}: a description can steer how the model "
                     "uses another server's tools", _excerpt(text, at, at + len(first)))]


def scan_definition(
    values: Mapping[str, Any],
    *,
    other_tools: Mapping[str, str] | None = None,
    other_servers: set[str] | frozenset[str] = frozenset(),
) -> list[dict]:
    """The findings of one tool definition: ``[{code, severity, where, message, excerpt}]``,
    most severe first. ``other_tools`` maps the names of the tenant's tools on OTHER servers to
    their server's name (a server's tools naming each other is normal); ``other_servers`` are
    the names of the tenant's other servers."""
    others = dict(other_tools or {})
    servers = set(other_servers)
    found: list[dict] = []
    name = values.get("name") or ""
    if isinstance(name, str) and not PLAIN_NAME.match(name):
        found.append(_finding("unusual_name", HIGH, "name",
                              "Not a plain ASCII tool name: a look-alike letter or a space can "
                              "imitate another tool's name", reveal_text(name)[:160]))
    for where, text, prose in definition_texts(values):
        if not text:
            continue
        found += _char_findings(where, text)
        if prose:
            limit = MAX_DESCRIPTION if where == "description" else MAX_TEXT
            found += _text_findings(where, text, limit)
            found += _shadowing(where, text, others, servers)
    rank = {HIGH: 0, MEDIUM: 1, LOW: 2}
    found.sort(key=lambda f: rank[f["severity"]])  # stable: within a severity, in text order
    return found[:MAX_FINDINGS]
