"""Every README snippet runs as written, in order, as a newcomer would run them.

The bash blocks run with the `ytune` command, the python blocks with this interpreter, from a
folder beside the GLUE data (so `../shared/data/glue` is found). Two changes only, so that it fits
in the suite: `ytune extract` reads the first 200 rows of each split (`--limit`), and the cache id
the README shows, that of all of SST-2, stands for the id of that smaller cache. A block after
`<!-- not run by tests/test_readme.py: why -->` is skipped.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"(<!-- not run by tests/test_readme\.py[^>]*-->\n)?```(bash|python)\n(.*?)```", re.S)
README_CACHE_ID = "2d68ed739ab4d54f"
LIMIT = 200


def snippets() -> list[tuple[str, str]]:
    return [(lang, body) for skipped, lang, body in BLOCK.findall(README.read_text()) if not skipped]


def test_every_readme_snippet_runs_as_written(tmp_path, glue):
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "shared" / "data" / "glue").symlink_to(glue)
    work = tmp_path / "work"
    work.mkdir()
    env = {
        **os.environ,
        "YTUNE_CACHE": str(tmp_path / "caches"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    cache_id, outputs, errors = None, [], []
    for lang, body in snippets():
        body = body.replace("ytune extract ", f"ytune extract --limit {LIMIT} ")
        if cache_id:
            body = body.replace(README_CACHE_ID, cache_id)
        command = ["bash", "-euo", "pipefail", "-c", body] if lang == "bash" else [sys.executable, "-c", body]
        run = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
        assert run.returncode == 0, f"README {lang} block failed:\n{body}\n{run.stderr[-3000:]}"
        outputs.append(run.stdout)
        errors.append(run.stderr)
        if "ytune extract" in body and cache_id is None:
            cache_id = Path(run.stdout.splitlines()[-1]).name  # the last line printed is the cache's path
            assert (tmp_path / "caches" / cache_id / "manifest.json").exists()
    text = "".join(outputs)
    assert f"ok: {tmp_path / 'caches' / cache_id}" in text  # cache verify
    assert (work / "runs" / "long" / "ytuning" / "head.safetensors").exists()  # cache label, then train
    predicted = [json.loads(line) for line in text.splitlines() if line.startswith('{"row": 1')]
    assert predicted and set(predicted[0]["predictions"]) == {"ytuning", "probe"}
    assert "'probabilities'" in outputs[-1].splitlines()[-1]  # the Python block's Predictor
    # what does not depend on the data's size is shown as printed: parameters and layers of each head
    shown = [line for line in README.read_text().splitlines() if line.startswith("head ")]
    printed = "".join(errors).splitlines()
    assert len(shown) == 2 and all(line in printed for line in shown), (shown, printed)
