"""``python -m preprocess {shard,merge,reencode,build-face-model,preview,weights}``: jsonargparse CLI over the job dataclasses."""

from __future__ import annotations

import sys
from dataclasses import fields

from jsonargparse import ActionConfigFile, ArgumentParser, set_parsing_settings

from preprocess.config import BuildFaceModelJob, MergeJob, PreviewJob, ReencodeJob, ShardJob, WeightsJob
from preprocess.errors import ConfigError

COMMANDS = {"shard": ShardJob, "merge": MergeJob, "reencode": ReencodeJob, "build-face-model": BuildFaceModelJob, "preview": PreviewJob, "weights": WeightsJob}


def make_parser() -> ArgumentParser:
    # the job dataclasses document each field in an attribute docstring: show them in --help
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    parser = ArgumentParser(prog="python -m preprocess", description="Offline preprocessing: raw talking-face videos -> WebDataset shards, and the offline weights.")
    sub = parser.add_subcommands(dest="command")
    for name, cls in COMMANDS.items():
        p = ArgumentParser(description=(cls.__doc__ or "").strip(), exit_on_error=True)
        p.add_argument("--config", action=ActionConfigFile, help="YAML preset(s), e.g. configs/preprocess/voxceleb1.yaml; later flags override")
        p.add_class_arguments(cls, nested_key=None, as_group=False)
        sub.add_subcommand(name, p, help=(cls.__doc__ or "").strip().splitlines()[0])
    return parser


def _bool_options() -> set[str]:
    return {f"--{f.name}" for cls in COMMANDS.values() for f in fields(cls) if f.type in ("bool", bool)}


def normalize_option_names(argv: list[str]) -> list[str]:
    """``--dry-run`` works like ``--dry_run``, and a bare boolean flag means true.

    Only option names change, never values: ``--root=/a-b`` keeps its path.
    """
    flags = _bool_options()
    out: list[str] = []
    for k, tok in enumerate(argv):
        if tok.startswith("--") and len(tok) > 2:
            name, eq, value = tok.partition("=")
            tok = "--" + name[2:].replace("-", "_") + eq + value
            nxt = argv[k + 1].lower() if k + 1 < len(argv) else ""
            if tok in flags and nxt not in ("true", "false", "yes", "no", "1", "0"):
                out += [tok, "true"]
                continue
        out.append(tok)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    cfg = parser.parse_args(normalize_option_names(sys.argv[1:] if argv is None else argv))
    name = cfg.command
    # top-level fields come back as a Namespace, nested dataclasses (track, crop, ...) already built
    values = vars(parser.instantiate(cfg)[name])
    try:
        job = COMMANDS[name](**{k: v for k, v in values.items() if k != "config"})
        if name == "shard":
            from preprocess.runner import run_shard

            return run_shard(job)
        if name == "merge":
            from preprocess.manifest import merge

            if not job.out.is_dir():
                raise ConfigError(f"no shard folder at {job.out}")
            t = merge(job.out)["totals"]
            print(f"{job.out}/manifest.json: {t['samples']} samples in {t['shards']} shards, {t['frames']} frames, {t['hours']:.4f} h")
            return 0
        if name == "reencode":
            from preprocess.reencode import run_reencode

            return run_reencode(job)
        if name == "preview":
            from preprocess.preview import contact_sheet

            contact_sheet(job.shards, job.out, job.max_samples, job.face_model)
            return 0
        if name == "weights":
            from preprocess.weights import WEIGHTS, fetch

            unknown = set(job.only or ()) - set(WEIGHTS)
            if unknown:
                raise ConfigError(f"unknown weights {sorted(unknown)}: choose from {', '.join(WEIGHTS)}")
            return fetch(job.only, job.force)
        from preprocess.face_model_build import run_build

        return run_build(job)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: complete shards are kept; rerun the same command to resume", file=sys.stderr)
        return 130


def console_main() -> None:
    """Entry point of the ``realtalk-preprocess`` console script."""
    sys.exit(main())
