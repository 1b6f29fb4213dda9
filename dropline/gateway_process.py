"""One gateway replica in its own operating-system process, run exactly as a deployment runs
it (``dropline gateway --config file.toml``), so that tests and benchmarks can run several
replicas side by side and kill one with SIGKILL.
"""

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import aiohttp
import tomli_w

from gateway.config import GatewayConfig

READY_TIMEOUT_S = 60.0


class GatewayProcessError(RuntimeError):
    """The replica exited or never answered its health check."""


class GatewayProcess:
    """A ``dropline gateway`` child process with its config written to ``workdir``."""

    def __init__(
        self, config: GatewayConfig, workdir: Path, name: str, *, cpus: set[int] | None = None
    ) -> None:
        """``cpus``: pin the process (all its threads) to these cores, for measurements."""
        if config.http_port == 0:
            raise ValueError("a replica needs a fixed http_port to be reachable")
        self.config = config
        self.name = name
        self.config_path = workdir / f"{name}.toml"
        self.log_path = workdir / f"{name}.log"
        self.url = f"http://{config.http_host}:{config.http_port}"
        self._cpus = cpus
        self._process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        """The replica's process id (after :meth:`start`)."""
        assert self._process is not None, "replica not started"
        return self._process.pid

    async def start(self) -> None:
        """Write the config, start the process and wait until ``/v1/health`` says it is
        consuming events (subscribed at the broker)."""
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        document = self.config.model_dump(mode="json", exclude_none=True)
        self.config_path.write_text(tomli_w.dumps(document))
        with self.log_path.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "dropline",
                "gateway",
                "--config",
                str(self.config_path),
                stdout=log,
                stderr=log,
            )
        if self._cpus:
            # Pinned before the interpreter has started any thread; later ones inherit it.
            os.sched_setaffinity(self._process.pid, self._cpus)
        await self._wait_ready()

    async def _wait_ready(self) -> None:
        """Poll the health endpoint: a child process has no event to await but its port."""
        assert self._process is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT_S
        delay = 0.05
        async with aiohttp.ClientSession() as http:
            while loop.time() < deadline:
                if self._process.returncode is not None:
                    raise GatewayProcessError(self._failure("exited"))
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{self.url}/v1/health") as reply:
                        if reply.status == 200 and (await reply.json())["consuming"]:
                            return
                await asyncio.sleep(delay)
                delay = min(0.5, delay * 2)
        raise GatewayProcessError(self._failure("did not become healthy"))

    def _failure(self, what: str) -> str:
        tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
        return f"gateway replica {self.name} {what}; its log ends:\n{tail}"

    def kill(self) -> None:
        """SIGKILL: no clean-up, no goodbye to the broker (its will is published)."""
        if self._process is not None and self._process.returncode is None:
            self._process.send_signal(signal.SIGKILL)

    async def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not stop in time. Returns the exit code."""
        process = self._process
        if process is None:
            return None
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(timeout_s):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        return process.returncode
