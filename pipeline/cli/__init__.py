"""The `drivecast` command line.

Each subcommand lives in the module that owns its logic and is imported only when it runs, so
`drivecast --help` stays fast and the runtime commands never pull in torch. A subcommand is a
function `main(argv: list[str]) -> int` (its own argparse parser, prog `drivecast NAME`).

The training-side commands (train, eval, export, verify) are named here by module path only:
`pipeline` itself imports nothing from `models` or `export`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys

__all__ = ["COMMANDS", "main"]

# name -> ("module:function", one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "launch": ("pipeline.runtime.launch:main", "run a node graph from a launch file"),
    "graph": ("pipeline.cli.topics:graph_main", "print the nodes, topics and edges of a launch file"),
    "topic": ("pipeline.cli.topics:topic_main", "list / echo / hz / bw on a running graph"),
    "keys": ("pipeline.cli.keys:main", "make CURVE key pairs for a graph that spans machines"),
    "record": ("pipeline.recordings.writer:main", "record topics of a running graph into an MCAP file"),
    "play": ("pipeline.recordings.replay:main", "replay an MCAP or ROS bag recording into a graph"),
    "bag": ("pipeline.cli.bag:main", "inspect, repair and export recordings (info, recover, convert, export)"),
    "track": ("pipeline.cli.track:main", "run the lidar detector and tracker over a recording; score them"),
    "view": ("pipeline.cli.view:main", "show a running graph or a recording in Foxglove (needs the [bridge] extra)"),
    "fleet": ("pipeline.cli.fleet:main", "evaluate a graph over many drives: local process pool or Ray (fleet eval)"),
    "sim": ("nodes.sim_record:main", "write simulated drives headless, faster than real time (sim record)"),
    "import": ("models.drive_import:main", "turn a dataset into a drive recording of Tracks"),
    "train": ("models.train:main", "train a trajectory model (needs the [train] extra)"),
    "eval": ("models.evaluate:main", "evaluate a checkpoint or .onnx model against constant velocity"),
    "export": ("export.torch_export.onnx_export:main", "export a checkpoint to a self-describing .onnx step model"),
    "verify": ("export.torch_export.verify:main", "check an .onnx model against its checkpoint"),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: drivecast COMMAND [ARGS...] | --version", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `drivecast COMMAND --help` for a command's options."]
    return "\n".join(lines)


def _version() -> str:
    try:
        return importlib.metadata.version("drivecast")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    if args[0] == "--version":
        print(f"drivecast {_version()}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"ERROR: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    target, _ = COMMANDS[name]
    module_name, func_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # A missing optional dependency (torch for `train`) deserves one line, not a traceback.
        print(f"ERROR: `drivecast {name}` needs the module {exc.name!r}: {exc}", file=sys.stderr)
        if exc.name in ("torch", "onnx", "onnxscript", "tqdm", "matplotlib"):
            print("Install the training extra: pip install -e '.[train]'", file=sys.stderr)
        return 2
    try:
        return int(getattr(module, func_name)(rest) or 0)
    except KeyboardInterrupt:
        return 130

