"""One fine-tune in several processes: `train.num_processes` > 1 runs `care.model.training.finetune` under
`accelerate launch` (torchrun underneath: DDP over one GPU per process with CUDA, gloo on CPU).

The caller's examples and params go to the workers through a private temporary directory (token ids and
JSON, never pickles; removed afterwards); every worker runs the same `finetune` on its share of each step,
and the main process saves the adapter and `train_stats.json` into `out_dir` as a one-process run does.
Progress shows from the main process only. An interrupted parent stops the launcher, which stops its
workers. With `train.num_processes: 1` the fine-tune runs in this process, as before.

    python -m care.model.launch DIR    # a worker (started by `accelerate launch`, not by hand)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from care.errors import CareError
from care.params import FitParams, Params
from care.model.prompts import Example

SPEC = "spec.json"
EXAMPLES = "examples.jsonl"
_FIT = set(FitParams.model_fields)  # the sections a fine-tune reads


def run_finetune(base_dir: str | Path, examples: list[Example], params: Params | FitParams, out_dir: str | Path,
                 desc: str = "", step_callback=None) -> dict:
    """`finetune` in `params.train.num_processes` processes (in this one when 1); returns its stats.
    `step_callback` (one process only) runs after every optimizer step."""
    from care.model.training import STATS_FILE, finetune

    n = params.train.num_processes
    if n == 1:
        return finetune(base_dir, examples, params, out_dir, desc=desc, step_callback=step_callback)
    if step_callback is not None:
        raise CareError("a step callback runs in one process only (train.num_processes=1)")
    import torch

    cuda = torch.cuda.is_available()
    if cuda and torch.cuda.device_count() < n:
        raise CareError(f"train.num_processes={n} but only {torch.cuda.device_count()} GPU(s) are visible")
    with tempfile.TemporaryDirectory(prefix="care-launch-") as tmp:  # mode 0700: token ids are the transcripts
        work = Path(tmp)
        spec = {"base_dir": str(base_dir), "out_dir": str(Path(out_dir).resolve()), "desc": desc,
                "params": params.model_dump(mode="json", include=_FIT)}
        (work / SPEC).write_text(json.dumps(spec), "utf-8")
        with open(work / EXAMPLES, "w", encoding="utf-8") as f:
            for e in examples:
                f.write(json.dumps({"session_id": e.session_id, "item_id": e.item_id, "input_ids": e.input_ids,
                                    "labels": e.labels}) + "\n")
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n),
               "--num_machines", "1", "--gpu_ids", "all", "--mixed_precision", "no",
               "--dynamo_backend", "no", "--main_process_port", str(_free_port()), "-m", __name__, str(work)]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        proc = subprocess.Popen(cmd, env=env)
        try:
            code = proc.wait()
        except BaseException:  # Ctrl-C / SIGTERM of the run: the launcher takes its workers down with it
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    if code != 0:
        raise CareError(f"fine-tuning in {n} processes failed (accelerate launch exited {code}); see its output above")
    stats_file = Path(out_dir) / STATS_FILE
    if not stats_file.is_file():
        raise CareError(f"fine-tuning in {n} processes wrote no {STATS_FILE} to {out_dir}")
    return json.loads(stats_file.read_text("utf-8"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(work: Path) -> None:
    from care.model.training import finetune

    spec = json.loads((work / SPEC).read_text("utf-8"))
    with open(work / EXAMPLES, encoding="utf-8") as f:
        examples = [Example(**json.loads(line)) for line in f]
    finetune(spec["base_dir"], examples, FitParams.model_validate(spec["params"]), spec["out_dir"], desc=spec["desc"])


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
