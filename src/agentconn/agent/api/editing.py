"""Search/replace edits and unified diffs for the agent's ``edit-files`` endpoint (§3.6, §3.6.1).

Theory of operation: :func:`apply_edit` replaces one ``search`` text with ``replace`` in a
file's content, behaving like coder's ``fuzzyReplace`` byte for byte. Content is ``str`` decoded
from bytes with ``surrogateescape``, so every byte survives the round trip and a search can only
match whole code points, as the byte-level Go matcher effectively does on valid UTF-8.

The matcher runs up to three passes and stops at the first that finds anything:

1. exact substring (``str.count``/``str.replace``: non-overlapping, left to right, like Go's
   ``strings.Count``/``strings.Replace``);
2. a window of whole lines whose bodies are equal after trimming trailing spaces/tabs;
3. the same with all surrounding Unicode ``White_Space`` trimmed (Go ``strings.TrimSpace``).

Lines are split after every ``\\n`` and keep their ending (``\\n``, ``\\r\\n`` or none). In the line
passes endings are compared loosely: LF and CRLF interchange and a missing ending matches any.
A window found by pass 2 or 3 is rewritten by a per-line splice (:func:`_splice`): where the
caller's search and replace texts agree on a line's indentation, trailing whitespace or ending,
the file's own bytes win; where they disagree the caller asked for a change and the replacement
wins. Lines the replacement adds beyond the search translate their indentation level from the
caller's indent unit to the file's (one tab, or the GCD of the space indents).

Line-ending normalisation runs before pass 1: a multi-line replacement with one consistent
ending is "forced" to the file's dominant ending, unless search and replace each have a
consistent ending and they differ ("ending intent"), in which case only pass 1 may match.

:func:`unified_diff` renders what coder renders with ``udiff.Lines`` + ``udiff.ToUnified`` from
github.com/aymanbagabas/go-udiff (3 context lines): the same hunk grouping, ``@@`` header
conventions (a count of 1 is omitted, an empty side prints ``0,0``), ``\\ No newline at end of
file`` markers, and even the library's new-file start-line drift after joined hunks
(golang/go#81453), so headers are byte-identical. The line alignment itself comes from a Myers
diff rather than go-udiff's LCS heuristic, so a change among repeated lines may be attributed to
a different (equally short) position.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from agentconn.proto.files import FileEdit

__all__ = ["EditError", "apply_edit", "apply_edits", "unified_diff"]

# Error texts, exactly as the reference agent words them (§3.6.1).
EMPTY_SEARCH = "search string must not be empty; include the text you want to match"
NOT_FOUND = (
    "search string not found in file. Verify the search string matches the file content "
    "exactly, including whitespace and indentation"
)
NOT_FOUND_WITH_ENDINGS = (
    "search string not found in file. Verify the search string matches the file content "
    "exactly, including whitespace, indentation, and line endings"
)


def _ambiguous(count: int) -> str:
    return (
        f"search string matches {count} occurrences (expected exactly 1). Include more "
        "surrounding context to make the match unique, or set replace_all to true"
    )


class EditError(Exception):
    """One edit could not be applied; ``str(err)`` is the spec's reason text."""


# Go's unicode.IsSpace / the Unicode White_Space property, which strings.TrimSpace trims.
# Python's str.strip() would also strip U+001C..U+001F, which Go keeps.
_GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_BLANK = " \t"
_LF = "\n"
_CRLF = "\r\n"


# --------------------------------------------------------------------------- line primitives


def _split_after(text: str) -> list[str]:
    """``strings.SplitAfter(text, "\\n")``: every piece keeps its ``\\n``; ``""`` gives ``[""]``."""
    parts = text.split(_LF)
    lines = [p + _LF for p in parts[:-1]]
    lines.append(parts[-1])
    return lines


def _split_lines(text: str) -> list[str]:
    """Like :func:`_split_after` without the empty piece a final newline leaves behind."""
    lines = _split_after(text)
    if lines[-1] == "":
        lines.pop()
    return lines


def _split_ending(line: str) -> tuple[str, str]:
    if line.endswith(_CRLF):
        return line[:-2], _CRLF
    if line.endswith(_LF):
        return line[:-1], _LF
    return line, ""


def _is_newline(ending: str) -> bool:
    return ending == _LF or ending == _CRLF


def _endings_match(a: str, b: str) -> bool:
    """Matching-phase ending test: LF and CRLF interchange; a missing ending is a wildcard."""
    return a == "" or b == "" or a == b or (_is_newline(a) and _is_newline(b))


def _same_ending_class(a: str, b: str) -> bool:
    """Splice-phase ending test: both missing, or both newlines (no wildcard here)."""
    return a == b or (_is_newline(a) and _is_newline(b))


def _internal_ending(lines: Sequence[str]) -> str | None:
    """The one ending every line shares (an unterminated last line excused), else ``None``."""
    if len(lines) < 2:
        return None
    want = ""
    last = len(lines) - 1
    for i, line in enumerate(lines):
        ending = _split_ending(line)[1]
        if ending == "":
            if i == last:
                continue
            return None
        if want == "":
            want = ending
        elif ending != want:
            return None
    return want or None


def _dominant_ending(lines: Sequence[str]) -> str:
    crlf = lf = 0
    for line in lines:
        if line.endswith(_CRLF):
            crlf += 1
        elif line.endswith(_LF):
            lf += 1
    return _CRLF if crlf > lf else _LF


def _at_unterminated_eof(content_lines: Sequence[str], end: int) -> bool:
    """The window ``[..end)`` ends the file and the file has no final newline."""
    if end == 0:
        return False
    if any(line != "" for line in content_lines[end:]):
        return False
    return _split_ending(content_lines[end - 1])[1] == ""


def _line_parts(line: str) -> tuple[str, str, str, str]:
    """``(lead, body, trail, ending)``; lead and trail are spaces and tabs only."""
    text, ending = _split_ending(line)
    body = text.lstrip(_BLANK)
    lead = text[: len(text) - len(body)]
    core = body.rstrip(_BLANK)
    return lead, core, body[len(core) :], ending


def _lead(line: str) -> str:
    return _line_parts(line)[0]


def _rewrite_internal_endings(lines: Sequence[str], ending: str) -> str:
    """Join ``lines`` giving every non-last terminated line ``ending``; the last keeps its own."""
    out: list[str] = []
    last = len(lines) - 1
    for i, line in enumerate(lines):
        body, own = _split_ending(line)
        out.append(body)
        if i == last:
            out.append(own)
        elif own != "":
            out.append(ending)
    return "".join(out)


# --------------------------------------------------------------------------- indentation


def _indent_unit(lines: Sequence[str]) -> str | None:
    """One tab, or N spaces with N the GCD of the space indents; ``None`` if mixed or absent.

    Lines without a body (blank or whitespace-only) carry no indent signal and are skipped.
    """
    saw_tab = saw_space = False
    space_gcd = 0
    for line in lines:
        lead, body, _, _ = _line_parts(line)
        if lead == "" or body == "":
            continue
        if "\t" not in lead:
            saw_space = True
            space_gcd = _gcd(space_gcd, len(lead)) if space_gcd else len(lead)
        elif " " not in lead:
            saw_tab = True
        else:
            return None
    if saw_tab and saw_space:
        return None
    if saw_tab:
        return "\t"
    if space_gcd > 0:
        return " " * space_gcd
    return None


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


def _indent_level(lead: str, unit: str) -> int | None:
    """How many ``unit``s make up ``lead``, or ``None`` when it is not a clean repetition."""
    count, rest = divmod(len(lead), len(unit))
    if rest or unit * count != lead:
        return None
    return count


def _translate_indent(
    rep_lead: str, search_lead: str, file_lead: str, search_unit: str, file_unit: str
) -> str | None:
    """File-side lead for an inserted line: its depth relative to the reference line, in
    the file's unit, added to the reference line's depth in the file."""
    rep_level = _indent_level(rep_lead, search_unit)
    search_base = _indent_level(search_lead, search_unit)
    file_base = _indent_level(file_lead, file_unit)
    if rep_level is None or search_base is None or file_base is None:
        return None
    target = file_base + rep_level - search_base
    if target < 0:
        return None
    return file_unit * target


# --------------------------------------------------------------------------- splice


def _align(search_lines: Sequence[str], rep_lines: Sequence[str]) -> tuple[int, int]:
    """Common prefix and suffix (non-overlapping) of lines whose trimmed bodies are equal."""

    def key(line: str) -> str:
        return _split_ending(line)[0].strip(_GO_SPACE)

    limit = min(len(search_lines), len(rep_lines))
    prefix = 0
    while prefix < limit and key(search_lines[prefix]) == key(rep_lines[prefix]):
        prefix += 1
    suffix = 0
    while suffix < limit - prefix and key(search_lines[-1 - suffix]) == key(rep_lines[-1 - suffix]):
        suffix += 1
    return prefix, suffix


def _splice(
    matched: Sequence[str],
    search_lines: Sequence[str],
    rep_lines: Sequence[str],
    forced: str | None,
    at_eof: bool,
) -> str:
    """The replacement text for one fuzzy-matched window (``len(matched) == len(search_lines)``)."""
    prefix, suffix = _align(search_lines, rep_lines)
    # Search and replace together tell the caller's unit (a one-line search still informs it
    # through the replacement's inserted depths); the matched lines tell the file's.
    search_unit = _indent_unit([*search_lines, *rep_lines])
    file_unit = _indent_unit(matched)
    n_search, n_rep = len(search_lines), len(rep_lines)
    last = n_rep - 1
    middle = n_search - prefix - suffix
    out: list[str] = []
    for i, rep_line in enumerate(rep_lines):
        inserted = False
        if i < prefix:
            ref = i
        elif i >= n_rep - suffix:
            ref = i - (n_rep - n_search)
        elif i - prefix < middle:
            ref = i
        else:
            # An inserted line borrows from the neighbour whose scope its indent shares.
            inserted = True
            if prefix > 0 and suffix > 0:
                lead = _lead(rep_line)
                if lead != _lead(rep_lines[n_rep - suffix]) and lead == _lead(
                    rep_lines[prefix - 1]
                ):
                    ref = prefix - 1
                else:
                    ref = n_search - suffix
            elif suffix > 0:
                ref = n_search - suffix
            elif prefix > 0:
                ref = prefix - 1
            else:
                ref = min(i, n_search - 1)
        s_lead, _, s_trail, s_end = _line_parts(search_lines[ref])
        r_lead, r_body, r_trail, r_end = _line_parts(rep_line)
        c_lead, _, c_trail, c_end = _line_parts(matched[ref])

        lead, trail = r_lead, r_trail
        if r_body == "":
            pass  # a body-less line keeps its own whitespace
        elif inserted:
            lead = c_lead
            if search_unit is not None and file_unit is not None:
                translated = _translate_indent(r_lead, s_lead, c_lead, search_unit, file_unit)
                if translated is not None:
                    lead = translated
        else:
            if s_lead == r_lead:
                lead = c_lead
            if s_trail == r_trail:
                trail = c_trail

        ending = r_end
        if not inserted and _same_ending_class(s_end, r_end):
            ending = c_end
            if c_end == "" and i < last:
                ending = r_end  # only the final line may inherit an unterminated EOF
        if inserted and i == last and at_eof:
            ending = ""
        if forced is not None and (i < last or not at_eof):
            ending = forced
        if i == last and not at_eof and ending == "":
            ending = forced if forced is not None else _LF
        out.append(lead + r_body + trail + ending)
    return "".join(out)


# --------------------------------------------------------------------------- passes

_Key = tuple[str, str]


def _line_keys(lines: Sequence[str], trim: Callable[[str], str]) -> list[_Key]:
    keys: list[_Key] = []
    for line in lines:
        body, ending = _split_ending(line)
        keys.append((trim(body), ending))
    return keys


def _window_matches(content: Sequence[_Key], search: Sequence[_Key], start: int) -> bool:
    for offset, (s_body, s_end) in enumerate(search):
        c_body, c_end = content[start + offset]
        if c_body != s_body or not _endings_match(c_end, s_end):
            return False
    return True


def _find_windows(content: Sequence[_Key], search: Sequence[_Key]) -> list[int]:
    """Start indexes of non-overlapping matching windows, scanning top to bottom."""
    width = len(search)
    starts: list[int] = []
    i = 0
    while i <= len(content) - width:
        if _window_matches(content, search, i):
            starts.append(i)
            i += width
        else:
            i += 1
    return starts


def _line_pass(
    content_lines: list[str],
    search_lines: list[str],
    rep_lines: list[str],
    trim: Callable[[str], str],
    replace_all: bool,
    forced: str | None,
) -> str | None:
    """One fuzzy pass: the new content, ``None`` when nothing matched; raises if ambiguous."""
    starts = _find_windows(_line_keys(content_lines, trim), _line_keys(search_lines, trim))
    if not starts:
        return None
    if len(starts) > 1 and not replace_all:
        raise EditError(_ambiguous(len(starts)))
    width = len(search_lines)
    out: list[str] = []
    prev = 0
    for start in starts:
        end = start + width
        out.extend(content_lines[prev:start])
        at_eof = _at_unterminated_eof(content_lines, end)
        out.append(_splice(content_lines[start:end], search_lines, rep_lines, forced, at_eof))
        prev = end
    out.extend(content_lines[prev:])
    return "".join(out)


def _trim_right(body: str) -> str:
    return body.rstrip(_BLANK)


def _trim_space(body: str) -> str:
    return body.strip(_GO_SPACE)


def apply_edit(content: str, search: str, replace: str, replace_all: bool = False) -> str:
    """Apply one search/replace edit to ``content`` (§3.6.1); raises :class:`EditError`."""
    if search == "":
        raise EditError(EMPTY_SEARCH)

    content_lines = _split_after(content)
    search_lines = _split_lines(search)
    rep_lines = _split_lines(replace)

    search_ending = _internal_ending(search_lines)
    rep_ending = _internal_ending(rep_lines)
    forced = _dominant_ending(content_lines) if rep_ending is not None else None
    intent = search_ending is not None and rep_ending is not None and search_ending != rep_ending

    # Pass 1: exact substring.
    count = content.count(search)
    if count:
        if count > 1 and not replace_all:
            raise EditError(_ambiguous(count))
        exact_replace = replace
        if forced is not None and not intent and rep_ending != forced:
            exact_replace = _rewrite_internal_endings(rep_lines, forced)
        return content.replace(search, exact_replace, -1 if replace_all else 1)

    if intent:
        # The caller asked for an ending change; don't let LF/CRLF interchange bridge it.
        raise EditError(NOT_FOUND_WITH_ENDINGS)

    for trim in (_trim_right, _trim_space):
        result = _line_pass(content_lines, search_lines, rep_lines, trim, replace_all, forced)
        if result is not None:
            return result
    raise EditError(NOT_FOUND)


def apply_edits(content: str, edits: Sequence[FileEdit]) -> str:
    """Apply ``edits`` in order, each to the previous result; raises :class:`EditError`."""
    for edit in edits:
        search, replace = edit.effective()
        content = apply_edit(content, search, replace, edit.replace_all)
    return content


# --------------------------------------------------------------------------- unified diff

CONTEXT_LINES = 3
# Beyond this many differing lines the Myers search stops and the rest of the changed region
# is reported as one replacement (go-udiff similarly caps its LCS search).
_MAX_EDIT_DISTANCE = 1000


def unified_diff(path: str, old: str, new: str) -> str:
    """go-udiff's unified diff of ``old`` → ``new``, both headers labelled ``path``.

    ``""`` when the texts are equal, and also (instead of raising) on an internal failure.
    """
    if old == new:
        return ""
    try:
        old_lines = _split_lines(old) if old else []
        new_lines = _split_lines(new) if new else []
        hunks = _hunks(old_lines, new_lines, _line_changes(old_lines, new_lines))
        return _render(path, hunks)
    except Exception:  # noqa: BLE001 - a diff failure must never fail the edit
        return ""


@dataclass(slots=True)
class _Hunk:
    from_line: int
    to_line: int
    lines: list[tuple[str, str]] = field(default_factory=list)  # (" " | "-" | "+", text)


def _line_changes(a: Sequence[str], b: Sequence[str]) -> list[tuple[int, int, int, int]]:
    """Changed regions ``(a_start, a_end, b_start, b_end)`` of a line-level diff, in order."""
    # Intern lines so the inner loops compare small ints.
    ids: dict[str, int] = {}
    ia = [ids.setdefault(line, len(ids)) for line in a]
    ib = [ids.setdefault(line, len(ids)) for line in b]
    lo = 0
    while lo < len(ia) and lo < len(ib) and ia[lo] == ib[lo]:
        lo += 1
    hi_a, hi_b = len(ia), len(ib)
    while hi_a > lo and hi_b > lo and ia[hi_a - 1] == ib[hi_b - 1]:
        hi_a -= 1
        hi_b -= 1
    regions = _myers(ia[lo:hi_a], ib[lo:hi_b])
    return [(i1 + lo, i2 + lo, j1 + lo, j2 + lo) for i1, i2, j1, j2 in regions]


def _myers(a: Sequence[int], b: Sequence[int]) -> list[tuple[int, int, int, int]]:
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        return [(0, n, 0, m)] if n or m else []
    # frontier[d][k + d]: furthest x on diagonal k = x - y using d edits.
    frontier: list[list[int]] = []
    prev: list[int] = []
    found = False
    for d in range(min(n + m, _MAX_EDIT_DISTANCE) + 1):
        cur = [0] * (2 * d + 1)
        for k in range(-d, d + 1, 2):
            if d == 0:
                x = 0
            elif k == -d or (k != d and prev[k - 1 + d - 1] < prev[k + 1 + d - 1]):
                x = prev[k + 1 + d - 1]  # step down: take b[y]
            else:
                x = prev[k - 1 + d - 1] + 1  # step right: drop a[x]
            y = x - k
            while x < n and y < m and a[x] == b[y]:
                x += 1
                y += 1
            cur[k + d] = x
            if x >= n and y >= m:
                found = True
                break
        frontier.append(cur)
        prev = cur
        if found:
            break
    if not found:
        return [(0, n, 0, m)]

    # Walk back from (n, m), marking the matched (diagonal) positions of a and b.
    same_a = [False] * n
    same_b = [False] * m
    x, y = n, m
    for d in range(len(frontier) - 1, 0, -1):
        k = x - y
        back = frontier[d - 1]
        if k == -d or (k != d and back[k - 1 + d - 1] < back[k + 1 + d - 1]):
            prev_k = k + 1
        else:
            prev_k = k - 1
        px = back[prev_k + d - 1]
        py = px - prev_k
        sx, sy = (px, py + 1) if prev_k == k + 1 else (px + 1, py)
        while x > sx and y > sy:
            x -= 1
            y -= 1
            same_a[x] = same_b[y] = True
        x, y = px, py
    while x > 0 and y > 0:
        x -= 1
        y -= 1
        same_a[x] = same_b[y] = True

    # Matched positions pair up in order, so the unmatched runs between them are the regions.
    regions: list[tuple[int, int, int, int]] = []
    i = j = 0
    while i < n or j < m:
        if i < n and j < m and same_a[i] and same_b[j]:
            i += 1
            j += 1
            continue
        i1, j1 = i, j
        while i < n and not same_a[i]:
            i += 1
        while j < m and not same_b[j]:
            j += 1
        regions.append((i1, i, j1, j))
    return regions


def _hunks(
    old: Sequence[str], new: Sequence[str], changes: Sequence[tuple[int, int, int, int]]
) -> list[_Hunk]:
    """go-udiff's ``toUnified`` over line regions (with its ``toLine`` drift fixed)."""
    gap = 2 * CONTEXT_LINES
    hunks: list[_Hunk] = []
    hunk: _Hunk | None = None
    last = 0
    to_line = 0

    def add_equal(h: _Hunk, start: int, end: int) -> int:
        added = 0
        for i in range(max(start, 0), end):
            if i >= len(old):
                break
            h.lines.append((" ", old[i]))
            added += 1
        return added

    for start, end, j1, j2 in changes:
        if hunk is not None and start == last:
            pass
        elif hunk is not None and start <= last + gap:
            # Deliberate deviation: go-udiff forgets to advance to_line over these joining
            # lines (golang/go#81453), so its later hunks start too early on the new side.
            to_line += add_equal(hunk, last, start)
        else:
            if hunk is not None:
                add_equal(hunk, last, last + CONTEXT_LINES)
                hunks.append(hunk)
            to_line += start - last
            hunk = _Hunk(from_line=start + 1, to_line=to_line + 1)
            delta = add_equal(hunk, start - CONTEXT_LINES, start)
            hunk.from_line -= delta
            hunk.to_line -= delta
        last = start
        for i in range(start, end):
            hunk.lines.append(("-", old[i]))
            last += 1
        for j in range(j1, j2):
            hunk.lines.append(("+", new[j]))
            to_line += 1
    if hunk is not None:
        add_equal(hunk, last, last + CONTEXT_LINES)
        hunks.append(hunk)
    return hunks


def _range(start: int, count: int) -> str:
    if count > 1:
        return f"{start},{count}"
    if start == 1 and count == 0:
        return "0,0"  # GNU diff's spelling for an empty side
    return str(start)


def _render(path: str, hunks: Sequence[_Hunk]) -> str:
    if not hunks:
        return ""
    out = [f"--- {path}\n", f"+++ {path}\n"]
    for hunk in hunks:
        from_count = sum(1 for kind, _ in hunk.lines if kind != "+")
        to_count = sum(1 for kind, _ in hunk.lines if kind != "-")
        out.append(
            f"@@ -{_range(hunk.from_line, from_count)} +{_range(hunk.to_line, to_count)} @@\n"
        )
        for kind, text in hunk.lines:
            out.append(kind + text)
            if not text.endswith(_LF):
                out.append("\n\\ No newline at end of file\n")
    return "".join(out)
