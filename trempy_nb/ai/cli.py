"""`trempy-nb ai "..." --source CONN --target CONN -o settings.json [--name TASK]`.

Exit codes: 0 valid settings written; 2 the model's settings are still invalid
after the repair rounds (nothing written unless --save-invalid); the error's own
code (1 for the assistant) when no answer could be obtained.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from trempy_nb.errors import TrempyError


def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("prompt", help="the task in one sentence")
    parser.add_argument("--source", required=True, help="source connection: saved name or URI")
    parser.add_argument("--target", required=True, help="target connection: saved name or URI")
    parser.add_argument("-o", "--output", help="write the settings JSON here (default: stdout)")
    parser.add_argument("--name", help="task_name to use (default: the model chooses)")
    parser.add_argument("--model", help="model name (default: $TREMPY_AI_MODEL or deepseek-chat)")
    parser.add_argument(
        "--base-url", help="chat API base URL (default: $TREMPY_AI_BASE_URL or DeepSeek)"
    )
    parser.add_argument(
        "--max-rounds", type=int, default=2, help="repair rounds after the first answer"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument(
        "--save-invalid",
        action="store_true",
        help="write the best draft to --output even when it does not validate (exit 2)",
    )
    parser.set_defaults(func=run)
    return parser


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the `ai` subcommand on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "ai",
        help="describe a task in a sentence, get validated settings (AI assistant)",
        description="Ask an OpenAI-compatible model for task settings, validated against the source.",
    )
    return _configure(parser)


def _write(text: str, output: str | None) -> None:
    if output:
        Path(output).write_text(text + "\n", encoding="utf-8")
    else:
        sys.stdout.write(text + "\n")


def run(args: argparse.Namespace) -> int:
    """Run the `ai` subcommand; returns the exit code."""
    from trempy_nb.ai.assistant import create_task

    try:
        result = create_task(
            args.prompt,
            args.source,
            args.target,
            args.name,
            model=args.model,
            base_url=args.base_url,
            max_rounds=args.max_rounds,
            timeout=args.timeout,
        )
    except TrempyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    if result.ok:
        _write(result.to_json(), args.output)
        where = args.output or "stdout"
        print(
            f"valid settings for task {result.settings['task']['task_name']!r} written to {where} "
            f"({result.rounds} answer(s) from {result.model})",
            file=sys.stderr,
        )
        return 0
    print(
        f"error: the model's settings are still invalid after {result.rounds} answer(s):",
        file=sys.stderr,
    )
    for line in result.errors:
        print(f"  - {line}", file=sys.stderr)
    if args.save_invalid and result.settings is not None:
        _write(result.to_json(), args.output)
        print(f"draft written to {args.output or 'stdout'} (NOT valid)", file=sys.stderr)
    else:
        print("no settings written (use --save-invalid to keep the draft)", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m trempy_nb.ai.cli`."""
    parser = _configure(argparse.ArgumentParser(prog="trempy-nb ai", description=__doc__))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
