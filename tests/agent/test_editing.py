"""The edit-files replacement algorithm and unified diff (agent-api.md §3.6, §3.6.1).

Tables are ported from coder/coder ``agent/agentfiles/files_test.go`` and
``files_indent_internal_test.go`` (inputs and expected outputs), and from go-udiff's
``difftest`` golden cases; the rest pins the spec's wording and properties.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agentconn.agent.api import editing
from agentconn.agent.api.editing import EditError, apply_edit, apply_edits, unified_diff
from agentconn.proto.files import FileEdit

E = tuple[str, str] | tuple[str, str, bool]


def _run(content: str, edits: list[E]) -> str:
    for edit in edits:
        search, replace = edit[0], edit[1]
        replace_all = bool(edit[2]) if len(edit) > 2 else False
        content = apply_edit(content, search, replace, replace_all)
    return content


# (name, content, edits, expected)
APPLY_CASES: list[tuple[str, str, list[E], str]] = [
    # --- TestEditFiles
    ("Edit1", "foo bar", [("foo", "bar")], "bar bar"),
    ("EditEditReplaceAll", "foo bar", [("foo", "bar"), ("bar", "qux", True)], "qux qux"),
    ("Multiline", "foo\nbar\nbaz\nqux", [("bar\nbaz", "frob")], "foo\nfrob\nqux"),
    ("TrailingWhitespace", "foo   \nbar\t\t\nbaz", [("foo\nbar\nbaz", "replaced")], "replaced   "),
    (
        "TabsVsSpaces",
        "\tif true {\n\t\tfoo()\n\t}",
        [("    if true {\n        foo()\n    }", "\tif true {\n\t\tbar()\n\t}")],
        "\tif true {\n\t\tbar()\n\t}",
    ),
    (
        "DifferentIndentDepth",
        "\t\t\tdeep()\n\t\t\tnested()",
        [("\tdeep()\n\tnested()", "\t\t\tdeep()\n\t\t\tchanged()")],
        "\t\t\tdeep()\n\t\t\tchanged()",
    ),
    ("ExactMatchPreferred", "hello world", [("hello world", "goodbye world")], "goodbye world"),
    ("ReplaceAllExact", "foo bar foo baz foo", [("foo", "qux", True)], "qux bar qux baz qux"),
    (
        "ReplaceAllFuzzyTrailing",
        "hello   \nworld\nhello   \nagain",
        [("hello\n", "bye\n", True)],
        "bye   \nworld\nbye   \nagain",
    ),
    (
        "ReplaceAllFuzzyIndent",
        "\t\talpha\n\t\tbeta\n\t\talpha\n\t\tgamma",
        [("    alpha\n", "\t\tREPLACED\n", True)],
        "\t\tREPLACED\n\t\tbeta\n\t\tREPLACED\n\t\tgamma",
    ),
    (
        "MixedWhitespaceMultiline",
        "func main() {\n\tresult := compute()\n\tfmt.Println(result)\n}",
        [
            (
                "  result := compute()\n  fmt.Println(result)\n",
                "\tresult := compute()\n\tlog.Println(result)\n",
            )
        ],
        "func main() {\n\tresult := compute()\n\tlog.Println(result)\n}",
    ),
    # --- TestFuzzyReplace_EndingAndWhitespace
    ("CRLF_Content_LFSearch_Delete", "foo\r\nline\r\nbar\r\n", [("line\n", "")], "foo\r\nbar\r\n"),
    ("TrailingWhitespace_Delete", "foo\nline   \nbar\n", [("line\n", "")], "foo\nbar\n"),
    (
        "Pass1_SearchNoNewline_ExactSubstring",
        "foo\nfirst line\nbar\n",
        [("first line", "LINE")],
        "foo\nLINE\nbar\n",
    ),
    (
        "FuzzyMatchingWhitespace_FileEndingWins",
        "foo\nkey\nbar\n",
        [("key ", "KEY ")],
        "foo\nKEY\nbar\n",
    ),
    ("Pass1_LastLineNoNewline", "foo\nbar", [("bar", "BAR")], "foo\nBAR"),
    (
        "FuzzyIndent_CRLF_TwoSpaceSearch_FileTabWins",
        "foo\r\n\tline\r\nbar\r\n",
        [("  line\n", "  LINE\n")],
        "foo\r\n\tLINE\r\nbar\r\n",
    ),
    (
        "FuzzyIndent_CRLF_SevenSpaceSearch_FileTabStillWins",
        "foo\r\n\tline\r\nbar\r\n",
        [("       line\n", "       LINE\n")],
        "foo\r\n\tLINE\r\nbar\r\n",
    ),
    (
        "FuzzyIndent_CRLF_CallerRewritesIndent_ReplaceLeadingWins",
        "foo\r\n\tline\r\nbar\r\n",
        [("  line\n", "    LINE\n")],
        "foo\r\n    LINE\r\nbar\r\n",
    ),
    (
        "ReplaceAll_FuzzyMatchingWhitespace_FileEndingWins",
        "key\nkey\nother\n",
        [("key ", "KEY ", True)],
        "KEY\nKEY\nother\n",
    ),
    (
        "ReplaceAll_CRLF_LFSearch_FileEndingWins",
        "line one\r\nother\r\nline one\r\n",
        [("line one\n", "LINE\n", True)],
        "LINE\r\nother\r\nLINE\r\n",
    ),
    ("CallerChosenFold", "foo\nline\nbar\n", [("line\n", "LINE")], "foo\nLINEbar\n"),
    (
        "CallerRewritesIndent_ReplaceLeadingWins",
        "foo\n\tline\n\tbar\n",
        [("\tline\n", "  line\n")],
        "foo\n  line\n\tbar\n",
    ),
    (
        "Expansion_ExtraLinesTrackLastPair",
        "foo\n\tline\nbar\n",
        [("    line\n", "    line\n    extra\n")],
        "foo\n\tline\n\textra\nbar\n",
    ),
    (
        "Collapse_ReplaceShorterThanSearch",
        "foo\nkeep\ndrop\nbar\n",
        [("keep\ndrop\n", "keep\n")],
        "foo\nkeep\nbar\n",
    ),
    (
        "EmptyEndingWildcard_CRLFContent_FileEndingWins",
        "foo\r\nkey\r\nbar\r\n",
        [("  key", "KEY")],
        "foo\r\nKEY\r\nbar\r\n",
    ),
    (
        "MultiLineReplaceAtEOFNoNewline_InteriorLinesKeepNewline",
        "foo\nbar",
        [("foo\nbar\n", "foo\nbaz\nqux\n")],
        "foo\nbaz\nqux",
    ),
    (
        "EmptyBodyFuzzyReplace_NoWhitespaceGhost",
        "prefix\n  code  \nsuffix\n",
        [("code\n", "\n")],
        "prefix\n\nsuffix\n",
    ),
    (
        "EmptyBodyInteriorAtEOFNoNewline_BothCarveOuts",
        "foo\nbar",
        [("foo\nbar\n", "mid1\n\nmid2\n")],
        "mid1\n\nmid2",
    ),
    # --- TestFuzzyReplace_EndingNormalization
    (
        "CRLFFile_LFSearchReplace_Expansion",
        "line1\r\nline2\r\nline3\r\n",
        [("line1\nline2\n", "line1\nINSERTED\nline2\n")],
        "line1\r\nINSERTED\r\nline2\r\nline3\r\n",
    ),
    (
        "CRLFFileNoEOL_LFSearchReplace_ExpansionAtEOF",
        "alpha\r\nbeta\r\ngamma",
        [("gamma", "gamma\ndelta\nepsilon")],
        "alpha\r\nbeta\r\ngamma\r\ndelta\r\nepsilon",
    ),
    (
        "CRLFFileNoEOL_LFCallerExpandsFunctionBody",
        'package main\r\n\r\nfunc main() {\r\n\tprintln("hi")\r\n}',
        [('\tprintln("hi")\n}', '\tprintln("hi")\n\tprintln("bye")\n\treturn\n}')],
        'package main\r\n\r\nfunc main() {\r\n\tprintln("hi")\r\n\tprintln("bye")\r\n\treturn\r\n}',
    ),
    (
        "LFFile_CRLFSearchReplace_FileLFWins",
        "one\ntwo\nthree\n",
        [("one\r\ntwo\r\n", "ONE\r\nTWO\r\n")],
        "ONE\nTWO\nthree\n",
    ),
    (
        "CRLFFile_CRLFSearchReplace_SanityPreserved",
        "a\r\nb\r\nc\r\n",
        [("a\r\nb\r\n", "A\r\nB\r\n")],
        "A\r\nB\r\nc\r\n",
    ),
    (
        "ReplaceAll_CRLFFile_LFCaller_Expansion",
        "key\r\nother\r\nkey\r\n",
        [("key\n", "KEY\nEXTRA\n", True)],
        "KEY\r\nEXTRA\r\nother\r\nKEY\r\nEXTRA\r\n",
    ),
    (
        "CallerIntent_SearchMatchesFile_ReplaceEndingsHonored",
        "x\r\ny\r\nz\r\n",
        [("x\r\ny\r\n", "X\nY\n")],
        "X\nY\nz\r\n",
    ),
    (
        "SingleLineSearch_MultiLineReplace_FileEndingWins",
        "a\r\nx\r\nb\r\n",
        [("x", "X\nY")],
        "a\r\nX\r\nY\r\nb\r\n",
    ),
    (
        "SingleLineSearch_SingleLineReplace_NoEndingsToNormalize",
        "a\r\nx\r\nb\r\n",
        [("x", "X")],
        "a\r\nX\r\nb\r\n",
    ),
    # --- TestFuzzyReplace_FuzzyCollapse_PreservesNextLine
    (
        "Collapse_Minimal",
        "\tone\n\ttwo\n\tthree\n\tafter\n",
        [("    one\n    two\n    three\n", "    ONE\n    TWO\n")],
        "\tONE\n\tTWO\n\tafter\n",
    ),
    (
        "Collapse_HarnessHttpapi",
        (
            "\tnameValidator := func(fl validator.FieldLevel) bool {\n"
            "\t\tf := fl.Field().Interface()\n"
            "\t\tstr, ok := f.(string)\n"
            "\t\tif !ok {\n"
            "\t\t\treturn false\n"
            "\t\t}\n"
            "\t\tvalid := codersdk.NameValid(str)\n"
            "\t\treturn valid == nil\n"
            "\t}\n"
        ),
        [
            (
                (
                    "        f := fl.Field().Interface()\n"
                    "        str, ok := f.(string)\n"
                    "        if !ok {\n"
                    "            return false\n"
                    "        }\n"
                    "        valid := codersdk.NameValid(str)"
                ),
                (
                    "        f := fl.Field().Interface()\n"
                    "        str, _ := f.(string)\n"
                    "        valid := codersdk.NameValid(str)"
                ),
            )
        ],
        (
            "\tnameValidator := func(fl validator.FieldLevel) bool {\n"
            "\t\tf := fl.Field().Interface()\n"
            "\t\tstr, _ := f.(string)\n"
            "\t\tvalid := codersdk.NameValid(str)\n"
            "\t\treturn valid == nil\n"
            "\t}\n"
        ),
    ),
    # --- TestEditFiles_WhitespaceAndLineEndings
    (
        "TabIndentedLine_ExactMatch",
        "\ttab indented line 1\n\ttab indented line 2\n    spaces line 3\n    spaces line 4\n\ttab indented line 5\n",
        [("\ttab indented line 1", "\ttab indented line 1 EDITED")],
        "\ttab indented line 1 EDITED\n\ttab indented line 2\n    spaces line 3\n    spaces line 4\n\ttab indented line 5\n",
    ),
    (
        "TrailingWhitespace_Preserved_ByPass1",
        "line with trailing spaces   \nno trailing ws\n",
        [("line with trailing spaces", "line with trailing spaces EDITED")],
        "line with trailing spaces EDITED   \nno trailing ws\n",
    ),
    (
        "RemoveBlankLines",
        "above\n\n\nbelow\n",
        [("above\n\n\nbelow", "above\nbelow")],
        "above\nbelow\n",
    ),
    (
        "CRLF_Pass1_PreservesCRLF",
        "line one\r\nline two\r\nline three\r\n",
        [("line two", "line two EDITED")],
        "line one\r\nline two EDITED\r\nline three\r\n",
    ),
    (
        "CRLF_FuzzyWithLF_FileEndingWins",
        "line one\r\nline two\r\nline three\r\n",
        [("line one\nline two\n", "line one EDITED\nline two EDITED\n")],
        "line one EDITED\r\nline two EDITED\r\nline three\r\n",
    ),
    (
        "NoTrailingNewline_Preserved",
        "no trailing newline",
        [("no trailing newline", "no trailing newline EDITED")],
        "no trailing newline EDITED",
    ),
    (
        "FuzzyIndent_FileIndentWins_NoLineFolding",
        "\titem one\n\titem two\n",
        [("  item one\n", "  item one EDITED\n")],
        "\titem one EDITED\n\titem two\n",
    ),
    # --- TestEditFiles_DuplicatePath_Merges (merged entries = sequential edits)
    (
        "SequentialSeesPreviousOutput",
        "one\ntwo\nthree\n",
        [("one", "CHANGED"), ("CHANGED", "FINAL")],
        "FINAL\ntwo\nthree\n",
    ),
    # --- TestEditFiles_ReplaceAll_FuzzyIndentGap (locks current behaviour)
    (
        "ReplaceAll_FuzzyIndentGap",
        (
            "package main\n\nfunc a() {\n\t\tif err != nil {\n\t\t\treturn err\n\t\t}\n"
            "\t\t\tif err != nil {\n\t\t\t\treturn err\n\t\t\t}\n}\n"
        ),
        [
            (
                "    if err != nil {\n        return err\n    }\n",
                '    if err != nil {\n        return fmt.Errorf("wrap: %w", err)\n    }\n',
                True,
            )
        ],
        (
            'package main\n\nfunc a() {\n\t\tif err != nil {\n\t\t\treturn fmt.Errorf("wrap: %w", err)\n\t\t}\n'
            '\t\t\tif err != nil {\n\t\t\t\treturn fmt.Errorf("wrap: %w", err)\n\t\t\t}\n}\n'
        ),
    ),
    # --- TestEditFiles_FuzzyIndent_InsertionLevelAware
    (
        "Red_WrapInBlock_TabFile_4spLLM",
        'func main() {\n\tfmt.Println("hello")\n\tfmt.Println("world")\n}\n',
        [
            (
                '    fmt.Println("hello")\n    fmt.Println("world")',
                '    fmt.Println("hello")\n    if verbose {\n        fmt.Println("world")\n    }',
            )
        ],
        'func main() {\n\tfmt.Println("hello")\n\tif verbose {\n\t\tfmt.Println("world")\n\t}\n}\n',
    ),
    (
        "Red_WrapInBlock_2spFile_4spLLM",
        "function main() {\n  console.log('hello')\n  console.log('world')\n}\n",
        [
            (
                "    console.log('hello')\n    console.log('world')",
                "    console.log('hello')\n    if (verbose) {\n        console.log('world')\n    }",
            )
        ],
        "function main() {\n  console.log('hello')\n  if (verbose) {\n    console.log('world')\n  }\n}\n",
    ),
    (
        "Red_SingleToMulti_ErrorHandling",
        "func main() {\n\tx := getValue()\n\tfmt.Println(x)\n}\n",
        [
            (
                "    x := getValue()",
                "    x, err := getValue()\n    if err != nil {\n        log.Fatal(err)\n    }",
            )
        ],
        "func main() {\n\tx, err := getValue()\n\tif err != nil {\n\t\tlog.Fatal(err)\n\t}\n\tfmt.Println(x)\n}\n",
    ),
    (
        "Red_InsertNewBlock_AfterExisting",
        (
            "func loadConfig() (*Config, error) {\n\tvar cfg Config\n\terr = json.Unmarshal(data, &cfg)\n"
            "\tif err != nil {\n\t\treturn nil, err\n\t}\n\n\treturn &cfg, nil\n}\n"
        ),
        [
            (
                (
                    "    var cfg Config\n    err = json.Unmarshal(data, &cfg)\n    if err != nil {\n"
                    "        return nil, err\n    }\n\n    return &cfg, nil"
                ),
                (
                    "    var cfg Config\n    err = json.Unmarshal(data, &cfg)\n    if err != nil {\n"
                    '        return nil, fmt.Errorf("unmarshal: %w", err)\n    }\n'
                    "    if err := cfg.Validate(); err != nil {\n"
                    '        return nil, fmt.Errorf("validate: %w", err)\n    }\n\n    return &cfg, nil'
                ),
            )
        ],
        (
            "func loadConfig() (*Config, error) {\n\tvar cfg Config\n\terr = json.Unmarshal(data, &cfg)\n"
            '\tif err != nil {\n\t\treturn nil, fmt.Errorf("unmarshal: %w", err)\n\t}\n'
            '\tif err := cfg.Validate(); err != nil {\n\t\treturn nil, fmt.Errorf("validate: %w", err)\n\t}\n'
            "\n\treturn &cfg, nil\n}\n"
        ),
    ),
    (
        "Red_ReplaceAll_Pass3_Expansion",
        (
            "func handlers() {\n"
            '\thttp.HandleFunc("/a", func(w http.ResponseWriter, r *http.Request) {\n'
            "\t\tdata := readBody(r)\n\t\tprocess(data)\n\t})\n"
            '\thttp.HandleFunc("/b", func(w http.ResponseWriter, r *http.Request) {\n'
            "\t\tdata := readBody(r)\n\t\tprocess(data)\n\t})\n}\n"
        ),
        [
            (
                "        data := readBody(r)\n        process(data)",
                "        data := readBody(r)\n        if data == nil {\n            return\n        }\n        process(data)",
                True,
            )
        ],
        (
            "func handlers() {\n"
            '\thttp.HandleFunc("/a", func(w http.ResponseWriter, r *http.Request) {\n'
            "\t\tdata := readBody(r)\n\t\tif data == nil {\n\t\t\treturn\n\t\t}\n\t\tprocess(data)\n\t})\n"
            '\thttp.HandleFunc("/b", func(w http.ResponseWriter, r *http.Request) {\n'
            "\t\tdata := readBody(r)\n\t\tif data == nil {\n\t\t\treturn\n\t\t}\n\t\tprocess(data)\n\t})\n}\n"
        ),
    ),
    (
        "Lock_Unwrap_MiddleSubDisagreement",
        "func main() {\n\tif condition {\n\t\tdoSomething()\n\t\tdoMore()\n\t}\n}\n",
        [
            (
                "    if condition {\n        doSomething()\n        doMore()\n    }",
                "    doSomething()\n    doMore()",
            )
        ],
        "func main() {\n\tdoSomething()\n    doMore()\n}\n",
    ),
    (
        "Lock_MiddleRewrite_DifferentNesting_Tab",
        (
            "func transform(items []Item) []Result {\n\tvar results []Result\n\tfor _, item := range items {\n"
            "\t\tif item.Valid {\n\t\t\tresults = append(results, convert(item))\n\t\t}\n\t}\n\treturn results\n}\n"
        ),
        [
            (
                (
                    "    var results []Result\n    for _, item := range items {\n        if item.Valid {\n"
                    "            results = append(results, convert(item))\n        }\n    }\n    return results"
                ),
                (
                    "    var results []Result\n    for _, item := range items {\n        result, err := convert(item)\n"
                    "        if err != nil {\n            continue\n        }\n        results = append(results, result)\n"
                    "    }\n    return results"
                ),
            )
        ],
        (
            "func transform(items []Item) []Result {\n\tvar results []Result\n\tfor _, item := range items {\n"
            "\t\tresult, err := convert(item)\n        if err != nil {\n            continue\n\t\t}\n"
            "\t\tresults = append(results, result)\n\t}\n\treturn results\n}\n"
        ),
    ),
    (
        "Lock_MiddleRewrite_DifferentNesting_2sp",
        (
            "function transform(items) {\n  const results = [];\n  for (const item of items) {\n"
            "    if (item.valid) {\n      results.push(convert(item));\n    }\n  }\n  return results;\n}\n"
        ),
        [
            (
                (
                    "    const results = [];\n    for (const item of items) {\n        if (item.valid) {\n"
                    "            results.push(convert(item));\n        }\n    }\n    return results;"
                ),
                (
                    "    const results = [];\n    for (const item of items) {\n        const result = convert(item);\n"
                    "        if (!result) {\n            continue;\n        }\n        results.push(result);\n"
                    "    }\n    return results;"
                ),
            )
        ],
        (
            "function transform(items) {\n  const results = [];\n  for (const item of items) {\n"
            "    const result = convert(item);\n        if (!result) {\n            continue;\n    }\n"
            "    results.push(result);\n  }\n  return results;\n}\n"
        ),
    ),
    # --- TestFuzzyReplace_Expansion_PreservesFileIndent
    (
        "Expansion_PreservesFileIndent",
        (
            "\tnameValidator := func(fl validator.FieldLevel) bool {\n\t\tf := fl.Field().Interface()\n"
            "\t\tstr, ok := f.(string)\n\t\tif !ok {\n\t\t\treturn false\n\t\t}\n"
            "\t\tvalid := codersdk.NameValid(str)\n\t\treturn valid == nil\n\t}\n"
        ),
        [
            (
                (
                    "        f := fl.Field().Interface()\n        str, ok := f.(string)\n        if !ok {\n"
                    "            return false\n        }\n        valid := codersdk.NameValid(str)"
                ),
                (
                    "        f := fl.Field().Interface()\n        str, ok := f.(string)\n        if !ok {\n"
                    '            log.Println("type assertion failed")\n            return false\n        }\n'
                    "        valid := codersdk.NameValid(str)"
                ),
            )
        ],
        (
            "\tnameValidator := func(fl validator.FieldLevel) bool {\n\t\tf := fl.Field().Interface()\n"
            '\t\tstr, ok := f.(string)\n\t\tif !ok {\n\t\t\tlog.Println("type assertion failed")\n'
            "\t\t\treturn false\n\t\t}\n\t\tvalid := codersdk.NameValid(str)\n\t\treturn valid == nil\n\t}\n"
        ),
    ),
    # --- our own: Go TrimSpace semantics and EOF corner cases
    # Pass 3 trims Unicode spaces to match, but the splice keeps only space/tab leads and
    # trails of the file, so the other spaces go with the replaced body (as in Go).
    (
        "TrimSpace_NBSPAndIdeographicSpace",
        "a\n\u00a0\u3000x\u2009\nb\n",
        [("x\n", "y\n")],
        "a\ny\nb\n",
    ),
    ("SearchTrailingBlankLineMatchesFinalNewline", "foo\n", [("foo\n\n", "bar\n")], "bar\n"),
    (
        "InvalidUtf8BytesSurvive",
        "\udcff\udcfe\nkey  \n\udc80",
        [("key\n", "KEY\n")],
        "\udcff\udcfe\nKEY  \n\udc80",
    ),
]


@pytest.mark.parametrize(
    ("content", "edits", "expected"), [c[1:] for c in APPLY_CASES], ids=[c[0] for c in APPLY_CASES]
)
def test_apply(content: str, edits: list[E], expected: str) -> None:
    assert _run(content, edits) == expected


def test_observable_consequences() -> None:
    # §3.6.1's observable consequences, one assertion each.
    assert apply_edit("a\r\nold\r\nb\r\n", "old\n", "new\n") == "a\r\nnew\r\nb\r\n"
    assert apply_edit("\t\tx = 1\n", "  x = 1\n", "  x = 2\n") == "\t\tx = 2\n"
    assert apply_edit("key   \nrest\n", "key\n", "KEY\n") == "KEY   \nrest\n"
    assert apply_edit("foo\nline\nbar\n", "line\n", "LINE") == "foo\nLINEbar\n"


AMBIGUOUS_3 = (
    "search string matches 3 occurrences (expected exactly 1). Include more surrounding "
    "context to make the match unique, or set replace_all to true"
)

# (name, content, edits, exact error text or substring)
REJECT_CASES: list[tuple[str, str, list[E], str]] = [
    (
        "EditEditAmbiguous",
        "foo bar",
        [("foo", "bar"), ("bar", "qux")],
        "search string matches 2 occurrences",
    ),
    (
        "NoMatchErrors",
        "original content",
        [("this does not exist in the file", "whatever")],
        editing.NOT_FOUND,
    ),
    ("AmbiguousExactMatch", "foo bar foo baz foo", [("foo", "qux")], AMBIGUOUS_3),
    ("EmptySearch_Rejects", "hello\n", [("", "X")], editing.EMPTY_SEARCH),
    ("EmptySearch_ReplaceAll_Rejects", "hello\n", [("", "X", True)], editing.EMPTY_SEARCH),
    ("Ambiguous_SingleReplace_Rejects", "a\na\na\nother\n", [("a", "A")], AMBIGUOUS_3),
    ("NotFound_Rejects", "hello\nworld\n", [("nonexistent\n", "X\n")], editing.NOT_FOUND),
    ("ContentMismatch_Rejects", "hello\n", [("Hello\n", "HELLO\n")], editing.NOT_FOUND),
    (
        "BlankLineMismatch_Rejects",
        "above\n\n\nbelow\n",
        [("above\nbelow\n", "above\nbelow\n")],
        editing.NOT_FOUND,
    ),
    (
        "BlankLinesAreSignificant_Rejects",
        "above\n\n\nbelow\n",
        [("above\nbelow", "above\nbelow")],
        editing.NOT_FOUND,
    ),
    (
        "CallerIntent_SearchDoesNotMatchFileEnding_Rejects",
        "x\r\ny\r\nz\r\n",
        [("x\ny\n", "X\r\nY\r\n")],
        editing.NOT_FOUND_WITH_ENDINGS,
    ),
    # Fuzzy passes count non-overlapping windows the same way.
    ("FuzzyAmbiguous", "  a\n  a\n  a\n", [("a\n", "b\n")], AMBIGUOUS_3),
    (
        "FuzzyOverlapCountsNonOverlapping",
        "x \nx \nx \nx \n",
        [("x\nx\n", "y\n")],
        "search string matches 2 occurrences",
    ),
]


@pytest.mark.parametrize(
    ("content", "edits", "message"), [c[1:] for c in REJECT_CASES], ids=[c[0] for c in REJECT_CASES]
)
def test_rejects(content: str, edits: list[E], message: str) -> None:
    with pytest.raises(EditError) as info:
        _run(content, edits)
    assert str(info.value).startswith(message)


def test_exact_error_texts() -> None:
    assert (
        editing.EMPTY_SEARCH
        == "search string must not be empty; include the text you want to match"
    )
    assert editing.NOT_FOUND == (
        "search string not found in file. Verify the search string matches the file content "
        "exactly, including whitespace and indentation"
    )
    assert editing.NOT_FOUND_WITH_ENDINGS == (
        "search string not found in file. Verify the search string matches the file content "
        "exactly, including whitespace, indentation, and line endings"
    )


def test_unicode_separators_are_not_go_space() -> None:
    # Python's str.strip() would strip U+001C..U+001F; Go's TrimSpace does not.
    with pytest.raises(EditError):
        apply_edit("\x1cx\n", " x\n", " y\n")
    assert apply_edit("\u2003x\n", " x\n", " y\n") == "y\n"


def test_apply_edits_reads_new_keys_with_legacy_fallback() -> None:
    content = "alpha beta gamma"
    # New keys win; an empty new_text with a non-empty old_text is a deletion.
    assert (
        apply_edits(content, [FileEdit(old_text="beta ", new_text="", search="alpha", replace="X")])
        == "alpha gamma"
    )
    # Both new keys empty: fall back to the legacy pair.
    assert apply_edits(content, [FileEdit(search="gamma", replace="G")]) == "alpha beta G"
    assert (
        apply_edits(content, [FileEdit.for_client("a", "A", replace_all=True)])
        == "AlphA betA gAmmA"
    )
    # Sequential, and one failure fails the whole list.
    assert (
        apply_edits(
            content, [FileEdit.for_client("alpha", "x"), FileEdit.for_client("x beta", "y")]
        )
        == "y gamma"
    )
    with pytest.raises(EditError, match="must not be empty"):
        apply_edits(content, [FileEdit.for_client("alpha", "x"), FileEdit()])


# --- files_indent_internal_test.go


@pytest.mark.parametrize(
    ("lines", "unit"),
    [
        ([], None),
        (["foo\n", "bar\n"], None),
        (["\tfoo\n", "\t\tbar\n"], "\t"),
        (["    foo\n", "        bar\n"], "    "),
        (["  foo\n", "    bar\n"], "  "),
        (["    foo\n", "      bar\n"], "  "),
        (["\tfoo\n", "    bar\n"], None),
        (["\t    foo\n"], None),
        ([" \tfoo\n"], None),
        (["    foo\n", "  \n", "    bar\n"], "    "),
        (["  \n", "    \n"], None),
        (["\n", "    foo\n"], "    "),
    ],
)
def test_detect_indent_unit(lines: list[str], unit: str | None) -> None:
    assert editing._indent_unit(lines) == unit


@pytest.mark.parametrize(
    ("a", "b", "want"),
    [(0, 0, 0), (0, 4, 4), (4, 0, 4), (4, 4, 4), (3, 5, 1), (4, 6, 2), (8, 12, 4), (2, 4, 2)],
)
def test_indent_gcd(a: int, b: int, want: int) -> None:
    assert editing._gcd(a, b) == want


@pytest.mark.parametrize(
    ("lead", "unit", "level"),
    [
        ("", "    ", 0),
        ("    ", "    ", 1),
        ("      ", "  ", 3),
        ("\t\t", "\t", 2),
        ("   ", "    ", None),
        ("\t ", "  ", None),
    ],
)
def test_indent_level(lead: str, unit: str, level: int | None) -> None:
    assert editing._indent_level(lead, unit) == level


@pytest.mark.parametrize(
    ("r_lead", "s_lead", "c_lead", "search_unit", "file_unit", "want"),
    [
        ("        ", "    ", "\t", "    ", "\t", "\t\t"),
        ("    ", "    ", "\t", "    ", "\t", "\t"),
        ("", "        ", "\t", "    ", "\t", None),
        ("   ", "    ", "\t", "    ", "\t", None),
        ("        ", "    ", "    ", "    ", "  ", "      "),
        ("    ", "  ", "\t", "  ", "\t", "\t\t"),
    ],
)
def test_translate_indent_level(
    r_lead: str, s_lead: str, c_lead: str, search_unit: str, file_unit: str, want: str | None
) -> None:
    assert editing._translate_indent(r_lead, s_lead, c_lead, search_unit, file_unit) == want


# --- unified diff: go-udiff difftest golden cases (labels from/to replaced by one path)


def _golden(body: str) -> str:
    return "--- p\n+++ p\n" + body


DIFF_CASES: list[tuple[str, str, str, str]] = [
    ("empty", "", "", ""),
    ("no_diff", "gargantuan\n", "gargantuan\n", ""),
    ("replace_all", "fruit\n", "cheese\n", _golden("@@ -1 +1 @@\n-fruit\n+cheese\n")),
    ("insert_rune", "gord\n", "gourd\n", _golden("@@ -1 +1 @@\n-gord\n+gourd\n")),
    ("delete_rune", "groat\n", "goat\n", _golden("@@ -1 +1 @@\n-groat\n+goat\n")),
    ("replace_partials", "blanket\n", "bunker\n", _golden("@@ -1 +1 @@\n-blanket\n+bunker\n")),
    (
        "insert_line",
        "1: one\n3: three\n",
        "1: one\n2: two\n3: three\n",
        _golden("@@ -1,2 +1,3 @@\n 1: one\n+2: two\n 3: three\n"),
    ),
    (
        "replace_no_newline",
        "A",
        "B",
        _golden(
            "@@ -1 +1 @@\n-A\n\\ No newline at end of file\n+B\n\\ No newline at end of file\n"
        ),
    ),
    ("delete_empty", "meow", "", _golden("@@ -1 +0,0 @@\n-meow\n\\ No newline at end of file\n")),
    (
        "append_empty",
        "",
        "AB\nC",
        _golden("@@ -0,0 +1,2 @@\n+AB\n+C\n\\ No newline at end of file\n"),
    ),
    (
        "add_end",
        "A",
        "AB",
        _golden(
            "@@ -1 +1 @@\n-A\n\\ No newline at end of file\n+AB\n\\ No newline at end of file\n"
        ),
    ),
    ("add_newline", "A", "A\n", _golden("@@ -1 +1 @@\n-A\n\\ No newline at end of file\n+A\n")),
    ("replace_last_line", "A\nB\n", "A\nC\n\n", _golden("@@ -1,2 +1,3 @@\n A\n-B\n+C\n+\n")),
    ("extra_newline", "\nA\n", "A\n", _golden("@@ -1,2 +1 @@\n-\n A\n")),
    (
        "unified_lines",
        "aaa\nccc\n",
        "aaa\nbbb\nccc\n",
        _golden("@@ -1,2 +1,3 @@\n aaa\n+bbb\n ccc\n"),
    ),
    (
        "60379",
        "package a\n\ntype S struct {\ns fmt.Stringer\n}\n",
        "package a\n\ntype S struct {\n\ts fmt.Stringer\n}\n",
        _golden(
            "@@ -1,5 +1,5 @@\n package a\n \n type S struct {\n-s fmt.Stringer\n+\ts fmt.Stringer\n }\n"
        ),
    ),
    (
        "multiple_replace",
        "A\nB\nC\nD\nE\nF\nG\n",
        "A\nH\nI\nJ\nE\nF\nK\n",
        _golden("@@ -1,7 +1,7 @@\n A\n-B\n-C\n-D\n+H\n+I\n+J\n E\n F\n-G\n+K\n"),
    ),
    # Hunks further apart than 2*3 lines split; context is clipped at both file ends.
    (
        "two_hunks",
        "".join(f"{i}\n" for i in range(1, 21)),
        "".join(f"{i}\n" for i in range(1, 21))
        .replace("2\n", "two\n", 1)
        .replace("18\n", "eighteen\n"),
        _golden(
            "@@ -1,5 +1,5 @@\n 1\n-2\n+two\n 3\n 4\n 5\n"
            "@@ -15,6 +15,6 @@\n 15\n 16\n 17\n-18\n+eighteen\n 19\n 20\n"
        ),
    ),
    # go-udiff's toLine does not advance over the lines joining two edits into one hunk, so its
    # later hunk's new-file start is short (golang/go#81453: "+15"); we print the correct "+17".
    (
        "joined_hunk_then_new_hunk_start_correct",
        "".join(f"{i}\n" for i in range(1, 31)),
        "".join(f"{i}\n" for i in range(1, 31))
        .replace("\n5\n", "\nfive\n")
        .replace("\n8\n", "\neight\n")
        .replace("\n20\n", "\ntwenty\n"),
        _golden(
            "@@ -2,10 +2,10 @@\n 2\n 3\n 4\n-5\n+five\n 6\n 7\n-8\n+eight\n 9\n 10\n 11\n"
            "@@ -17,7 +17,7 @@\n 17\n 18\n 19\n-20\n+twenty\n 21\n 22\n 23\n"
        ),
    ),
    # coder's DiffRequestedSingleFile / MultiEditSameFile shapes.
    (
        "hello",
        "hello world\n",
        "HELLO world\n",
        _golden("@@ -1 +1 @@\n-hello world\n+HELLO world\n"),
    ),
    (
        "two_edits",
        "one\ntwo\nthree\n",
        "ONE\ntwo\nTHREE\n",
        _golden("@@ -1,3 +1,3 @@\n-one\n+ONE\n two\n-three\n+THREE\n"),
    ),
]


@pytest.mark.parametrize(
    ("old", "new", "want"), [c[1:] for c in DIFF_CASES], ids=[c[0] for c in DIFF_CASES]
)
def test_unified_diff_golden(old: str, new: str, want: str) -> None:
    assert unified_diff("p", old, new) == want


@pytest.mark.parametrize(
    ("old", "new"),
    [c[1:3] for c in DIFF_CASES if c[1] != c[2]],
    ids=[c[0] for c in DIFF_CASES if c[1] != c[2]],
)
def test_unified_diff_golden_applies_with_gnu_patch(tmp_path: Path, old: str, new: str) -> None:
    # GNU patch locates hunks by the old side, so even the drifted new-file starts apply.
    assert _gnu_patch(tmp_path, old, unified_diff("f", old, new)) == new


def _gnu_patch(work: Path, old: str, diff: str) -> str:
    (work / "f").write_bytes(old.encode())
    (work / "d.diff").write_bytes(diff.encode())
    proc = subprocess.run(
        ["patch", "-s", "-f", "--no-backup-if-mismatch", "-o", "out", "f", "d.diff"],
        check=False,
        cwd=work,
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return (work / "out").read_bytes().decode()


def test_unified_diff_headers_use_the_callers_path() -> None:
    diff = unified_diff("/tmp/dir/./link.txt", "hello\n", "HELLO\n")
    assert diff.startswith("--- /tmp/dir/./link.txt\n+++ /tmp/dir/./link.txt\n@@ ")


def test_unified_diff_no_op_edit_is_empty() -> None:
    content = "same\n"
    assert unified_diff("/f", content, apply_edit(content, "same", "same")) == ""


def test_unified_diff_never_raises() -> None:
    assert unified_diff("/f", "a\udcff\n", "b\ud800\n").startswith("--- /f\n")
    assert unified_diff("/f", 12345, "x") == ""  # type: ignore[arg-type]


def test_unified_diff_large_rewrite_falls_back_to_one_region() -> None:
    old = "".join(f"old {i}\n" for i in range(1500))
    new = "".join(f"new {i}\n" for i in range(1500))
    diff = unified_diff("/f", old, new)
    assert diff.startswith("--- /f\n+++ /f\n@@ -1,1500 +1,1500 @@\n-old 0\n")
    assert diff.count("\n-") == 1500 and diff.count("\n+") == 1501  # +1 for the +++ header


# --- properties

_LINE = st.sampled_from(["a", "b", "c", "", "  x", "\tx", "y  "])
_TEXT = st.builds(
    lambda lines, end, crlf: (
        ("\r\n" if crlf else "\n").join(lines)
        + (("\r\n" if crlf else "\n") if end and lines else "")
    ),
    st.lists(_LINE, max_size=40),
    st.booleans(),
    st.booleans(),
)
_PLAIN = st.text(alphabet="ab \t\n.x", max_size=40)


@settings(max_examples=300, suppress_health_check=[HealthCheck.filter_too_much])
@given(before=_PLAIN, search=_PLAIN.filter(bool), replace=_PLAIN, after=_PLAIN)
def test_unique_exact_search_behaves_like_str_replace(
    before: str, search: str, replace: str, after: str
) -> None:
    content = before + search + after
    assume(content.count(search) == 1)
    assert apply_edit(content, search, replace) == content.replace(search, replace)
    assert apply_edit(content, search, replace, replace_all=True) == content.replace(
        search, replace
    )


@settings(max_examples=200)
@given(before=_PLAIN, search=_PLAIN.filter(bool), replace=_PLAIN, middle=_PLAIN, after=_PLAIN)
def test_replace_all_exact_is_str_replace(
    before: str, search: str, replace: str, middle: str, after: str
) -> None:
    content = before + search + middle + search + after
    assert apply_edit(content, search, replace, replace_all=True) == content.replace(
        search, replace
    )


def _apply_udiff(old: str, diff: str) -> str:
    """A strict applier: each hunk's old start, old/new counts and context must fit exactly."""
    if diff == "":
        return old
    src = old.splitlines(keepends=True)
    lines = diff.splitlines(keepends=True)
    assert lines[0].startswith("--- ") and lines[1].startswith("+++ ")
    out: list[str] = []
    pos = 0
    i = 2
    while i < len(lines):
        header = lines[i].rstrip("\n")
        assert header.startswith("@@ -") and header.endswith(" @@"), header
        old_range, new_range = header[3:-3].split(" ")
        start_s, _, count_s = old_range[1:].partition(",")
        old_count = int(count_s) if count_s else 1
        new_count = int(new_range[1:].partition(",")[2] or 1)
        start = int(start_s) - 1 if old_count else int(start_s)
        assert start >= pos
        out.extend(src[pos:start])
        pos = start
        i += 1
        seen_old = seen_new = 0
        while i < len(lines) and not lines[i].startswith("@@"):
            kind, text = lines[i][0], lines[i][1:]
            i += 1
            if i < len(lines) and lines[i] == "\\ No newline at end of file\n":
                text = text[:-1]
                i += 1
            if kind in " -":
                assert src[pos] == text
                pos += 1
                seen_old += 1
            if kind in " +":
                out.append(text)
                seen_new += 1
        assert (seen_old, seen_new) == (old_count, new_count)
    out.extend(src[pos:])
    return "".join(out)


def _lcs_len(a: list[str], b: list[str]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        prev = 0
        for j, y in enumerate(b):
            cur = row[j + 1]
            row[j + 1] = prev + 1 if x == y else max(row[j + 1], row[j])
            prev = cur
    return row[-1]


@settings(max_examples=400)
@given(old=_TEXT, new=_TEXT)
def test_unified_diff_applies_and_is_minimal(old: str, new: str) -> None:
    diff = unified_diff("/f", old, new)
    assert (diff == "") == (old == new)
    assert _apply_udiff(old, diff) == new
    a, b = old.splitlines(keepends=True), new.splitlines(keepends=True)
    deleted = sum(1 for line in diff.splitlines()[2:] if line.startswith("-"))
    assert deleted == len(a) - _lcs_len(a, b)


@settings(max_examples=40, deadline=None)
@given(old=_TEXT, new=_TEXT)
def test_unified_diff_applies_with_gnu_patch(
    tmp_path_factory: pytest.TempPathFactory, old: str, new: str
) -> None:
    assume(old != new)
    work: Path = tmp_path_factory.mktemp("patch")
    assert _gnu_patch(work, old, unified_diff("f", old, new)) == new
