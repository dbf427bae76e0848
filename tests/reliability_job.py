"""Kill a cache writer at chosen points, for tests/test_reliability.py.

usage: reliability_job.py OUT_JSON ROOT BACKEND SHARD_BYTES POINT [POINT ...]

For each POINT, a forked child runs tests/cache_job.py's writer into ROOT/<point> and SIGKILLs itself
at that point; the parent records how the child ended and what `verify` says of what it left, then
forks a clean child that reruns the same job (the resume). ROOT/ref is an uninterrupted reference.
Children are forked from one process that has imported everything, so each run costs no imports;
the parent itself never writes a shard (zarr starts an event-loop thread on first use, which must
not be inherited across fork).

POINT is one of
  shard:K:WHEN          cache_job's own --die-at K --die-when WHEN (before, mid, after-rename)
  manifest:N:WHEN       the N-th manifest replace of the run (1: the cache's creation, 2: the plan,
                        3..: one per committed shard, last: the labels), killed after the temporary
                        manifest is written and fsynced but before the rename (before), or right after
                        the rename, before the directory fsync (after)
  labels:WHEN           the label file's replace in set_labels: before it, or after it and before the
                        manifest lists the column
"""

import json
import os
import signal
import sys
import traceback
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)  # no OpenMP pool, so forking is safe
# A SIGKILL loses nothing the kernel already holds: page-cache writes survive the process, so fsync
# (what protects against power loss, and most of this job's time) plays no part in these faults.
os.fsync = lambda fd: None

sys.path.insert(0, str(Path(__file__).parent))
import cache_job  # noqa: E402

from ytune import UserError  # noqa: E402
from ytune.cache import store  # noqa: E402


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str) -> dict:
    """In the child: make the process kill itself at `point`; returns cache_job.run's extra arguments."""
    kind, *rest = point.split(":")
    if kind == "shard":
        return {"die_at": int(rest[0]), "die_when": rest[1]}
    target, when = (int(rest[0]), rest[1]) if kind == "manifest" else (1, rest[0])
    real_replace, seen = os.replace, [0]

    def replace(src, dst, *args, **kwargs):
        src = Path(src)
        is_manifest = src.name.startswith(".tmp-manifest.json")
        is_label = src.name.startswith(".tmp-") and src.parent.name == "labels"
        if (kind == "manifest" and is_manifest) or (kind == "labels" and is_label):
            seen[0] += 1
            if seen[0] == target and when == "before":
                die()
            real_replace(src, dst, *args, **kwargs)
            if seen[0] == target and when == "after":
                die()
            return None
        return real_replace(src, dst, *args, **kwargs)

    os.replace = replace  # ytune.cache.manifest and .writer call os.replace through the os module
    return {}


def forked_run(root: Path, backend: str, shard_bytes: int, point: str | None) -> int:
    """Run the writer in a forked child; its exit code, or -signal when a signal ended it."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            extra = arm(point) if point else {}
            cache_job.run(str(root), backend, "float16", shard_bytes=shard_bytes, **extra)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def left_behind(root: Path) -> dict:
    """What a killed run left: verify's problems (or why there is no cache), and temporaries."""
    path = root / cache_job.identity("float16").cache_id()
    try:
        problems = store.verify(path)
    except UserError as e:
        problems = [f"unreadable: {e}"]
    tmp = sorted(str(p.relative_to(path)) for p in path.rglob(".tmp-*")) if path.is_dir() else []
    return {"problems": problems, "tmp": tmp, "manifest": (path / "manifest.json").exists()}


def main() -> None:
    out, root, backend, shard_bytes, *points = sys.argv[1:]
    root, shard_bytes = Path(root), int(shard_bytes)
    results = {"ref": forked_run(root / "ref", backend, shard_bytes, None)}
    for i, point in enumerate(points):
        where = root / f"p{i:02d}"
        killed = forked_run(where, backend, shard_bytes, point)
        state = left_behind(where)
        resumed = forked_run(where, backend, shard_bytes, None)
        results[point] = {"dir": str(where), "killed": killed, "resumed": resumed, **state}
    Path(out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
