"""``python -m stablebeat_utils`` — the command line of the course (no notebook of its own).

python -m stablebeat_utils run [STAGE ...] [-p NAME VALUE ...] [-f params.yaml]
python -m stablebeat_utils stages          # the stages and their parameters
python -m stablebeat_utils profiles        # the bundled profiles
python -m stablebeat_utils publish --run-dir RUN --repo-id USER/NAME [--push]
python -m stablebeat_utils colab-links --repo OWNER/NAME   # badges + Colab set-up cells
"""

from __future__ import annotations

import argparse
import sys

import yaml

from . import STAGES, params, runner, settings
from .params import ParameterError
from .publish import PublishError
from .runs import RunFolderError


def _stages_text() -> str:
    lines = [
        "stages and their settings: name = default (the card's recipe)  (type, allowed)  [what the demo "
        "profile sets, where it differs]  help"
    ]
    have = set(runner.available_stages())
    for stage in STAGES:
        mark = "" if stage in have else "  (notebook not written yet)"
        lines.append(f"  {stage}{mark}")
        lines += settings.describe(stage, params.schema(stage))
    lines.append(
        "profiles: " + ", ".join(params.list_profiles()) + "  (each lists only what differs from the defaults)"
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m stablebeat_utils", description="StableBeaT course: run the notebooks, in order, with papermill."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser(
        "run",
        help="execute notebooks into RUN_DIR/notebooks/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_stages_text(),
    )
    p_run.add_argument(
        "stages",
        nargs="*",
        metavar="STAGE",
        help="stages to run, e.g. 01_segment or 01 or segment (default: all that exist)",
    )
    p_run.add_argument(
        "-p",
        "--param",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="set a parameter (VALUE parsed as YAML: 2, 0.7, true, text); `-p profile NAME` picks a profile",
    )
    p_run.add_argument(
        "-f",
        "--file",
        action="append",
        default=[],
        metavar="params.yaml",
        help="a YAML file of parameter values (same form as a profile)",
    )
    p_run.add_argument("--log-output", action="store_true", help="stream the notebooks' output")
    p_pub = sub.add_parser("publish", help="write the model card and upload list (and upload with --push)")
    p_pub.add_argument("--run-dir", required=True)
    p_pub.add_argument("--repo-id", required=True, help="user/model-name on the Hugging Face hub")
    p_pub.add_argument("--push", action="store_true", help="really upload (token from HF_TOKEN or Colab secrets)")
    p_pub.add_argument("--public", action="store_true", help="create the hub repo public (default private)")
    sub.add_parser("stages", help="list the stages and their parameters")
    sub.add_parser("profiles", help="list the bundled profiles")
    p_links = sub.add_parser(
        "colab-links",
        help="point the Open-in-Colab badges and the notebooks' Colab set-up cell at where the course is published",
    )
    p_links.add_argument("--repo", help="owner/name on GitHub (default: the one in data/course.yaml)")
    p_links.add_argument("--branch", help="branch the badges open (default: the one in data/course.yaml)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "stages":
            print(_stages_text())
        elif args.command == "profiles":
            for name in params.list_profiles():
                print(name)
        elif args.command == "colab-links":
            from . import colab

            try:
                changed = colab.write_links(args.repo, args.branch)
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            info = colab.course()
            print(f"course at github.com/{info['repo']} ({info['branch']}): {len(changed)} file(s) updated")
            for path in changed:
                print("  ", path)
        elif args.command == "publish":
            from . import publish

            summary = publish.run(args.run_dir, args.repo_id, dry_run=not args.push, private=not args.public)
            print(
                f"model card: {summary['card']} ({summary['files']} files"
                + (", dry run: nothing uploaded)" if summary["dry_run"] else f") → {summary['url']}")
            )
        elif args.command == "run":
            overrides = {k: yaml.safe_load(v) if v != "" else "" for k, v in args.param}
            outs = runner.run(args.stages or None, files=args.file, overrides=overrides, log_output=args.log_output)
            print(f"done: {len(outs)} notebook(s) executed into {outs[0].parent if outs else '-'}")
    except runner.StageFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (ParameterError, RunFolderError, PublishError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
