"""What the Python benches share: the release plugin they measure, how a figure's spread is
summarised, and how a result is kept and shown (through figures.py, which the documents'
tables come from)."""
import json
import os
import statistics
import subprocess
import sys

import figures

ROOT = figures.ROOT


def release_plugin_env():
    """Builds the release plugin; an environment in which GStreamer finds it."""
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "gst-plugin-unetmask"], cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return dict(os.environ, GST_PLUGIN_PATH=os.path.join(target, "release"))


def spread(values):
    """Median and range of one figure over the rounds."""
    values = list(values)
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def record(result, table, json_path=None):
    """Writes `result` to `json_path` when given, and prints it as figures.py's `table`."""
    if json_path:
        with open(json_path, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=1)
    sys.stdout.write(figures.render(table, result))
