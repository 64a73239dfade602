"""What a command prints as its result. With --json, standard output carries the JSON only: cli.main
keeps the real stdout aside as args.json_out and sends everything else printed meanwhile to stderr."""
from __future__ import annotations

import json
import sys


def print_json(args, payload, indent: int | None = None) -> None:
    """The JSON a `--json` command prints, on the standard output main() kept aside for it."""
    out = getattr(args, "json_out", None) or sys.stdout
    out.write(json.dumps(payload, indent=indent) + "\n")
    out.flush()
