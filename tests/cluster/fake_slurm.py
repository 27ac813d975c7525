"""A fake Slurm on PATH for tests: `sbatch`, `sacct`, `squeue`, `sacctmgr`, `sshare`, `sinfo`, `scontrol`,
`scancel` are small shell scripts calling this one with the tool's name first. Every call is appended to $FAKE_SLURM_LOG as one JSON line (tool, argv);
sbatch answers a job id, status queries answer FAILED for every submitted job, so the executor gives up on them
without anything running. The account query answers $FAKE_SLURM_ACCOUNTS."""

import json
import os
import sys
from pathlib import Path

tool, argv = sys.argv[1], sys.argv[2:]
log = Path(os.environ["FAKE_SLURM_LOG"])
with log.open("a") as fh:
    fh.write(json.dumps({"tool": tool, "argv": argv}) + "\n")
calls = [json.loads(line) for line in log.read_text().splitlines()]
job_ids = [str(1000 + i) for i, c in enumerate(c for c in calls if c["tool"] == "sbatch")]

if tool == "sbatch":
    print(job_ids[-1])
elif tool == "sacct":
    for jid in job_ids:
        print(f"{jid}|FAILED|1:0")
elif tool == "squeue":
    pass
elif tool in ("sacctmgr", "sshare"):
    for account in os.environ.get("FAKE_SLURM_ACCOUNTS", "").split(","):
        print(account)
elif tool == "sinfo":
    print("gpu-test*")
elif tool == "scontrol":
    print("MinJobAge=300")
