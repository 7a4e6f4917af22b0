"""LiteLLM's proxy in its own venv (`bench/.venv-litellm`), installed by the harness with pip.

It never shares the gateway's venv: litellm pins its own httpx, openai, pydantic and friends.
The version is pinned (1.107.0 was a compromised release; see README).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_VERSION = "1.106.2"
MASTER_KEY = "sk-bench-litellm-master"


@dataclasses.dataclass
class LitellmEnv:
    venv: Path
    version: str | None
    status: str  # "ready", "installed", "skipped: ...", "failed: ..."
    install_seconds: float | None = None

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def ok(self) -> bool:
        return self.status in ("ready", "installed")


def installed_version(venv: Path) -> str | None:
    py = venv / "bin" / "python"
    if not py.exists() or not (venv / "bin" / "litellm").exists():
        return None
    code = "import importlib.metadata as m; print(m.version('litellm'))"
    try:
        res = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() or None if res.returncode == 0 else None


def ensure(venv: Path, *, version: str, allow_install: bool, log: Path, timeout: float = 900) -> LitellmEnv:
    """Use the venv if litellm is there; otherwise create it and pip-install `litellm[proxy]`."""
    have = installed_version(venv)
    if have is not None:
        return LitellmEnv(venv, have, "ready")
    if not allow_install:
        return LitellmEnv(venv, None, "skipped: not installed (quick mode does not install it)")
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with open(log, "wb") as out:
        try:
            if not (venv / "bin" / "python").exists():
                subprocess.run(
                    [sys.executable, "-m", "venv", str(venv)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    check=True,
                    timeout=300,
                )
            subprocess.run(
                [
                    str(venv / "bin" / "pip"),
                    "install",
                    "--disable-pip-version-check",
                    f"litellm[proxy]=={version}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                check=True,
                timeout=timeout,
            )
        except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            tail = log.read_text(errors="replace").splitlines()[-3:]
            return LitellmEnv(
                venv, None, f"failed: pip install litellm[proxy]=={version}: {exc}; " + " | ".join(tail)
            )
    have = installed_version(venv)
    if have is None:
        return LitellmEnv(venv, None, "failed: litellm not importable after install")
    return LitellmEnv(venv, have, "installed", round(time.monotonic() - t0, 1))


def write_config(path: Path, upstream_base_url: str, chat_model: str, embed_model: str) -> None:
    """A proxy config whose models route to the fake upstream (openai-compatible provider)."""
    lines = ["model_list:"]
    for name in (chat_model, embed_model):
        lines += [
            f"  - model_name: {name}",
            "    litellm_params:",
            f"      model: openai/{name}",
            f"      api_base: {upstream_base_url}",
            "      api_key: sk-fake-upstream-placeholder",
        ]
    lines += ["general_settings:", f"  master_key: {MASTER_KEY}", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def command(env: LitellmEnv, config: Path, port: int) -> list[str]:
    return [
        str(env.venv / "bin" / "litellm"),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]


def environment(base: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    env.update(
        LITELLM_LOCAL_MODEL_COST_MAP="True",  # no download of the cost map at start
        LITELLM_MASTER_KEY=MASTER_KEY,
        LITELLM_TELEMETRY="False",
        NO_PROXY="127.0.0.1,localhost",
    )
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "VIRTUAL_ENV", "PYTHONPATH"):
        env.pop(k, None)
    return env
