"""`trl-ssft data build | report | generate`: SSFT training sets from public datasets and teacher models.

    trl-ssft data build simplescaling/s1K-1.1 --preset s1k -o s1k_ssft.jsonl
    trl-ssft data build candidates.jsonl -o train.parquet --max-traces 4 --num-proc 8
    trl-ssft data report train.parquet --tokenizer Qwen/Qwen2.5-7B-Instruct --max-length 8192
    trl-ssft data generate --help            (teacher sampling: trl_ssft/traces/generate.py)

The options of `build` are the fields of `SourceSpec` (where the source keeps each part),
`VerifyOptions` (what may train) and `SelectOptions` (de-duplication and the choice of M), with
their help strings; docs/data.md lists them.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from dataclasses import MISSING, fields

from .select import SelectOptions
from .sources import PRESETS, SourceSpec
from .verify import VerifyOptions

_OPTION_CLASSES = (SourceSpec, VerifyOptions, SelectOptions)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_options(parser: argparse.ArgumentParser, cls) -> None:
    """One command-line option per field of the dataclass `cls`, with its help string; unset ones stay None."""
    group = parser.add_argument_group(cls.__name__, (cls.__doc__ or "").strip().splitlines()[0])
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        tp, default = hints[f.name], f.default if f.default is not MISSING else None
        help_text = f.metadata.get("help", "") + (f" (default: {default})" if default not in (None, ()) else "")
        kw = dict(default=None, help=help_text.replace("%", "%%"))
        if tp in (bool, bool | None):
            group.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, **kw)
        elif "list" in str(tp):
            group.add_argument(_flag(f.name), nargs="+", metavar="LABEL" if f.name == "trace_sources" else "COL",
                               **kw)
        else:
            conv = {int: int, float: float}.get(tp, str)
            group.add_argument(_flag(f.name), type=conv, **kw)


def options_from(cls, args: argparse.Namespace):
    """The dataclass `cls` with the options given on the command line (the others at their defaults)."""
    given = {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}
    if "template" in given:  # a shell string: "\n" typed as backslash-n
        given["template"] = given["template"].replace("\\n", "\n").replace("\\t", "\t")
    return cls(**given)


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trl-ssft data build", description="Convert + verify + select: a source "
                                "dataset -> ssft rows (one per question, up to M verified, diverse traces).")
    p.add_argument("inputs", nargs="+", help="files (.jsonl/.json/.parquet/.csv), saved dataset folders or hub names; "
                   "several files of one layout are read as one; with --shape join, one file per teacher")
    p.add_argument("-o", "--output", required=True, help="output: .jsonl, .parquet, or a folder (saved dataset)")
    p.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="a public layout's columns (default: detected from the column names)")
    p.add_argument("--split", default="train", help="split of a hub dataset or saved DatasetDict")
    p.add_argument("--config", default=None, help="config name of a hub dataset")
    p.add_argument("--num-proc", type=int, default=1, help="processes for verify + select")
    p.add_argument("--batch-size", type=int, default=64, help="questions per batch and process (bounds memory)")
    p.add_argument("--work-dir", default=None, help="where the intermediate Arrow file goes (default: next to "
                   "the output; removed at the end)")
    p.add_argument("--max-questions", type=int, default=None, help="only the first N questions (a quick try)")
    for cls in _OPTION_CLASSES:
        add_options(p, cls)
    return p


def build_main(argv: list[str]) -> int:
    from .build import build, build_report_path, format_build

    a = _build_parser().parse_args(argv)
    report = build(a.inputs, a.output, source=options_from(SourceSpec, a), preset=a.preset,
                   verify=options_from(VerifyOptions, a), select=options_from(SelectOptions, a),
                   num_proc=a.num_proc, batch_size=a.batch_size, work_dir=a.work_dir, split=a.split,
                   config=a.config, max_questions=a.max_questions)
    print(format_build(report))
    print(f"wrote {a.output} and {build_report_path(a.output)}")
    return 0


def report_main(argv: list[str]) -> int:
    from .report import data_report, format_report, plot_report

    p = argparse.ArgumentParser(prog="trl-ssft data report", description="Questions, traces, teachers, token "
                                "lengths, truncation, diversity and drops of an ssft file.")
    p.add_argument("file", help="an ssft file (.jsonl/.parquet) or saved dataset folder")
    p.add_argument("--tokenizer", required=True, help="the target model's tokenizer (name or path)")
    p.add_argument("--max-length", type=int, default=None, help="report the share of traces this would truncate")
    p.add_argument("--build-report", default=None, help="the build's counts (default: FILE.build.json if present)")
    p.add_argument("--json", default=None, help="write the report as JSON here")
    p.add_argument("--png", default=None, help="write the plots here (default: FILE.report.png)")
    p.add_argument("--no-plot", action="store_true", help="no PNG")
    p.add_argument("--num-proc", type=int, default=1, help="processes for tokenization")
    a = p.parse_args(argv)
    rep = data_report(a.file, a.tokenizer, a.max_length, build_report=a.build_report, num_proc=a.num_proc)
    print(format_report(rep))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({k: v for k, v in rep.items() if k not in ("trace_token_lengths", "question_diversity")}, f,
                      indent=1)
        print(f"wrote {a.json}")
    if not a.no_plot:
        print(f"wrote {plot_report(rep, a.png or a.file.rstrip('/') + '.report.png')}")
    return 0


def generate_main(argv: list[str]) -> int:
    """Teacher sampling, provided by `trl_ssft.traces.generate` (`add_arguments`, `run`), imported lazily."""
    import importlib

    try:
        generate = importlib.import_module("trl_ssft.traces.generate")
    except ImportError as e:
        if getattr(e, "name", None) == "trl_ssft.traces.generate":
            print("trl-ssft data generate: not available in this build (trl_ssft/traces/generate.py is missing).",
                  file=sys.stderr)
        else:
            print(f"trl-ssft data generate needs a package that is not installed ({e}): pip install "
                  "'trl-ssft[data]'", file=sys.stderr)
        return 2
    p = argparse.ArgumentParser(prog="trl-ssft data generate",
                                description="Sample K traces per question from teacher models (candidates JSONL).")
    generate.add_arguments(p)
    return generate.run(p.parse_args(argv))


COMMANDS = {"build": build_main, "report": report_main, "generate": generate_main}
USAGE = """usage: trl-ssft data {build,report,generate} [options]

  build     a public dataset / candidates file -> verified, de-duplicated, diverse ssft rows (+ counts)
  report    questions, traces per question, teachers, token lengths, truncation, diversity, drops; table + PNG
  generate  sample K traces per question from teacher models (vLLM, OpenAI-compatible servers)

Run `trl-ssft data build --help` for the options; docs/data.md explains them.
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"trl-ssft data: unknown command {argv[0]!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


__all__ = ["COMMANDS", "add_options", "main", "options_from"]
