"""The README's examples, run as a newcomer would: every ```sh block that is
not marked `<!-- not run by tests/e2e/test_readme.py: why -->` runs, in
order, in one bash against a fresh embedded instance (no configuration).
curl is wrapped with --fail-with-body, so an example answering an HTTP error
fails the walk-through; the README's port is swapped for a free one."""
import os
import re
import subprocess
import uuid

from servers import COREDB_BIN, ROOT, Coredb, free_port, scratch_dir

SKIP_MARK = "<!-- not run by tests/e2e/test_readme.py"


def readme_blocks():
    text = open(os.path.join(ROOT, "README.md")).read()
    blocks = []
    for m in re.finditer(r"(?m)^```sh\n(.*?)^```", text, re.S):
        before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        blocks.append((before.startswith(SKIP_MARK), m.group(1)))
    return blocks


def test_readme_marks_only_what_cannot_run():
    blocks = readme_blocks()
    assert len(blocks) >= 6
    assert sum(1 for skipped, _ in blocks if not skipped) >= 5


def test_readme_examples_run_in_order():
    cwd = os.path.join(scratch_dir(), f"readme-{uuid.uuid4().hex[:8]}")
    os.makedirs(cwd)
    os.chmod(cwd, 0o755)
    port = free_port()
    inst = Coredb({"PORT": str(port)}, cwd=cwd, wait=False)
    try:
        inst.wait_live(120)
        script = "\n".join(body for skipped, body in readme_blocks() if not skipped)
        script = script.replace("localhost:8095", f"127.0.0.1:{port}")
        script = script.replace("./build/coredb", COREDB_BIN)
        prelude = ("set -euo pipefail\n"
                   "curl() { command curl --fail-with-body --max-time 30 \"$@\"; }\n")
        run = subprocess.run(["bash", "-c", prelude + script], cwd=cwd, capture_output=True,
                             text=True, timeout=180)
        assert run.returncode == 0, f"stdout:\n{run.stdout[-3000:]}\nstderr:\n{run.stderr[-3000:]}"
        out = run.stdout
        assert '"status":"UP"' in out                        # the health example
        assert '"access_token"' in out and '"refresh_token"' in out  # refresh answered a pair
        assert '"status":"committed"' in out                 # the transaction and the retried one
        assert '"title":"First project"' in out              # the query found the insert
        assert '"value":"created"' in out                    # the Redis read-back
        assert '"action":"table.expose"' in out and '"valid":true' in out  # the audit log
    finally:
        inst.stop_clean()
